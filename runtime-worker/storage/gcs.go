package storage

import (
	"compress/gzip"
	"context"
	"crypto/md5"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"

	"cloud.google.com/go/auth"
	gcs "cloud.google.com/go/storage"
	"golang.org/x/oauth2"
	"google.golang.org/api/googleapi"
	"google.golang.org/api/iterator"
	"google.golang.org/api/option"
	htransport "google.golang.org/api/transport/http"
)

// gcsStore reads Google Cloud Storage with the official client. One client per
// storage-config entry (and one for the environment's application default credentials).
type gcsStore struct {
	caFile   string
	endpoint string // for gs:// URIs without an entry (--gcs-endpoint); "" is Google's
	timeouts Timeouts

	mu      sync.Mutex
	clients map[string]*gcs.Client // by entry digest
}

func newGCSStore(caFile, endpoint string, to Timeouts) *gcsStore {
	return &gcsStore{caFile: caFile, endpoint: endpoint, timeouts: to, clients: map[string]*gcs.Client{}}
}

func (s *gcsStore) client(ctx context.Context, t target) (*gcs.Client, error) {
	cfg, fromFlags := t.cfg, t.cfgKey == ""
	if fromFlags {
		cfg = Config{Type: "gcs", EndpointURL: s.endpoint}
	}
	key := cfg.digest()
	s.mu.Lock()
	c, ok := s.clients[key]
	s.mu.Unlock()
	if ok {
		return c, nil
	}
	// Built outside the lock: finding credentials may probe the metadata server, which
	// must not hold up the loads of other entries.
	c, err := s.newClient(ctx, cfg, fromFlags)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.clients[key]; ok { // another load built one meanwhile
		c.Close()
		return old, nil
	}
	s.clients[key] = c
	return c, nil
}

// newClient builds a client whose every request, authenticated or not, goes through the
// store transport: the entry's and --storage-ca-file's CAs and the timeouts apply.
func (s *gcsStore) newClient(ctx context.Context, cfg Config, fromFlags bool) (*gcs.Client, error) {
	endpoint, err := gcsEndpoint(cfg.EndpointURL)
	if err != nil {
		return nil, err
	}
	pem, err := caBundle(s.caFile, cfg.Certificate)
	if err != nil {
		return nil, err
	}
	tr, err := httpTransport(pem, s.timeouts)
	if err != nil {
		return nil, err
	}
	ctx = context.WithoutCancel(ctx) // the client outlives this load
	var opts []option.ClientOption
	if endpoint != "" {
		opts = append(opts, option.WithEndpoint(endpoint))
	}
	// The client library reads STORAGE_EMULATOR_HOST for the endpoint when none is given,
	// and an emulator takes no credentials.
	emulator := endpoint == "" && os.Getenv("STORAGE_EMULATOR_HOST") != ""
	scope := option.WithScopes(gcs.ScopeReadOnly)
	var rt http.RoundTripper = tr
	switch {
	case cfg.Anonymous || emulator:
		opts = append(opts, option.WithoutAuthentication())
	case cfg.PrivateKey != "":
		rt, err = htransport.NewTransport(ctx, tr, scope, option.WithAuthCredentialsJSON(option.ServiceAccount, []byte(cfg.PrivateKey)))
		if err != nil {
			return nil, fmt.Errorf("%w: gcs private_key: %v", ErrDenied, err)
		}
	default:
		// Application default credentials: GOOGLE_APPLICATION_CREDENTIALS, gcloud's file, or
		// GKE workload identity through the metadata server.
		rt, err = htransport.NewTransport(ctx, tr, scope)
		if err != nil && fromFlags && endpoint != "" {
			// --gcs-endpoint with no credentials in the environment: an emulator or a
			// store of public buckets; requests go unsigned.
			rt, err = tr, nil
			opts = append(opts, option.WithoutAuthentication())
		}
		if err != nil {
			return nil, fmt.Errorf("%w: gcs credentials: %v", ErrDenied, err)
		}
	}
	opts = append(opts, option.WithHTTPClient(&http.Client{Transport: rt}))
	c, err := gcs.NewClient(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("%w: gcs client: %v", ErrBadURI, err)
	}
	// Retries are the store's own, bounded and counted (Store.retry): the library's would
	// retry a refused connection or a 503 until the download's context ends, which is never.
	c.SetRetry(gcs.WithPolicy(gcs.RetryNever))
	return c, nil
}

