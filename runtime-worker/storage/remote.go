package storage

import (
	"context"
	"crypto/md5"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

// object is one file of a model in a store.
type object struct {
	// rel is the file's path under the model's directory; for a target naming one object,
	// its base name.
	rel string
	// key is the store's name for it (object key, file path or URL path).
	key  string
	size int64 // -1: unknown until read
	// sum is the store's digest of the content as listed (an S3 ETag of a single-part
	// upload, GCS's MD5); none when it keeps none. open may find a cheaper one.
	sum checksum
	// stamp changes when the object is replaced: a file's modification time. Stores whose
	// objects are immutable per model version leave it empty (see docs/storage.md).
	stamp string
}

// remote reads one kind of store. Implementations are safe for concurrent use, and every
// call is bounded by ctx.
type remote interface {
	// list returns the objects t names: one (single) when t names an object, every object
	// under the prefix otherwise. No objects is ErrNotFound.
	list(ctx context.Context, t target) (objs []object, single bool, err error)
	// open streams one object; the caller closes it. sum is a digest of the whole object
	// the store gave with it, cheaper to check than the listed one (S3's CRC64NVME), or none.
	open(ctx context.Context, t target, o object) (rc io.ReadCloser, sum checksum, err error)
}

// checksum is a digest a store keeps of an object's whole content. The zero value is none.
type checksum struct {
	name string // "md5", "crc64nvme", "crc32c", "crc32", "sha256": for messages
	want []byte
	hash func() hash.Hash
}

func (c checksum) none() bool { return c.hash == nil }

// md5OfETag reads an ETag that is a plain MD5 of the content (a single-part S3 upload);
// multipart ETags ("...-N") and others carry none.
func md5OfETag(etag string) checksum {
	etag = strings.Trim(etag, `"`)
	if len(etag) != 32 {
		return checksum{}
	}
	b, err := hex.DecodeString(etag)
	if err != nil {
		return checksum{}
	}
	return checksum{name: "md5", want: b, hash: md5.New}
}

// Timeouts bound how long a store may take to answer.
type Timeouts struct {
	// Connect bounds the TCP connection and the TLS handshake.
	Connect time.Duration
	// Response bounds the wait for a response's headers.
	Response time.Duration
}

// httpTransport is the transport of every store client: the system's CAs plus extraPEM,
// and the timeouts.
func httpTransport(extraPEM []byte, to Timeouts) (*http.Transport, error) {
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if len(extraPEM) > 0 && !pool.AppendCertsFromPEM(extraPEM) {
		return nil, fmt.Errorf("%w: the CA bundle holds no PEM certificate", ErrBadURI)
	}
	dialer := &net.Dialer{Timeout: to.Connect, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dialer.DialContext,
		TLSClientConfig:       &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:   to.Connect,
		ResponseHeaderTimeout: to.Response,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		// Model files are compressed already or are archives; keep the store's bytes as sent.
		DisableCompression: true,
		ReadBufferSize:     256 << 10,
		WriteBufferSize:    64 << 10,
	}, nil
}

// caBundle is the PEM of the global CA file plus an entry's own certificate.
func caBundle(file string, entry string) ([]byte, error) {
	var pem []byte
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("storage CA file: %w", err)
		}
		pem = append(pem, b...)
		pem = append(pem, '\n')
	}
	return append(pem, entry...), nil
}
