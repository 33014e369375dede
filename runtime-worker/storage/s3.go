package storage

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// s3Store reads S3-compatible stores with minio-go. One client per storage-config entry
// (and one for the environment's settings), rebuilt when the entry changes.
type s3Store struct {
	caFile   string
	endpoint string // for s3:// URIs without an entry; "" is AWS
	timeouts Timeouts

	mu      sync.Mutex
	clients map[string]*minio.Client // by entry digest
}

func newS3Store(caFile, endpoint string, to Timeouts) *s3Store {
	return &s3Store{caFile: caFile, endpoint: endpoint, timeouts: to, clients: map[string]*minio.Client{}}
}

func (s *s3Store) client(t target) (*minio.Client, error) {
	cfg := t.cfg
	if t.cfgKey == "" {
		cfg = Config{Type: "s3", EndpointURL: s.endpoint, Region: os.Getenv("AWS_REGION")}
		if cfg.Region == "" {
			cfg.Region = os.Getenv("AWS_DEFAULT_REGION")
		}
	}
	key := cfg.digest()
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.clients[key]; ok {
		return c, nil
	}
	host, secure := "s3.amazonaws.com", true
	if cfg.EndpointURL != "" {
		u, err := url.Parse(cfg.EndpointURL)
		if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") || strings.Trim(u.Path, "/") != "" {
			return nil, fmt.Errorf("%w: endpoint_url %q: want http(s)://host[:port]", ErrBadURI, cfg.EndpointURL)
		}
		host, secure = u.Host, u.Scheme == "https"
	}
	pem, err := caBundle(s.caFile, cfg.Certificate)
	if err != nil {
		return nil, err
	}
	tr, err := httpTransport(pem, s.timeouts)
	if err != nil {
		return nil, err
	}
	var creds *credentials.Credentials
	switch {
	case cfg.Anonymous:
		creds = credentials.NewStatic("", "", "", credentials.SignatureAnonymous)
	case cfg.AccessKeyID != "":
		creds = credentials.NewStaticV4(cfg.AccessKeyID, cfg.SecretAccessKey, "")
	default:
		// The SDKs' standard chain: environment, shared credentials file, then the
		// platform's identity (EKS web identity or pod identity, ECS, EC2 instance role).
		creds = credentials.NewChainCredentials([]credentials.Provider{
			&credentials.EnvAWS{}, &credentials.FileAWSCredentials{}, &credentials.IAM{Client: &http.Client{Transport: tr}},
		})
	}
	region := cfg.Region
	if region == "" && cfg.EndpointURL != "" {
		region = "us-east-1" // S3-compatible stores take any region; this skips a location lookup
	}
	lookup := map[string]minio.BucketLookupType{"": minio.BucketLookupAuto, "auto": minio.BucketLookupAuto,
		"path": minio.BucketLookupPath, "virtual": minio.BucketLookupDNS}[cfg.BucketLookup]
	c, err := minio.New(host, &minio.Options{
		Creds: creds, Secure: secure, Region: region, BucketLookup: lookup, Transport: tr,
		MaxRetries: 1, // retries are the store's own, bounded and counted (fetch.go)
	})
	if err != nil {
		return nil, fmt.Errorf("%w: s3 client: %v", ErrBadURI, err)
	}
	s.clients[key] = c
	return c, nil
}

func (s *s3Store) list(ctx context.Context, t target) ([]object, bool, error) {
	c, err := s.client(t)
	if err != nil {
		return nil, false, err
	}
	if t.key != "" && !strings.HasSuffix(t.key, "/") {
		info, err := c.StatObject(ctx, t.bucket, t.key, minio.StatObjectOptions{})
		if err == nil {
			return []object{{rel: baseName(t.key), key: t.key, size: info.Size, sum: md5OfETag(info.ETag)}}, true, nil
		}
		if err := s3Error(err, t); !errors.Is(err, ErrNotFound) {
			return nil, false, err
		}
		// Not an object: a prefix, below.
	}
	prefix := t.prefix()
	var objs []object
	for info := range c.ListObjectsIter(ctx, t.bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if info.Err != nil {
			return nil, false, s3Error(info.Err, t)
		}
		rel := strings.TrimPrefix(info.Key, prefix)
		if rel == "" || strings.HasSuffix(rel, "/") {
			continue // a folder marker
		}
		if err := checkKey(rel); err != nil {
			return nil, false, fmt.Errorf("%w: object %q under %s: %v", ErrBadURI, info.Key, t.name(), err)
		}
		objs = append(objs, object{rel: rel, key: info.Key, size: info.Size, sum: md5OfETag(info.ETag)})
	}
	if len(objs) == 0 {
		return nil, false, fmt.Errorf("%w: no object or prefix %s", ErrNotFound, t.name())
	}
	return objs, false, nil
}

