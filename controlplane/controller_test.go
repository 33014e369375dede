package controlplane

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"

	"github.com/modelmesh/mesh/controlplane/translate"
	"github.com/modelmesh/mesh/controlplane/xds"
	"github.com/modelmesh/mesh/internal/redistest"
	"github.com/modelmesh/mesh/internal/registry"
	"github.com/modelmesh/mesh/internal/residency"
)

// fakeTraffic replaces iris's traffic rules with the last rules sent on changes.
type fakeTraffic struct {
	changes chan []registry.Rule
	mu      sync.Mutex
	rules   []registry.Rule
}

func (f *fakeTraffic) Run(ctx context.Context, changed func()) error {
	for {
		select {
		case r := <-f.changes:
			f.mu.Lock()
			f.rules = r
			f.mu.Unlock()
			changed()
		case <-ctx.Done():
			return nil
		}
	}
}

func (f *fakeTraffic) Apply(reg *registry.Registry) *registry.Registry {
	f.mu.Lock()
	defer f.mu.Unlock()
	out, err := reg.WithTraffic(map[string][]registry.Rule{"iris": f.rules})
	if err != nil {
		panic(err) // the test sends valid rules only
	}
	return out
}

// testTranslate is a translation configuration for tests that do not look at it.
func testTranslate() translate.Config {
	return translate.Config{ListenerAddress: "127.0.0.1", ListenerPort: 8080, ExtProcAddress: "127.0.0.1:9002",
		WasmPath: "/modelid.wasm", WasmMaxModels: 10, RouteTimeout: time.Second,
		ExtProcMessageTimeout: time.Second, MaxMessageTimeout: 2 * time.Second}
}

// redisAndRegistry starts a Redis for the test and writes irisTwo as the registry file.
func redisAndRegistry(t *testing.T) (*redis.Client, residency.Keys, string) {
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { rdb.Close() })
	path := filepath.Join(t.TempDir(), "registry.yaml")
	if err := os.WriteFile(path, []byte(irisTwo), 0o644); err != nil {
		t.Fatal(err)
	}
	return rdb, residency.Keys{Prefix: "test"}, path
}

// runController runs c until the returned function is called, which cancels ctx and checks
// that Run returned nil.
func runController(t *testing.T, ctx context.Context, cancel context.CancelFunc, c *Controller) func() {
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	return func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
}

const irisTwo = "models:\n  - name: iris\n    defaultVersion: \"1\"\n" +
	"    versions: [{version: \"1\", storageUri: \"file:///m/1\"}, {version: \"2\", storageUri: \"file:///m/2\"}]\n"

