package residency

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/redis/go-redis/v9"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/internal/redistest"
	"github.com/modelmesh/mesh/internal/registry"
)

func TestReaderSeesWhatReportersWrite(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()
	ctx := context.Background()
	keys := Keys{Prefix: "r"}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	rep := NewReporter(rdb, keys, ReporterConfig{Heartbeat: time.Minute}, log)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(rep.write(ctx, State{Worker: Worker{ID: "w1", DataAddr: "127.0.0.1:1", MgmtAddr: "127.0.0.1:11", Runtime: "triton",
		Caps: placement.Capabilities{OneVersion: true, Formats: []string{"onnx"}}, Capacity: placement.HostMemory(100)},
		Replicas: map[string]Replica{"iris:1": {State: placement.StateReady, Bytes: 10}, "digits:1": {State: placement.StateLoading}},
		Measured: map[string]placement.Footprint{"iris:1": {Host: 10, GPU: 30}}}))
	// A plain byte count, as written before memory had dimensions, is host memory.
	must(rdb.HSet(ctx, keys.Sizes(), "digits:1", "25").Err())
	must(rep.write(ctx, State{Worker: Worker{ID: "w2", DataAddr: "127.0.0.1:2"}, Replicas: map[string]Replica{"iris:1": {State: placement.StateReady}}}))
	// A worker whose lease ended is in the set with a past score: it must not be read.
	must(rdb.ZAdd(ctx, keys.Workers(), redis.Z{Score: 1, Member: "dead"}).Err())
	reg, err := registry.Parse([]byte("models:\n  - name: iris\n    versions: [{version: \"1\", storageUri: \"file:///m\"}]\n"))
	must(err)
	must(PublishRegistry(ctx, rdb, keys, reg))

	r := NewReader(rdb, keys, log)
	snap, err := r.Read(ctx)
	must(err)
	iris := placement.ModelVersion{Name: "iris", Version: "1"}
	if len(snap.Workers) != 2 || snap.Workers["w2"].DataAddr != "127.0.0.1:2" {
		t.Fatalf("workers %v", snap.Workers)
	}
	if got := snap.Ready(iris); len(got) != 2 || got[0] != "w1" || got[1] != "w2" {
		t.Fatalf("iris ready on %v, want w1 and w2", got)
	}
	if got := snap.Ready(placement.ModelVersion{Name: "digits", Version: "1"}); len(got) != 0 {
		t.Fatalf("loading digits counted ready on %v", got)
	}
	// Placement sees the workers as nodes, with their capabilities and typed replica states.
	wantNodes := []placement.Node{
		{ID: "w1", Runtime: "triton", Caps: placement.Capabilities{OneVersion: true, Formats: []string{"onnx"}}, Capacity: placement.HostMemory(100),
			Replicas: map[placement.ModelVersion]placement.State{iris: placement.StateReady, {Name: "digits", Version: "1"}: placement.StateLoading},
			Serves:   true, Loads: true},
		{ID: "w2", Replicas: map[placement.ModelVersion]placement.State{iris: placement.StateReady}, Serves: true},
	}
	if diff := cmp.Diff(wantNodes, snap.Nodes(), cmpopts.EquateEmpty()); diff != "" {
		t.Fatalf("nodes (-want +got):\n%s", diff)
	}
	if want := (placement.Footprint{Host: 10, GPU: 30}); snap.Sizes[iris] != want || snap.Sizes[placement.ModelVersion{Name: "digits", Version: "1"}] != (placement.Footprint{Host: 25}) || snap.Registry == nil || snap.Registry.Digest() != reg.Digest() {
		t.Fatalf("sizes %v, registry %v", snap.Sizes, snap.Registry)
	}

	// Watch delivers a snapshot at start and after a change.
	snaps, stop := watch(t, r, WatchConfig{Batch: 10 * time.Millisecond, Resync: time.Minute})
	must(rep.write(ctx, State{Worker: Worker{ID: "w3"}, Replicas: map[string]Replica{"iris:1": {State: placement.StateReady}}}))
	announceUntil(t, rep, snaps, func(s Snapshot) bool { return len(s.Ready(iris)) == 3 })
	stop()
}

