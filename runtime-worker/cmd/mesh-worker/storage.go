package main

import (
	"errors"
	"flag"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/modelmesh/mesh/runtime-worker/storage"
)

// storageConfig is where model files come from and how the disk tier keeps them.
type storageConfig struct {
	ModelRoots      string
	CacheDir        string
	DiskCacheSize   byteSize
	Config          string
	CAFile          string
	S3Endpoint      string
	GCSEndpoint     string
	AllowHTTP       bool
	ConnectTimeout  time.Duration
	ResponseTimeout time.Duration
	IdleTimeout     time.Duration
	Retries         int
	RetryBackoff    time.Duration
	Concurrency     int
	MaxFiles        int
}

func (c *storageConfig) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.ModelRoots, "model-roots", "", "comma-separated directories file:// model URIs may name (a PVC on every worker); empty: no file:// URIs")
	fs.StringVar(&c.CacheDir, "cache-dir", "", "directory of the disk tier of fetched model files; kept across restarts (default: a temporary directory, removed at exit)")
	c.DiskCacheSize = 10 << 30
	fs.Var(&c.DiskCacheSize, "disk-cache-size", "byte budget of the disk tier, least recently used models out first (bytes or KiB/MiB/GiB)")
	fs.StringVar(&c.Config, "storage-config", "", "directory of a mounted storage-config Secret: one JSON entry per storage key (docs/storage.md)")
	fs.StringVar(&c.CAFile, "storage-ca-file", "", "PEM bundle of CAs trusted for every model store besides the system's")
	fs.StringVar(&c.S3Endpoint, "s3-endpoint", firstEnv("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"), "endpoint of s3:// URIs that name no storage key, http(s)://host:port (default: $AWS_ENDPOINT_URL_S3, $AWS_ENDPOINT_URL, else AWS)")
	fs.StringVar(&c.GCSEndpoint, "gcs-endpoint", "", "endpoint of gs:// URIs that name no storage key, http(s)://host:port (default: Google's, or $STORAGE_EMULATOR_HOST); its requests carry the application default credentials when there are any, and none otherwise (an emulator, public buckets)")
	fs.BoolVar(&c.AllowHTTP, "allow-http", false, "allow plain http:// model URIs and storage keys of type http")
	fs.DurationVar(&c.ConnectTimeout, "storage-connect-timeout", 10*time.Second, "longest TCP connect and TLS handshake with a model store")
	fs.DurationVar(&c.ResponseTimeout, "storage-response-timeout", 30*time.Second, "longest wait for a model store's response headers")
	fs.DurationVar(&c.IdleTimeout, "storage-idle-timeout", 30*time.Second, "a download that receives nothing for this long fails (and is retried)")
	fs.IntVar(&c.Retries, "storage-retries", 3, "times a store request that failed transiently (timeout, 5xx, reset) is tried again; 403, 404 and checksum failures are not")
	fs.DurationVar(&c.RetryBackoff, "storage-retry-backoff", 200*time.Millisecond, "wait before the first retry, doubled for each next one")
	fs.IntVar(&c.Concurrency, "storage-concurrency", 4, "downloads at once from one store (endpoint and bucket)")
	fs.IntVar(&c.MaxFiles, "storage-max-files", 10000, "most files one model may have (a prefix or an archive)")
}

func (c *storageConfig) Validate() error {
	var errs []error
	if c.DiskCacheSize <= 0 {
		errs = append(errs, errors.New("--disk-cache-size must be positive"))
	}
	if c.ConnectTimeout <= 0 || c.ResponseTimeout <= 0 || c.IdleTimeout <= 0 || c.RetryBackoff <= 0 {
		errs = append(errs, errors.New("--storage-connect-timeout, --storage-response-timeout, --storage-idle-timeout and --storage-retry-backoff must be positive"))
	}
	if c.Retries < 0 || c.Concurrency < 1 || c.MaxFiles < 1 {
		errs = append(errs, errors.New("--storage-retries must not be negative, --storage-concurrency and --storage-max-files positive"))
	}
	return errors.Join(errs...)
}

// open opens the store over cacheDir (the disk tier's directory).
func (c *storageConfig) open(cacheDir string, log *slog.Logger, metrics *storage.Metrics) (*storage.Store, error) {
	var roots []string
	for _, r := range strings.Split(c.ModelRoots, ",") {
		if r = strings.TrimSpace(r); r != "" {
			roots = append(roots, r)
		}
	}
	return storage.New(storage.Options{
		Roots: roots, CacheDir: filepath.Clean(cacheDir), DiskBytes: int64(c.DiskCacheSize),
		ConfigDir: c.Config, CAFile: c.CAFile, S3Endpoint: c.S3Endpoint, GCSEndpoint: c.GCSEndpoint, AllowHTTP: c.AllowHTTP,
		Timeouts:    storage.Timeouts{Connect: c.ConnectTimeout, Response: c.ResponseTimeout},
		IdleTimeout: c.IdleTimeout, Retries: c.Retries, Backoff: c.RetryBackoff, Concurrency: c.Concurrency, MaxFiles: c.MaxFiles,
		Log: log, Metrics: metrics,
	})
}

func firstEnv(names ...string) string {
	for _, n := range names {
		if v := os.Getenv(n); v != "" {
			return v
		}
	}
	return ""
}