// TestControllerPublishesTheRegistryInForce: the registry published to Redis, which ext_proc
// routes by, carries the traffic rules of the Traffic source, from the first publication on,
// and follows changes of both the rules and the registry file.
func TestControllerPublishesTheRegistryInForce(t *testing.T) {
	rdb, keys, path := redisAndRegistry(t)
	file, err := registry.Parse([]byte(irisTwo))
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	sub := rdb.Subscribe(ctx, keys.Events())
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil { // the subscription is confirmed
		t.Fatal(err)
	}
	published := make(chan string, 16) // digests of the published registries, in order
	go func() {
		for msg := range sub.Channel() {
			var e residency.Event
			if json.Unmarshal([]byte(msg.Payload), &e) == nil && e.Kind == "registry" {
				select {
				case published <- e.State:
				case <-ctx.Done():
					return
				}
			}
		}
	}()

	traffic := &fakeTraffic{changes: make(chan []registry.Rule)}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	c := New(Config{
		ID: "cp-test", RegistryPath: path, Traffic: traffic,
		Translate: testTranslate(),
		Watch:     residency.WatchConfig{Batch: 10 * time.Millisecond, Resync: 100 * time.Millisecond},
	}, rdb, keys, xds.New(xds.Config{AckTimeout: time.Second}, log, nil), log, nil)
	defer runController(t, ctx, cancel, c)()

	await := func(what string, want *registry.Registry) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			select {
			case d := <-published:
				if d == want.Digest() {
					return
				}
			case <-deadline:
				t.Fatalf("never published: %s", what)
			}
		}
	}
	canary := []registry.Rule{{Source: "test", Split: []registry.Weighted{{Version: "1", Weight: 90}, {Version: "2", Weight: 10}}}}
	time.Sleep(300 * time.Millisecond) // three resyncs
	if c.Ready() {
		t.Fatal("ready before the traffic rules were known: a gateway connecting now would get no configuration")
	}
	traffic.changes <- canary
	withCanary, err := file.WithTraffic(map[string][]registry.Rule{"iris": canary})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-published:
		if d != withCanary.Digest() {
			t.Fatalf("first registry published has digest %s, want the one with the canary rules %s (file's: %s)", d, withCanary.Digest(), file.Digest())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("nothing published")
	}
	got, err := rdb.Get(ctx, keys.Registry()).Bytes()
	if err != nil {
		t.Fatal(err)
	}
	reg, err := registry.Decode(got)
	if err != nil {
		t.Fatal(err)
	}
	if iris, _ := reg.Model("iris"); len(iris.Traffic) != 1 || iris.Traffic[0].Split[1].Weight != 10 {
		t.Fatalf("published iris traffic %+v", iris.Traffic)
	}
	for deadline := time.Now().Add(10 * time.Second); !c.Ready(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("not ready 10s after the rules were known")
		}
	}

	// The rules change.
	traffic.changes <- nil
	await("the registry without rules", file)

	// The file changes: the rules in force still apply to it.
	traffic.changes <- canary
	await("the canary again", withCanary)
	more := irisTwo + "  - name: digits\n    versions: [{version: \"1\", storageUri: \"file:///d/1\"}]\n"
	moreFile, err := registry.Parse([]byte(more))
	if err != nil {
		t.Fatal(err)
	}
	moreCanary, err := moreFile.WithTraffic(map[string][]registry.Rule{"iris": canary})
	if err != nil {
		t.Fatal(err)
	}
	// Written until seen, since the file's watch may not be set up yet.
	for deadline := time.Now().Add(10 * time.Second); ; {
		if err := os.WriteFile(path, []byte(more), 0o644); err != nil {
			t.Fatal(err)
		}
		select {
		case d := <-published:
			if d == moreCanary.Digest() {
				return
			}
		case <-time.After(300 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("never published: the new file with the canary")
		}
	}
}

// fakePusher answers pushes with err, after running during (which looks at Redis while the
// push is under way).
type fakePusher struct {
	err    error
	during func()
}

func (f *fakePusher) Push(context.Context, translate.Resources) error {
	if f.during != nil {
		f.during()
	}
	return f.err
}

