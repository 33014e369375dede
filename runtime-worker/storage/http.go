package storage

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
)

// httpStore reads single files and archives over HTTP(S). A URL names one object: HTTP has
// no listing, so a model directory is served as an archive.
type httpStore struct {
	caFile   string
	timeouts Timeouts

	mu      sync.Mutex
	clients map[string]*http.Client // by entry digest
}

func newHTTPStore(caFile string, to Timeouts) *httpStore {
	return &httpStore{caFile: caFile, timeouts: to, clients: map[string]*http.Client{}}
}

func (s *httpStore) client(t target) (*http.Client, error) {
	key := t.cfg.digest()
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.clients[key]; ok {
		return c, nil
	}
	pem, err := caBundle(s.caFile, t.cfg.Certificate)
	if err != nil {
		return nil, err
	}
	tr, err := httpTransport(pem, s.timeouts)
	if err != nil {
		return nil, err
	}
	c := &http.Client{Transport: tr} // the caller's context and the idle timeout bound the body
	s.clients[key] = c
	return c, nil
}

// list asks for the object's headers; a server that refuses HEAD still serves the GET, its
// size then unknown until read.
func (s *httpStore) list(ctx context.Context, t target) ([]object, bool, error) {
	resp, err := s.do(ctx, t, http.MethodHead)
	if err != nil {
		return nil, false, err
	}
	resp.Body.Close()
	o := object{rel: baseName(t.url.Path), key: t.url.Path, size: -1}
	if o.rel == "" {
		o.rel = ModelFile
	}
	switch {
	case resp.StatusCode == http.StatusMethodNotAllowed || resp.StatusCode == http.StatusNotImplemented:
	case resp.StatusCode >= 300:
		return nil, false, httpError(resp, t)
	case resp.ContentLength >= 0:
		o.size = resp.ContentLength
	}
	return []object{o}, true, nil
}

func (s *httpStore) open(ctx context.Context, t target, o object) (io.ReadCloser, checksum, error) {
	resp, err := s.do(ctx, t, http.MethodGet)
	if err != nil {
		return nil, checksum{}, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, checksum{}, httpError(resp, t)
	}
	if o.size >= 0 && resp.ContentLength >= 0 && resp.ContentLength != o.size {
		resp.Body.Close()
		return nil, checksum{}, fmt.Errorf("%w: %s: %d bytes announced, %d at the first request", ErrUnavailable, t.name(), resp.ContentLength, o.size)
	}
	return resp.Body, checksum{}, nil
}

func (s *httpStore) do(ctx context.Context, t target, method string) (*http.Response, error) {
	c, err := s.client(t)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, method, t.url.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrBadURI, t.name(), err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", t.name(), transport(err))
	}
	return resp, nil
}

func httpError(resp *http.Response, t target) error {
	what := t.name() + ": HTTP " + strconv.Itoa(resp.StatusCode)
	switch {
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusGone:
		return fmt.Errorf("%w: %s", ErrNotFound, what)
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return fmt.Errorf("%w: %s", ErrDenied, what)
	case resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusRequestTimeout:
		return fmt.Errorf("%w: %s", ErrUnavailable, what)
	}
	return fmt.Errorf("%w: %s", ErrBadURI, what)
}
