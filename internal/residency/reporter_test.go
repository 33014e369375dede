package residency

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/internal/redistest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// state is a worker state the test changes while the reporter runs.
type state struct {
	mu      sync.Mutex
	st      State
	changed chan struct{}
}

func (s *state) set(model string, r *Replica) {
	s.mu.Lock()
	next := State{Worker: s.st.Worker, Replicas: map[string]Replica{}}
	for k, v := range s.st.Replicas {
		next.Replicas[k] = v
	}
	if r == nil {
		delete(next.Replicas, model)
	} else {
		next.Replicas[model] = *r
	}
	s.st = next
	s.mu.Unlock()
	s.changed <- struct{}{}
}

func (s *state) snapshot() State {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st
}

func TestReporter(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1})
	defer rdb.Close()
	ctx := context.Background()
	keys := Keys{Prefix: "t"}
	sub := rdb.Subscribe(ctx, keys.Events())
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	events := sub.Channel()

	heartbeat := 100 * time.Millisecond
	w := Worker{ID: "w1", DataAddr: "127.0.0.1:1", MgmtAddr: "127.0.0.1:2", Runtime: "onnxruntime",
		Capacity: placement.Memory{Host: 1000, GPU: []int64{500, 500}}, Used: placement.Memory{Host: 10, GPU: []int64{0, 7}}, Labels: map[string]string{"zone": "a"}, StartedUnixMs: 42}
	st := &state{st: State{Worker: w, Replicas: map[string]Replica{}}, changed: make(chan struct{})}
	rep := NewReporter(rdb, keys, ReporterConfig{Heartbeat: heartbeat}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- rep.Run(runCtx, st.changed, st.snapshot) }()

	next := func() Event {
		t.Helper()
		select {
		case m := <-events:
			var e Event
			if err := json.Unmarshal([]byte(m.Payload), &e); err != nil {
				t.Fatal(err)
			}
			return e
		case <-time.After(5 * time.Second):
			t.Fatal("no event within 5s")
		}
		return Event{}
	}
	if e := next(); e.Kind != "worker" || e.State != "ready" || e.Worker != "w1" || e.Epoch != 42 {
		t.Fatalf("first event %+v, want the worker ready", e)
	}

	st.set("iris:1", &Replica{State: placement.StateLoading, Bytes: 100, SizeSource: "estimated", SinceUnixMs: 1})
	e1 := next()
	st.set("iris:1", &Replica{State: placement.StateReady, Bytes: 80, Memory: placement.Memory{Host: 30, GPU: []int64{0, 50}}, SizeSource: "measured", SinceUnixMs: 2})
	e2 := next()
	if e1.Model != "iris:1" || e1.State != "loading" || e2.State != "ready" || e2.Seq != e1.Seq+1 {
		t.Fatalf("events %+v then %+v, want loading then ready with consecutive seq", e1, e2)
	}

	wantReplicas := map[string]string{"iris:1": `{"state":"ready","bytes":80,"memory":{"host":30,"gpu":[0,50]},"size_source":"measured","since_unix_ms":2}`}
	check := func() {
		t.Helper()
		got, err := rdb.HGetAll(ctx, keys.Replicas("w1")).Result()
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(wantReplicas, got); diff != "" {
			t.Fatalf("replicas (-want +got):\n%s", diff)
		}
		h, _ := rdb.HGetAll(ctx, keys.Worker("w1")).Result()
		if diff := cmp.Diff(w, ParseWorker(h)); diff != "" {
			t.Fatalf("worker (-want +got):\n%s", diff)
		}
		for _, k := range []string{keys.Worker("w1"), keys.Replicas("w1")} {
			if ttl := rdb.PTTL(ctx, k).Val(); ttl <= 0 || ttl > 3*heartbeat {
				t.Fatalf("%s lease %v, want within (0, %v]", k, ttl, 3*heartbeat)
			}
		}
	}
	check()

	// Redis crashes and comes back empty: the full state is back within two heartbeats.
	srv.Stop()
	srv.Start()
	time.Sleep(2 * heartbeat)
	check()

	// Graceful stop removes every record of the worker.
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := rdb.Exists(ctx, keys.Worker("w1"), keys.Replicas("w1")).Val(); n != 0 {
		t.Fatalf("%d worker keys left after shutdown", n)
	}
	if rdb.ZScore(ctx, keys.Workers(), "w1").Err() != redis.Nil {
		t.Fatal("worker still in the workers set after shutdown")
	}
}

func TestLeaseExpiresWithoutHeartbeat(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()
	ctx := context.Background()
	keys := Keys{Prefix: "t"}
	rep := NewReporter(rdb, keys, ReporterConfig{Heartbeat: 50 * time.Millisecond}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	err := rep.write(ctx, State{Worker: Worker{ID: "w2"}, Replicas: map[string]Replica{"a:1": {State: placement.StateReady}}})
	if err != nil {
		t.Fatal(err)
	}
	// A worker that dies stops heartbeating: its lease and replicas vanish together.
	time.Sleep(200 * time.Millisecond)
	if n := rdb.Exists(ctx, keys.Worker("w2"), keys.Replicas("w2")).Val(); n != 0 {
		t.Fatalf("%d keys of a dead worker outlived its lease", n)
	}
}

// TestParseWorkerOfAnOlderVersion: during a rolling upgrade a worker of the previous version
// wrote its memory as totals; they read as host memory, and this version writes totals too.
func TestParseWorkerOfAnOlderVersion(t *testing.T) {
	old := ParseWorker(map[string]string{"id": "w", "capacity_bytes": "1000", "used_bytes": "250"})
	if !cmp.Equal(old.Capacity, placement.HostMemory(1000)) || !cmp.Equal(old.Used, placement.HostMemory(250)) {
		t.Fatalf("old record read as capacity %s, used %s", old.Capacity, old.Used)
	}
	// It advertised no capabilities: a Triton worker still holds one version at a time, and
	// each reads its runtime's format, so that models are placed on it as before formats.
	if old := ParseWorker(map[string]string{"id": "t", "runtime": "triton"}); !old.Caps.OneVersion || !old.Caps.Reads("triton") {
		t.Fatalf("an old Triton record reads as capabilities %+v", old.Caps)
	}
	if old := ParseWorker(map[string]string{"id": "o", "runtime": "onnxruntime"}); old.Caps.OneVersion || !old.Caps.Reads("onnx") {
		t.Fatalf("an old ONNX Runtime record reads as capabilities %+v", old.Caps)
	}
	w := Worker{ID: "w", Capacity: placement.Memory{Host: 10, GPU: []int64{100, 100}}, Used: placement.Memory{GPU: []int64{0, 40}}}
	f := w.fields(0)
	if f["capacity_bytes"] != int64(210) || f["used_bytes"] != int64(40) {
		t.Fatalf("totals written %v and %v, want 210 and 40", f["capacity_bytes"], f["used_bytes"])
	}
}