func (s *s3Store) open(ctx context.Context, t target, o object) (io.ReadCloser, checksum, error) {
	c, err := s.client(t)
	if err != nil {
		return nil, checksum{}, err
	}
	var opts minio.GetObjectOptions
	// Ask for the object's additional checksum: AWS S3 and others keep a CRC64NVME of every
	// object written since 2025, and a CRC is checked at memory speed where an MD5 is not.
	opts.Set("x-amz-checksum-mode", "ENABLED")
	obj, err := c.GetObject(ctx, t.bucket, o.key, opts)
	if err != nil {
		return nil, checksum{}, s3Error(err, t)
	}
	info, err := obj.Stat() // sends the request: its errors come here, not mid-copy
	if err != nil {
		obj.Close()
		return nil, checksum{}, s3Error(err, t)
	}
	return s3Body{obj, t}, s3Checksum(info), nil
}

// s3Checksum is the cheapest full-object checksum an S3 answer carries, or none. A
// multipart object's checksum of part checksums (type COMPOSITE) cannot be checked against
// the whole stream; one without a type is whole unless its ETag says multipart.
func s3Checksum(info minio.ObjectInfo) checksum {
	if info.ChecksumMode != "FULL_OBJECT" && (info.ChecksumMode != "" || strings.Contains(info.ETag, "-")) {
		return checksum{}
	}
	for _, c := range []struct {
		name, value string
		hash        func() hash.Hash
	}{
		{"crc64nvme", info.ChecksumCRC64NVME, minio.ChecksumCRC64NVME.Hasher},
		{"crc32c", info.ChecksumCRC32C, minio.ChecksumCRC32C.Hasher},
		{"crc32", info.ChecksumCRC32, minio.ChecksumCRC32.Hasher},
		{"sha256", info.ChecksumSHA256, sha256.New},
	} {
		if want, err := base64.StdEncoding.DecodeString(c.value); c.value != "" && err == nil {
			return checksum{name: c.name, want: want, hash: c.hash}
		}
	}
	return checksum{}
}

// s3Body classifies errors met while reading, as open does.
type s3Body struct {
	*minio.Object
	t target
}

func (b s3Body) Read(p []byte) (int, error) {
	n, err := b.Object.Read(p)
	if err != nil && err != io.EOF {
		err = s3Error(err, b.t)
	}
	return n, err
}

// s3Error turns a store's answer into the package's errors, with what was asked.
func s3Error(err error, t target) error {
	resp := minio.ToErrorResponse(err)
	what := fmt.Sprintf("%s: %s", t.name(), resp.Code)
	if resp.Message != "" {
		what += ": " + resp.Message
	}
	switch {
	case resp.Code == "NoSuchBucket":
		return fmt.Errorf("%w: bucket %q does not exist (%s)", ErrNotFound, t.bucket, what)
	case resp.Code == "NoSuchKey" || resp.Code == "NotFound" || resp.StatusCode == http.StatusNotFound:
		return fmt.Errorf("%w: %s", ErrNotFound, what)
	case resp.Code == "AccessDenied" || resp.Code == "InvalidAccessKeyId" || resp.Code == "SignatureDoesNotMatch" ||
		resp.StatusCode == http.StatusForbidden || resp.StatusCode == http.StatusUnauthorized:
		return fmt.Errorf("%w: %s", ErrDenied, what)
	case resp.StatusCode >= 500 || resp.Code == "SlowDown" || resp.StatusCode == http.StatusTooManyRequests:
		return fmt.Errorf("%w: %s", ErrUnavailable, what)
	case resp.Code != "" && resp.StatusCode >= 400:
		return fmt.Errorf("%w: %s", ErrBadURI, what)
	}
	return fmt.Errorf("%s: %w", t.name(), transport(err))
}

// baseName is the last segment of a key.
func baseName(key string) string {
	return key[strings.LastIndex(key, "/")+1:]
}
