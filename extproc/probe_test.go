package extproc

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/modelmesh/mesh/internal/residency"
)

// slowLoader answers every Load after delay (or when ctx ends).
type slowLoader struct{ delay time.Duration }

func (l slowLoader) Load(ctx context.Context, _ residency.Worker, _ Target) error {
	select {
	case <-time.After(l.delay):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// TestLoadOnGivesUpOnAHungWorker: a long Load on a worker whose management port answers
// /healthz goes on to its end; on one whose port accepts connections and answers nothing
// (a stopped process) it is given up as ErrWorkerGone.
func TestLoadOnGivesUpOnAHungWorker(t *testing.T) {
	healthy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) }))
	defer healthy.Close()
	hung, err := net.Listen("tcp", "127.0.0.1:0") // the kernel accepts; nobody reads
	if err != nil {
		t.Fatal(err)
	}
	defer hung.Close()
	s := New(Config{ProbeAfter: 50 * time.Millisecond, ProbeTimeout: 100 * time.Millisecond}, NewView(nil), slowLoader{delay: 500 * time.Millisecond},
		nil, slog.New(slog.NewTextHandler(io.Discard, nil)), NewMetrics(prometheus.NewRegistry(), 10))
	defer s.Close()

	if err := s.loadOn(t.Context(), residency.Worker{ID: "ok", MgmtAddr: healthy.Listener.Addr().String()}, Target{}); err != nil {
		t.Fatalf("a load on a worker that answers its probes: %v", err)
	}
	// A Load that would never end: only giving up on the worker ends it.
	s.loader = slowLoader{delay: time.Hour}
	err = s.loadOn(t.Context(), residency.Worker{ID: "hung", MgmtAddr: hung.Addr().String()}, Target{})
	if !errors.Is(err, ErrWorkerGone) {
		t.Fatalf("a load on a hung worker: %v, want ErrWorkerGone", err)
	}
}