// gcsEndpoint is the JSON API base of an endpoint_url or --gcs-endpoint: http(s)://host[:port]
// gets /storage/v1/ appended unless its path ends so already. Downloads go to the same host
// (the XML API: /bucket/object).
func gcsEndpoint(raw string) (string, error) {
	if raw == "" {
		return "", nil
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return "", fmt.Errorf("%w: gcs endpoint %q: want http(s)://host[:port]", ErrBadURI, raw)
	}
	p := strings.TrimSuffix(u.Path, "/")
	if !strings.HasSuffix(p, "/storage/v1") {
		p += "/storage/v1"
	}
	u.Path = p + "/"
	return u.String(), nil
}

func (s *gcsStore) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, c := range s.clients {
		c.Close()
		delete(s.clients, k)
	}
}

// gcsObject is one object of a listing. An object stored with Content-Encoding gzip (gsutil
// cp -Z) is the file decompressed, as GCS serves it to every client that does not ask for
// gzip: its size is known only once read, and the MD5 is the compressed bytes'.
func gcsObject(rel string, attrs *gcs.ObjectAttrs) object {
	if attrs.ContentEncoding == "gzip" {
		return object{rel: rel, key: attrs.Name, size: -1}
	}
	return object{rel: rel, key: attrs.Name, size: attrs.Size, sum: gcsMD5(attrs.MD5)}
}

// gcsMD5 is the MD5 GCS keeps of an object (none for composite objects).
func gcsMD5(sum []byte) checksum {
	if len(sum) == 0 {
		return checksum{}
	}
	return checksum{name: "md5", want: sum, hash: md5.New}
}

func (s *gcsStore) list(ctx context.Context, t target) ([]object, bool, error) {
	c, err := s.client(ctx, t)
	if err != nil {
		return nil, false, err
	}
	b := c.Bucket(t.bucket)
	if t.key != "" && !strings.HasSuffix(t.key, "/") {
		attrs, err := b.Object(t.key).Attrs(ctx)
		if err == nil {
			return []object{gcsObject(baseName(t.key), attrs)}, true, nil
		}
		if err := gcsError(err, t); !errors.Is(err, ErrNotFound) {
			return nil, false, err
		}
		// Not an object: a prefix, below. A missing bucket fails the listing.
	}
	prefix := t.prefix()
	var objs []object
	it := b.Objects(ctx, &gcs.Query{Prefix: prefix})
	for {
		attrs, err := it.Next()
		if errors.Is(err, iterator.Done) {
			break
		}
		if err != nil {
			return nil, false, gcsError(err, t)
		}
		rel := strings.TrimPrefix(attrs.Name, prefix)
		if rel == "" || strings.HasSuffix(rel, "/") {
			continue // a folder placeholder
		}
		if err := checkKey(rel); err != nil {
			return nil, false, fmt.Errorf("%w: object %q under %s: %v", ErrBadURI, attrs.Name, t.name(), err)
		}
		objs = append(objs, gcsObject(rel, attrs))
	}
	if len(objs) == 0 {
		return nil, false, fmt.Errorf("%w: no object or prefix %s", ErrNotFound, t.name())
	}
	return objs, false, nil
}

func (s *gcsStore) open(ctx context.Context, t target, o object) (io.ReadCloser, checksum, error) {
	c, err := s.client(ctx, t)
	if err != nil {
		return nil, checksum{}, err
	}
	// The request accepts no compression, so a gzip-encoded object comes decompressed by
	// the store (its CRC32C, of the compressed bytes, cannot be checked), unless the store
	// must not transform it (Cache-Control: no-transform): then its bytes come as stored,
	// checked by CRC32C, and are decompressed here, checked by gzip's CRC.
	r, err := c.Bucket(t.bucket).Object(o.key).NewReader(ctx)
	if err != nil {
		return nil, checksum{}, gcsError(err, t)
	}
	body := &gcsBody{src: r, t: t}
	if r.Attrs.ContentEncoding == "gzip" {
		zr, err := gzip.NewReader(gcsSource{body})
		if err != nil {
			r.Close()
			if body.srcErr != nil {
				return nil, checksum{}, body.srcErr
			}
			return nil, checksum{}, fmt.Errorf("%w: %s: stored with gzip content encoding but not gzip: %v", ErrChecksum, t.name(), err)
		}
		body.zr = zr
	}
	return body, checksum{}, nil
}

