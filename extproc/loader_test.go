package extproc

import (
	"context"
	"maps"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"

	"github.com/modelmesh/mesh/internal/residency"
)

// TestPruneClosesConnectionsOfWorkersThatLeft: the connection to a worker gone from the
// view is closed and dropped, the live worker's stays, and Prune returns when ctx ends.
func TestPruneClosesConnectionsOfWorkersThatLeft(t *testing.T) {
	l := NewGRPCLoader()
	defer l.Close()
	const live, gone = "127.0.0.1:1", "127.0.0.1:2"
	conns := map[string]*grpc.ClientConn{}
	for _, addr := range []string{live, gone} {
		c, err := l.conn(addr) // dials lazily: no worker needs to listen
		if err != nil {
			t.Fatal(err)
		}
		conns[addr] = c
	}
	view := NewView(nil)
	view.Set(residency.Snapshot{Workers: map[string]residency.Worker{"w1": {ID: "w1", MgmtAddr: live}}})

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- l.Prune(ctx, view, time.Millisecond) }()
	held := func() []string {
		l.mu.Lock()
		defer l.mu.Unlock()
		return slices.Sorted(maps.Keys(l.conns))
	}
	for deadline := time.Now().Add(10 * time.Second); len(held()) != 1; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("connections %v, want only the live worker's", held())
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Prune returned %v when its context ended", err)
	}
	if got := held(); !slices.Equal(got, []string{live}) {
		t.Fatalf("connections %v, want [%s]", got, live)
	}
	if s := conns[gone].GetState(); s != connectivity.Shutdown {
		t.Errorf("the gone worker's connection is %s, want closed", s)
	}
	if s := conns[live].GetState(); s == connectivity.Shutdown {
		t.Error("the live worker's connection was closed")
	}
}