// TestRoutedSetsAroundAPush: the routed sets hold the replicas of the old and the new
// configuration while a push is under way, keep both when some gateway did not acknowledge
// it, hold the new ones once every gateway did, and come back after Redis lost them.
func TestRoutedSetsAroundAPush(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()
	keys := residency.Keys{Prefix: "test"}
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	c := New(Config{ID: "cp-1", Watch: residency.WatchConfig{Resync: time.Second}}, rdb, keys, nil, log, nil)
	sets := func() map[string][]string {
		t.Helper()
		got, err := residency.ReadRouted(ctx, rdb, keys, "cp-1", []string{"w1", "w2"})
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	check := func(what string, want map[string][]string) {
		t.Helper()
		if diff := cmp.Diff(want, sets()); diff != "" {
			t.Fatalf("%s: routed sets (-want +got):\n%s", what, diff)
		}
	}

	c.xds = &fakePusher{}
	if err := c.pushRouted(ctx, translate.Resources{}, map[string][]string{"w1": {"iris:1"}, "w2": {"digits:1"}}); err != nil {
		t.Fatal(err)
	}
	check("after the first push", map[string][]string{"w1": {"iris:1"}, "w2": {"digits:1"}})

	// iris moves from version 1 to 2 on w1, and w2 leaves; a gateway rejects the push.
	next := map[string][]string{"w1": {"iris:2"}}
	both := map[string][]string{"w1": {"iris:1", "iris:2"}}
	c.xds = &fakePusher{err: xds.ErrNotAcknowledged, during: func() { check("during the push", both) }}
	if err := c.pushRouted(ctx, translate.Resources{}, next); !errors.Is(err, xds.ErrNotAcknowledged) {
		t.Fatalf("push: %v", err)
	}
	check("after a push not acknowledged", both)

	c.xds = &fakePusher{during: func() { check("during the push again", both) }}
	if err := c.pushRouted(ctx, translate.Resources{}, next); err != nil {
		t.Fatal(err)
	}
	check("after every gateway acknowledged", next)

	// Redis restarts empty: the next renewal writes the sets back.
	srv.Stop()
	srv.Start()
	c.routed.write(ctx, time.Minute)
	check("after Redis lost them and a renewal ran", next)

	// A control plane that stops makes its sets count only a few resyncs more (its gateways
	// reconnect to another replica), not the minutes a silent one keeps them.
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.routed.renew(rctx, time.Second) }()
	// Running: its first renewal makes the sets count minutes ahead.
	for deadline := time.Now().Add(5 * time.Second); time.Until(time.UnixMilli(int64(rdb.ZScore(ctx, keys.ControlPlanes(), "cp-1").Val()))) < 2*time.Minute; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the renewal never ran")
		}
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	until := time.UnixMilli(int64(rdb.ZScore(ctx, keys.ControlPlanes(), "cp-1").Val()))
	if left := time.Until(until); left <= 0 || left > 3*time.Second {
		t.Fatalf("a stopped control plane's sets count %v more, want at most three resyncs (3s)", left)
	}
}

// counter counts calls and wakes whoever awaits a count.
type counter struct {
	n       atomic.Int64
	changed chan struct{}
}

func newCounter() *counter { return &counter{changed: make(chan struct{}, 1)} }

func (c *counter) add() {
	c.n.Add(1)
	select {
	case c.changed <- struct{}{}:
	default:
	}
}

// await waits until the count reaches n, failing the test after 10 s.
func (c *counter) await(t *testing.T, what string, n int64) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for c.n.Load() < n {
		select {
		case <-c.changed:
		case <-deadline:
			t.Fatalf("%s: %d after 10s, want %d", what, c.n.Load(), n)
		}
	}
}

// countingPusher counts pushes.
type countingPusher struct{ *counter }

func (p countingPusher) Push(context.Context, translate.Resources) error {
	p.add()
	return nil
}

// countingObserver counts the states shown to it: one per loop round, pushed or not.
type countingObserver struct{ *counter }

func (o countingObserver) Observe(*registry.Registry, residency.Snapshot) { o.add() }

// TestUnchangedStateIsNotPushedAgain: resyncs that find the state a push already delivered
// push nothing; a change is pushed.
func TestUnchangedStateIsNotPushedAgain(t *testing.T) {
	rdb, keys, path := redisAndRegistry(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	pusher, observer := countingPusher{newCounter()}, countingObserver{newCounter()}
	c := New(Config{ID: "cp-1", RegistryPath: path, Status: observer,
		Translate: testTranslate(),
		Watch:     residency.WatchConfig{Batch: 10 * time.Millisecond, Resync: 20 * time.Millisecond},
	}, rdb, keys, pusher, log, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer runController(t, ctx, cancel, c)()
	pusher.await(t, "the first push", 1)
	// Ten more rounds (resyncs), each shown to the observer: the state is the same.
	observer.await(t, "ten resyncs", observer.n.Load()+10)
	if n := pusher.n.Load(); n != 1 {
		t.Fatalf("%d pushes of an unchanged state, want 1", n)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	// A worker joins (its records as a reporter writes them): the next round pushes.
	must(rdb.HSet(context.Background(), keys.Worker("w1"), "data_addr", "10.0.0.1:8000").Err())
	must(rdb.ZAdd(context.Background(), keys.Workers(), redis.Z{Score: float64(time.Now().Add(time.Hour).UnixMilli()), Member: "w1"}).Err())
	pusher.await(t, "a new worker pushed", 2)
	if n := pusher.n.Load(); n != 2 {
		t.Fatalf("%d pushes after one change, want 2", n)
	}
}