// TestWatchReadsALoneChangeAtOnce: an event after a quiet batch is read without waiting for
// the batch to pass (an hour here).
func TestWatchReadsALoneChangeAtOnce(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()
	keys := Keys{Prefix: "q"}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	rep := NewReporter(rdb, keys, ReporterConfig{Heartbeat: time.Minute}, log)
	snaps, stop := watch(t, NewReader(rdb, keys, log), WatchConfig{Batch: time.Hour, Resync: time.Hour})
	defer stop()
	if err := rep.write(context.Background(), State{Worker: Worker{ID: "w1"}, Replicas: map[string]Replica{"iris:1": {State: placement.StateReady}}}); err != nil {
		t.Fatal(err)
	}
	announceUntil(t, rep, snaps, func(s Snapshot) bool { return len(s.Ready(placement.ModelVersion{Name: "iris", Version: "1"})) == 1 })
}

// watch runs r.Watch until stop, which also checks that it returned nil, and returns its
// snapshots after the first (taken at start).
func watch(t *testing.T, r *Reader, cfg WatchConfig) (<-chan Snapshot, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	snaps := make(chan Snapshot, 100)
	done := make(chan error, 1)
	go func() { done <- r.Watch(ctx, cfg, func(s Snapshot) { snaps <- s }) }()
	select {
	case <-snaps:
	case <-time.After(5 * time.Second):
		t.Fatal("no snapshot at start")
	}
	return snaps, func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("watch: %v", err)
		}
	}
}

// announceUntil publishes a replica event, again every 100 ms (the watch's subscription may
// not be in place yet), until a snapshot satisfies ok; it fails after 5 s.
func announceUntil(t *testing.T, rep *Reporter, snaps <-chan Snapshot, ok func(Snapshot) bool) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		rep.publish(context.Background(), Worker{ID: "w3"}, Event{Kind: "replica", Model: "iris:1", State: "ready"})
		select {
		case s := <-snaps:
			if ok(s) {
				return
			}
		case <-tick.C:
		case <-deadline:
			t.Fatal("no snapshot showing the change")
		}
	}
}

// TestPublishedRegistry: none before a registry is published, the published one after, and
// an error for a value that is not a registry.
func TestPublishedRegistry(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()
	ctx := context.Background()
	keys := Keys{Prefix: "p"}
	if got, err := PublishedRegistry(ctx, rdb, keys); got != nil || err != nil {
		t.Fatalf("before publication: %v, %v; want nil, nil", got, err)
	}
	reg, err := registry.Parse([]byte("models:\n  - name: iris\n    versions: [{version: \"1\", storageUri: \"file:///m\"}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := PublishRegistry(ctx, rdb, keys, reg); err != nil {
		t.Fatal(err)
	}
	got, err := PublishedRegistry(ctx, rdb, keys)
	if err != nil || got == nil || got.Digest() != reg.Digest() {
		t.Fatalf("after publication: %v, %v; want digest %s", got, err, reg.Digest())
	}
	if err := rdb.Set(ctx, keys.Registry(), "not json", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if got, err := PublishedRegistry(ctx, rdb, keys); got != nil || err == nil {
		t.Fatalf("a value that is not a registry: %v, %v; want an error", got, err)
	}
}

// TestReaderDecodesTheRegistryOnceUntilItChanges: snapshots read while the published
// registry stays the same share one decoded registry; a new publication is decoded anew.
func TestReaderDecodesTheRegistryOnceUntilItChanges(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()
	ctx := context.Background()
	keys := Keys{Prefix: "p"}
	publish := func(yaml string) {
		t.Helper()
		reg, err := registry.Parse([]byte(yaml))
		if err != nil {
			t.Fatal(err)
		}
		if err := PublishRegistry(ctx, rdb, keys, reg); err != nil {
			t.Fatal(err)
		}
	}
	r := NewReader(rdb, keys, slog.New(slog.NewTextHandler(io.Discard, nil)))
	read := func() *registry.Registry {
		t.Helper()
		snap, err := r.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return snap.Registry
	}
	publish("models:\n  - name: iris\n    versions: [{version: \"1\", storageUri: \"file:///m\"}]\n")
	first, second := read(), read()
	if first == nil || first != second {
		t.Fatalf("two reads of one registry: %p and %p, want one decoded registry", first, second)
	}
	publish("models:\n  - name: digits\n    versions: [{version: \"1\", storageUri: \"file:///m\"}]\n")
	if third := read(); third == first || third.Models[0].Name != "digits" {
		t.Fatalf("after a new publication: %+v, want the new registry", third)
	}
}