// gcsBody is an object's bytes, decompressed when it is stored gzip-encoded, with the
// errors met while reading classified as open's.
type gcsBody struct {
	src    *gcs.Reader
	zr     *gzip.Reader // nil: the stored bytes as they are
	t      target
	srcErr error // the last failure reading src, classified
}

func (b *gcsBody) Read(p []byte) (int, error) {
	if b.zr == nil {
		return b.readSource(p)
	}
	n, err := b.zr.Read(p)
	switch {
	case err == nil || err == io.EOF:
	case b.srcErr != nil:
		err = b.srcErr // the store failed, not the data: retried if transient
	default:
		// The stored bytes arrived whole (their CRC32C checked) yet do not decompress.
		err = fmt.Errorf("%w: %s: gzip content encoding: %v", ErrChecksum, b.t.name(), err)
	}
	return n, err
}

func (b *gcsBody) readSource(p []byte) (int, error) {
	n, err := b.src.Read(p)
	if err != nil && err != io.EOF {
		err = gcsError(err, b.t)
		b.srcErr = err
	}
	return n, err
}

func (b *gcsBody) Close() error { return b.src.Close() }

// gcsSource feeds a gcsBody's decompressor from the store.
type gcsSource struct{ b *gcsBody }

func (s gcsSource) Read(p []byte) (int, error) { return s.b.readSource(p) }

func gcsError(err error, t target) error {
	var api *googleapi.Error
	switch {
	case errors.Is(err, ErrChecksum) || errors.Is(err, ErrNotFound) || errors.Is(err, ErrDenied) ||
		errors.Is(err, ErrUnavailable) || errors.Is(err, ErrTLS) || errors.Is(err, ErrBadURI):
		return err // classified already
	case errors.Is(err, gcs.ErrBucketNotExist):
		return fmt.Errorf("%w: bucket %q does not exist (%s)", ErrNotFound, t.bucket, t.name())
	case errors.Is(err, gcs.ErrObjectNotExist):
		return fmt.Errorf("%w: %s", ErrNotFound, t.name())
	case strings.Contains(err.Error(), "storage: checksum mismatch"):
		// The library's CRC32C of the bytes read differs from the store's (its error
		// value is unexported).
		return fmt.Errorf("%w: %s: %v", ErrChecksum, t.name(), err)
	case tokenStatus(err) != 0:
		// The token endpoint refused the credentials (a revoked or malformed service-account
		// key, workload identity not bound), or failed.
		code := tokenStatus(err)
		what := fmt.Sprintf("%s: the token endpoint answered HTTP %d", t.name(), code)
		if code >= 500 || code == http.StatusTooManyRequests || code == http.StatusRequestTimeout {
			return fmt.Errorf("%w: %s", ErrUnavailable, what)
		}
		return fmt.Errorf("%w: %s", ErrDenied, what)
	case errors.As(err, &api):
		msg := api.Message
		if msg == "" { // the XML API's errors carry their text in the body only
			msg = http.StatusText(api.Code)
		}
		what := fmt.Sprintf("%s: HTTP %d: %s", t.name(), api.Code, msg)
		switch {
		case api.Code == http.StatusNotFound:
			return fmt.Errorf("%w: %s", ErrNotFound, what)
		case api.Code == http.StatusUnauthorized || api.Code == http.StatusForbidden:
			return fmt.Errorf("%w: %s", ErrDenied, what)
		case api.Code >= 500 || api.Code == http.StatusTooManyRequests || api.Code == http.StatusRequestTimeout:
			return fmt.Errorf("%w: %s", ErrUnavailable, what)
		}
		return fmt.Errorf("%w: %s", ErrBadURI, what)
	}
	return fmt.Errorf("%s: %w", t.name(), transport(err))
}

// tokenStatus is the HTTP status of a failed OAuth token request in err: from the service
// account key's flow (cloud.google.com/go/auth) or application default credentials'
// (golang.org/x/oauth2); 0 when err is none.
func tokenStatus(err error) int {
	var ae *auth.Error
	if errors.As(err, &ae) && ae.Response != nil {
		return ae.Response.StatusCode
	}
	var re *oauth2.RetrieveError
	if errors.As(err, &re) && re.Response != nil {
		return re.Response.StatusCode
	}
	return 0
}
