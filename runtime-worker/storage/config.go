package storage

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Config is one entry of a storage-config Secret, in the format KServe and ModelMesh users
// already keep: the Secret's key names the storage, its value is this JSON. Unknown fields
// are ignored, so an existing Secret mounts unchanged.
type Config struct {
	// Type is "s3", "gcs", "https" or "http".
	Type            string `json:"type"`
	AccessKeyID     string `json:"access_key_id,omitempty"`
	SecretAccessKey string `json:"secret_access_key,omitempty"`
	// EndpointURL of an S3-compatible store, e.g. "https://minio.example:9000"; empty is AWS.
	EndpointURL string `json:"endpoint_url,omitempty"`
	Region      string `json:"region,omitempty"`
	// Bucket (KServe's name) or DefaultBucket (ModelMesh's) holds the models that name
	// this entry without a bucket of their own.
	Bucket        string `json:"bucket,omitempty"`
	DefaultBucket string `json:"default_bucket,omitempty"`
	// Certificate is a PEM bundle of the CAs that sign the store's certificate.
	Certificate string `json:"certificate,omitempty"`
	// BucketLookup is "path" (https://host/bucket/key), "virtual" (https://bucket.host/key)
	// or "auto" (the default: virtual for AWS, path elsewhere).
	BucketLookup string `json:"bucket_lookup,omitempty"`
	// PrivateKey is a GCS service-account key (its JSON); empty uses the environment's
	// application default credentials (workload identity).
	PrivateKey string `json:"private_key,omitempty"`
	// Anonymous reads public buckets without signing.
	Anonymous bool `json:"anonymous,omitempty"`
}

// LogValue shows what a Config points at and never its secrets.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(slog.String("type", c.Type), slog.String("endpoint", c.EndpointURL),
		slog.String("bucket", c.bucket()), slog.String("region", c.Region),
		slog.Bool("static_credentials", c.AccessKeyID != "" || c.PrivateKey != ""))
}

// String is LogValue's text: a Config printed with %v shows no secret either.
func (c Config) String() string { return c.LogValue().String() }

func (c Config) bucket() string {
	if c.Bucket != "" {
		return c.Bucket
	}
	return c.DefaultBucket
}

// digest identifies the entry's whole content, secrets included, for client reuse: a
// rotated secret gets a new client.
func (c Config) digest() string {
	b, _ := json.Marshal(c) // a struct of strings always marshals
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

func (c Config) validate() error {
	switch c.Type {
	case "s3":
		if (c.AccessKeyID == "") != (c.SecretAccessKey == "") {
			return errors.New("access_key_id and secret_access_key go together")
		}
		switch c.BucketLookup {
		case "", "auto", "path", "virtual":
		default:
			return fmt.Errorf("bucket_lookup %q: want auto, path or virtual", c.BucketLookup)
		}
	case "gcs":
		if c.PrivateKey != "" && !json.Valid([]byte(c.PrivateKey)) {
			return errors.New("private_key is not a service-account JSON key")
		}
	case "https", "http":
	case "":
		return errors.New("no type")
	default:
		return fmt.Errorf("type %q not supported (s3, gcs, https, http)", c.Type)
	}
	if c.Certificate != "" && !strings.Contains(c.Certificate, "-----BEGIN CERTIFICATE-----") {
		return errors.New("certificate is not a PEM bundle")
	}
	return nil
}

// Configs are the entries of a storage-config Secret by key. An entry that did not parse is
// kept as its error, reported to the loads that name it and not to the others.
type Configs struct {
	entries map[string]Config
	broken  map[string]error
}

// ParseConfigs reads one entry's JSON per key.
func ParseConfigs(raw map[string][]byte) Configs {
	c := Configs{entries: map[string]Config{}, broken: map[string]error{}}
	for key, data := range raw {
		var e Config
		err := json.Unmarshal(data, &e)
		if err == nil {
			err = e.validate()
		}
		if err != nil {
			// The JSON decoder's messages quote no input, so no secret reaches the error.
			c.broken[key] = fmt.Errorf("storage-config entry %q: %v", key, err)
			continue
		}
		c.entries[key] = e
	}
	return c
}

// ReadConfigs reads a mounted storage-config Secret: one file per key in dir. Kubernetes'
// own files (dot-prefixed: ..data and the timestamped directory) are skipped. An empty dir
// string is no configuration.
func ReadConfigs(dir string) (Configs, error) {
	if dir == "" {
		return ParseConfigs(nil), nil
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return Configs{}, fmt.Errorf("storage config: %w", err)
	}
	raw := map[string][]byte{}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") || e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return Configs{}, fmt.Errorf("storage config: %w", err)
		}
		raw[e.Name()] = b
	}
	return ParseConfigs(raw), nil
}

// Get returns the entry named key.
func (c Configs) Get(key string) (Config, error) {
	if err, ok := c.broken[key]; ok {
		return Config{}, fmt.Errorf("%w: %v", ErrBadURI, err)
	}
	e, ok := c.entries[key]
	if !ok {
		return Config{}, fmt.Errorf("%w: storage key %q is not in the storage config (keys: %s)", ErrBadURI, key, strings.Join(c.Keys(), ", "))
	}
	return e, nil
}

// Keys lists the entries that parsed, sorted.
func (c Configs) Keys() []string {
	keys := make([]string, 0, len(c.entries))
	for k := range c.entries {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Broken lists the entries that did not parse, with their reasons.
func (c Configs) Broken() []error {
	var errs []error
	for _, err := range c.broken {
		errs = append(errs, err)
	}
	return errs
}
