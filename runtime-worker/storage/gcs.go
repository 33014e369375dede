package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"

	gcs "cloud.google.com/go/storage"
	"google.golang.org/api/googleapi"
	"google.golang.org/api/iterator"
	"google.golang.org/api/option"
)

// gcsStore reads Google Cloud Storage with the official client. One client per
// storage-config entry (and one for the environment's application default credentials).
type gcsStore struct {
	caFile   string
	endpoint string
	timeouts Timeouts

	mu      sync.Mutex
	clients map[string]*gcs.Client
}

func newGCSStore(caFile, endpoint string, to Timeouts) *gcsStore {
	return &gcsStore{caFile: caFile, endpoint: endpoint, timeouts: to, clients: map[string]*gcs.Client{}}
}

func (s *gcsStore) client(ctx context.Context, t target) (*gcs.Client, error) {
	cfg := t.cfg
	if t.cfgKey == "" {
		cfg = Config{Type: "gcs", EndpointURL: s.endpoint}
	}
	key := cfg.digest()
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.clients[key]; ok {
		return c, nil
	}
	pem, err := caBundle(s.caFile, cfg.Certificate)
	if err != nil {
		return nil, err
	}
	tr, err := httpTransport(pem, s.timeouts)
	if err != nil {
		return nil, err
	}
	var opts []option.ClientOption
	if cfg.EndpointURL != "" {
		opts = append(opts, option.WithEndpoint(strings.TrimSuffix(cfg.EndpointURL, "/")+"/storage/v1/"))
	}
	switch {
	case cfg.Anonymous:
		opts = append(opts, option.WithoutAuthentication(), option.WithHTTPClient(&http.Client{Transport: tr}))
	case cfg.PrivateKey != "":
		opts = append(opts, option.WithAuthCredentialsJSON(option.ServiceAccount, []byte(cfg.PrivateKey)))
	}
	// With neither, the client finds application default credentials: GOOGLE_APPLICATION_CREDENTIALS,
	// or GKE workload identity through the metadata server. STORAGE_EMULATOR_HOST points
	// it at an emulator.
	c, err := gcs.NewClient(context.WithoutCancel(ctx), opts...)
	if err != nil {
		return nil, fmt.Errorf("%w: gcs client: %v", ErrDenied, err)
	}
	s.clients[key] = c
	return c, nil
}

func (s *gcsStore) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, c := range s.clients {
		c.Close()
		delete(s.clients, k)
	}
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
			return []object{{rel: baseName(t.key), key: t.key, size: attrs.Size, md5: attrs.MD5}}, true, nil
		}
		if err := gcsError(err, t); !errors.Is(err, ErrNotFound) || errors.Is(err, gcs.ErrBucketNotExist) {
			return nil, false, err
		}
	}
	prefix := t.key
	if prefix != "" && !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
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
			continue
		}
		if err := checkKey(rel); err != nil {
			return nil, false, fmt.Errorf("%w: object %q under %s: %v", ErrBadURI, attrs.Name, t.name(), err)
		}
		objs = append(objs, object{rel: rel, key: attrs.Name, size: attrs.Size, md5: attrs.MD5})
	}
	if len(objs) == 0 {
		return nil, false, fmt.Errorf("%w: no object or prefix %s", ErrNotFound, t.name())
	}
	return objs, false, nil
}

func (s *gcsStore) open(ctx context.Context, t target, o object) (io.ReadCloser, error) {
	c, err := s.client(ctx, t)
	if err != nil {
		return nil, err
	}
	r, err := c.Bucket(t.bucket).Object(o.key).NewReader(ctx)
	if err != nil {
		return nil, gcsError(err, t)
	}
	return gcsBody{r, t}, nil
}

type gcsBody struct {
	*gcs.Reader
	t target
}

func (b gcsBody) Read(p []byte) (int, error) {
	n, err := b.Reader.Read(p)
	if err != nil && err != io.EOF {
		err = gcsError(err, b.t)
	}
	return n, err
}

func gcsError(err error, t target) error {
	var api *googleapi.Error
	switch {
	case errors.Is(err, gcs.ErrBucketNotExist):
		return fmt.Errorf("%w: bucket %q does not exist (%s)", ErrNotFound, t.bucket, t.name())
	case errors.Is(err, gcs.ErrObjectNotExist):
		return fmt.Errorf("%w: %s", ErrNotFound, t.name())
	case errors.As(err, &api):
		what := fmt.Sprintf("%s: HTTP %d: %s", t.name(), api.Code, api.Message)
		switch {
		case api.Code == http.StatusNotFound:
			return fmt.Errorf("%w: %s", ErrNotFound, what)
		case api.Code == http.StatusUnauthorized || api.Code == http.StatusForbidden:
			return fmt.Errorf("%w: %s", ErrDenied, what)
		case api.Code >= 500 || api.Code == http.StatusTooManyRequests:
			return fmt.Errorf("%w: %s", ErrUnavailable, what)
		}
		return fmt.Errorf("%w: %s", ErrBadURI, what)
	}
	return fmt.Errorf("%s: %w", t.name(), transport(err))
}
