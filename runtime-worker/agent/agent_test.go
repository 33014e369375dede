package agent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/runtime-worker/storage"
	"github.com/modelmesh/mesh/runtime-worker/tensor"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeBackend is a hand-written Backend: it records loads and unloads, reports a configured
// measured size per model, can be made to fail or block, and answers Infer with its input.
type fakeBackend struct {
	mu       sync.Mutex
	loads    map[string]int
	unloads  []string
	measured map[string]placement.Memory
	gpus     map[string]int // the device each model was last loaded on
	fail     map[string]error
	gate     chan struct{} // when set, Load waits on it
	block    chan struct{} // when set, Infer waits on it
	resident map[placement.ModelVersion]bool
	formats  []string // the format of each load, in order
}

func newFakeBackend() *fakeBackend {
	return &fakeBackend{loads: map[string]int{}, measured: map[string]placement.Memory{}, gpus: map[string]int{}, fail: map[string]error{}, resident: map[placement.ModelVersion]bool{}}
}

func (f *fakeBackend) Runtime() string { return "fake" }

func (f *fakeBackend) Capabilities() placement.Capabilities {
	return placement.Capabilities{Formats: []string{"onnx"}}
}

func (f *fakeBackend) Load(ctx context.Context, m placement.ModelVersion, files Files) (Loaded, error) {
	gpu := files.GPU
	f.mu.Lock()
	f.formats = append(f.formats, files.Format)
	f.mu.Unlock()
	if f.gate != nil {
		select {
		case <-f.gate:
		case <-ctx.Done():
			return Loaded{}, ctx.Err()
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.loads[m.Name]++
	f.gpus[m.Name] = gpu
	if err := f.fail[m.Name]; err != nil {
		return Loaded{}, err
	}
	f.resident[m] = true
	return Loaded{Memory: f.measured[m.Name], Metadata: tensor.Metadata{
		Inputs:  []tensor.Spec{{Name: "x", Datatype: tensor.FP32, Shape: []int64{-1}}},
		Outputs: []tensor.Spec{{Name: "x", Datatype: tensor.FP32, Shape: []int64{-1}}},
	}}, nil
}

func (f *fakeBackend) Unload(_ context.Context, m placement.ModelVersion) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.resident[m] {
		return errors.New("unload of a model that is not loaded")
	}
	delete(f.resident, m)
	f.unloads = append(f.unloads, m.Name)
	return nil
}

func (f *fakeBackend) Infer(_ context.Context, _ placement.ModelVersion, req *tensor.Request) (*tensor.Response, error) {
	if f.block != nil {
		<-f.block
	}
	return &tensor.Response{Outputs: req.Inputs}, nil
}

func (f *fakeBackend) loadCount(name string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.loads[name]
}

type fixture struct {
	agent   *Agent
	backend *fakeBackend
	root    string
	clock   *time.Time
	mu      sync.Mutex
}

// newFixture makes an agent with a real storage.Store over a temporary root holding 1000-byte
// model files named a to e.
func newFixture(t *testing.T, capacity int64) *fixture {
	t.Helper()
	return newFixtureMemory(t, placement.HostMemory(capacity))
}

// newFixtureMemory is newFixture with a budget in several dimensions.
func newFixtureMemory(t *testing.T, capacity placement.Memory) *fixture {
	t.Helper()
	return newFixtureWith(t, capacity, nil)
}

// newFixtureWith is newFixtureMemory with the agent's configuration changed by configure
// (nil: none) before the agent starts.
func newFixtureWith(t *testing.T, capacity placement.Memory, configure func(*Config)) *fixture {
	t.Helper()
	root := t.TempDir()
	for _, n := range []string{"a", "b", "c", "d", "e"} {
		if err := os.WriteFile(filepath.Join(root, n+".onnx"), make([]byte, 1000), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	store, err := storage.New(storage.Options{Roots: []string{root}, CacheDir: t.TempDir(), DiskBytes: 1 << 30, MaxFiles: 10})
	if err != nil {
		t.Fatal(err)
	}
	fx := &fixture{backend: newFakeBackend(), root: root}
	now := time.Unix(1_000_000, 0)
	fx.clock = &now
	cfg := Config{Capacity: capacity, LoadConcurrency: 2, LoadTimeout: 5 * time.Second, EstimateFactor: 2}
	if configure != nil {
		configure(&cfg)
	}
	fx.agent = New(cfg, fx.backend, store, nil, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	fx.agent.mu.Lock() // the headroom loop may be reading the clock already
	fx.agent.now = func() time.Time {
		fx.mu.Lock()
		defer fx.mu.Unlock()
		*fx.clock = fx.clock.Add(time.Millisecond)
		return *fx.clock
	}
	fx.agent.mu.Unlock()
	t.Cleanup(func() { fx.agent.Close(context.Background()); store.Close() })
	return fx
}

func (fx *fixture) spec(name string, declared int64) Spec {
	return Spec{Model: placement.ModelVersion{Name: name, Version: "1"}, Storage: storage.Location{URI: "file://" + filepath.Join(fx.root, name+".onnx")}, DeclaredBytes: declared}
}

// TestLoadChecksTheFormat: a model of a format the runtime reads is handed over with it; one
// of another format fails before anything is fetched or loaded, with ErrFormat.
func TestLoadChecksTheFormat(t *testing.T) {
	fx := newFixture(t, 10000)
	s := fx.spec("a", 0)
	s.Format = "onnx"
	if _, err := fx.agent.Load(t.Context(), s); err != nil {
		t.Fatal(err)
	}
	s = fx.spec("b", 0)
	s.Format = "sklearn"
	_, err := fx.agent.Load(t.Context(), s)
	if !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), "fake reads onnx, not sklearn") {
		t.Fatalf("a sklearn model on a runtime that reads onnx: %v", err)
	}
	fx.backend.mu.Lock()
	defer fx.backend.mu.Unlock()
	if !slices.Equal(fx.backend.formats, []string{"onnx"}) {
		t.Fatalf("backend loads with formats %q, want the onnx one only", fx.backend.formats)
	}
}

func (fx *fixture) resident(t *testing.T) map[string]placement.State {
	t.Helper()
	replicas, used := fx.agent.Snapshot()
	out := map[string]placement.State{}
	var sum placement.Memory
	for _, r := range replicas {
		out[r.Model.Name] = r.State
		sum = sum.Plus(r.Memory)
	}
	if !cmp.Equal(sum, used) {
		t.Fatalf("used %s, but replicas add up to %s", used, sum)
	}
	if !used.Within(fx.agent.Capacity()) {
		t.Fatalf("used %d bytes over the %d budget", used, fx.agent.Capacity())
	}
	return out
}

func (fx *fixture) infer(t *testing.T, name string) {
	t.Helper()
	_, err := fx.agent.Infer(context.Background(), &tensor.Request{Model: placement.ModelVersion{Name: name},
		Inputs: []tensor.Tensor{{Name: "x", Datatype: tensor.FP32, Shape: []int64{1}, Data: []float32{1}}}})
	if err != nil {
		t.Fatalf("infer %s: %v", name, err)
	}
}

func TestLoadEvictsLeastRecentlyUsed(t *testing.T) {
	t.Parallel()
	fx := newFixture(t, 2500)
	ctx := context.Background()
	for _, n := range []string{"a", "b"} {
		if _, err := fx.agent.Load(ctx, fx.spec(n, 1000)); err != nil {
			t.Fatal(err)
		}
	}
	fx.infer(t, "a") // b is now the least recently used
	res, err := fx.agent.Load(ctx, fx.spec("c", 1000))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Evicted) != 1 || res.Evicted[0].Name != "b" {
		t.Fatalf("evicted %v, want b", res.Evicted)
	}
	got := fx.resident(t)
	if _, ok := got["b"]; ok || len(got) != 2 {
		t.Fatalf("resident %v, want a and c", got)
	}
}

func TestLoadThatCannotFitChangesNothing(t *testing.T) {
	t.Parallel()
	fx := newFixture(t, 2500)
	ctx := context.Background()
	pinned := fx.spec("a", 1000)
	pinned.Pinned = true
	if _, err := fx.agent.Load(ctx, pinned); err != nil {
		t.Fatal(err)
	}
	if _, err := fx.agent.Load(ctx, fx.spec("b", 1000)); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		spec Spec
	}{
		{"larger than the budget", fx.spec("c", 3000)},
		{"pinned model cannot make room", fx.spec("c", 2000)},
	} {
		_, err := fx.agent.Load(ctx, tt.spec)
		if !errors.Is(err, ErrNoCapacity) {
			t.Fatalf("%s: error %v, want ErrNoCapacity", tt.name, err)
		}
	}
	got := fx.resident(t)
	if len(got) != 2 || got["a"] != placement.StateReady || got["b"] != placement.StateReady {
		t.Fatalf("resident %v after failed loads, want a and b ready", got)
	}
	if fx.backend.loadCount("c") != 0 {
		t.Fatal("the runtime was asked to load a model that could not fit")
	}
}

func TestBusyModelIsNotEvictedTheLoadWaits(t *testing.T) {
	t.Parallel()
	fx := newFixture(t, 2000)
	ctx := context.Background()
	if _, err := fx.agent.Load(ctx, fx.spec("a", 1500)); err != nil {
		t.Fatal(err)
	}
	_, _, release, err := fx.agent.Acquire(placement.ModelVersion{Name: "a"})
	if err != nil {
		t.Fatal(err)
	}
	loaded := make(chan error, 1)
	go func() {
		_, err := fx.agent.Load(ctx, fx.spec("b", 1000))
		loaded <- err
	}()
	select {
	case err := <-loaded:
		t.Fatalf("load finished (%v) while the only evictable model was busy", err)
	case <-time.After(100 * time.Millisecond):
	}
	if got := fx.resident(t)["a"]; got != placement.StateReady {
		t.Fatalf("busy model a is %v", got)
	}
	release()
	if err := <-loaded; err != nil {
		t.Fatalf("load once the model is idle: %v", err)
	}
}

func TestLoadGivesUpWaitingForRoom(t *testing.T) {
	t.Parallel()
	fx := newFixture(t, 2000)
	fx.agent.cfg.MinIdle = time.Hour // a is never idle long enough
	if _, err := fx.agent.Load(context.Background(), fx.spec("a", 1500)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := fx.agent.Load(ctx, fx.spec("b", 1000)); !errors.Is(err, ErrNoCapacity) && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("error %v, want no capacity after waiting", err)
	}
	if got := fx.resident(t); got["a"] != placement.StateReady {
		t.Fatalf("resident %v", got)
	}
}

func TestConcurrentLoadsAreOneLoad(t *testing.T) {
	t.Parallel()
	fx := newFixture(t, 10000)
	fx.backend.gate = make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	fresh := make(chan bool, 50)
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := fx.agent.Load(context.Background(), fx.spec("a", 0))
			errs <- err
			fresh <- res.Loaded
		}()
	}
	time.Sleep(50 * time.Millisecond) // let the callers pile up on the one load
	close(fx.backend.gate)
	wg.Wait()
	close(errs)
	close(fresh)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	loaded := 0
	for f := range fresh {
		if f {
			loaded++
		}
	}
	if n := fx.backend.loadCount("a"); n != 1 || loaded != 1 {
		t.Fatalf("runtime loads %d, callers told they loaded %d; want 1 and 1", n, loaded)
	}
}

func TestFailedLoadLeavesNothing(t *testing.T) {
	t.Parallel()
	fx := newFixture(t, 10000)
	ctx := context.Background()
	if _, err := fx.agent.Load(ctx, fx.spec("a", 0)); err != nil {
		t.Fatal(err)
	}
	fx.backend.fail["b"] = errors.New("protobuf parsing failed")
	tests := []struct {
		name string
		spec Spec
		want error
	}{
		{"runtime rejects the model", fx.spec("b", 0), ErrLoadFailed},
		{"file missing", Spec{Model: placement.ModelVersion{Name: "z", Version: "1"}, Storage: storage.Location{URI: "file://" + filepath.Join(fx.root, "z.onnx")}}, storage.ErrNotFound},
		{"traversal", Spec{Model: placement.ModelVersion{Name: "z", Version: "1"}, Storage: storage.Location{URI: "file://" + fx.root + "/../x.onnx"}}, storage.ErrBadURI},
		{"no version", Spec{Model: placement.ModelVersion{Name: "z"}, Storage: storage.Location{URI: "file://" + filepath.Join(fx.root, "c.onnx")}}, placement.ErrInvalidID},
	}
	for _, tt := range tests {
		if _, err := fx.agent.Load(ctx, tt.spec); !errors.Is(err, tt.want) {
			t.Fatalf("%s: error %v, want %v", tt.name, err, tt.want)
		}
	}
	got := fx.resident(t)
	if len(got) != 1 || got["a"] != placement.StateReady {
		t.Fatalf("resident %v, want only a", got)
	}
	fx.infer(t, "a")
	// A failed load can be retried once its cause is fixed.
	delete(fx.backend.fail, "b")
	if _, err := fx.agent.Load(ctx, fx.spec("b", 0)); err != nil {
		t.Fatalf("retry after fix: %v", err)
	}
}

func TestSizeSources(t *testing.T) {
	t.Parallel()
	fx := newFixture(t, 100000)
	ctx := context.Background()
	fx.backend.measured["b"] = placement.HostMemory(1234)
	fx.backend.measured["c"] = placement.HostMemory(99)
	learned := fx.spec("d", 0)
	learned.Learned = placement.Footprint{Host: 777}
	tests := []struct {
		spec       Spec
		wantBytes  int64
		wantSource placement.SizeSource
	}{
		{fx.spec("a", 0), 2000, placement.SizeEstimated}, // 1000-byte file x estimate factor 2
		{fx.spec("b", 0), 1234, placement.SizeMeasured},
		{fx.spec("c", 5000), 5000, placement.SizeDeclared}, // declared wins over measured
		{learned, 777, placement.SizeLearned},
	}
	for _, tt := range tests {
		res, err := fx.agent.Load(ctx, tt.spec)
		if err != nil {
			t.Fatal(err)
		}
		if !cmp.Equal(res.Replica.Memory, placement.HostMemory(tt.wantBytes)) || res.Replica.Source != tt.wantSource {
			t.Errorf("%s: %s (%s), want host=%d (%s)", tt.spec.Model.Name, res.Replica.Memory, res.Replica.Source, tt.wantBytes, tt.wantSource)
		}
	}
	fx.resident(t)
}

func TestMeasuredSizeOverBudgetFailsCleanly(t *testing.T) {
	t.Parallel()
	fx := newFixture(t, 3000)
	fx.backend.measured["a"] = placement.HostMemory(5000) // reserved 2000 from the file size, measured far more
	_, err := fx.agent.Load(context.Background(), fx.spec("a", 0))
	if !errors.Is(err, ErrNoCapacity) {
		t.Fatalf("error %v, want ErrNoCapacity", err)
	}
	if got := fx.resident(t); len(got) != 0 {
		t.Fatalf("resident %v, want nothing", got)
	}
	if len(fx.backend.resident) != 0 {
		t.Fatal("the runtime still holds the model that did not fit")
	}
}

func TestDrainWaitsForRequestsInFlight(t *testing.T) {
	t.Parallel()
	fx := newFixture(t, 10000)
	ctx := context.Background()
	if _, err := fx.agent.Load(ctx, fx.spec("a", 0)); err != nil {
		t.Fatal(err)
	}
	fx.backend.block = make(chan struct{})
	inferred := make(chan error, 1)
	go func() {
		_, err := fx.agent.Infer(ctx, &tensor.Request{Model: placement.ModelVersion{Name: "a", Version: "1"},
			Inputs: []tensor.Tensor{{Name: "x", Datatype: tensor.FP32, Shape: []int64{1}, Data: []float32{1}}}})
		inferred <- err
	}()
	for fx.agentInFlight("a") == 0 {
		time.Sleep(time.Millisecond)
	}
	drained := make(chan error, 1)
	go func() { drained <- fx.agent.Drain(ctx, placement.ModelVersion{Name: "a", Version: "1"}) }()
	for fx.resident(t)["a"] != placement.StateDraining {
		time.Sleep(time.Millisecond)
	}
	if fx.agent.Ready(placement.ModelVersion{Name: "a"}) {
		t.Fatal("a draining model is reported ready")
	}
	select {
	case err := <-drained:
		t.Fatalf("drain returned (%v) with a request in flight", err)
	case <-time.After(20 * time.Millisecond):
	}
	close(fx.backend.block)
	if err := <-inferred; err != nil {
		t.Fatalf("request in flight during drain failed: %v", err)
	}
	if err := <-drained; err != nil {
		t.Fatal(err)
	}
	if got := fx.resident(t); len(got) != 0 {
		t.Fatalf("resident after drain: %v", got)
	}
	if _, _, _, err := fx.agent.Acquire(placement.ModelVersion{Name: "a"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("request after drain: %v, want ErrNotFound", err)
	}
}

func (fx *fixture) agentInFlight(name string) int {
	replicas, _ := fx.agent.Snapshot()
	for _, r := range replicas {
		if r.Model.Name == name {
			return r.InFlight
		}
	}
	return 0
}

func TestDefaultVersionIsNewest(t *testing.T) {
	t.Parallel()
	fx := newFixture(t, 10000)
	ctx := context.Background()
	for _, v := range []string{"2", "10", "9"} {
		s := fx.spec("a", 100)
		s.Model.Version = v
		if _, err := fx.agent.Load(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	m, _, release, err := fx.agent.Acquire(placement.ModelVersion{Name: "a"})
	if err != nil {
		t.Fatal(err)
	}
	release()
	if m.Version != "10" {
		t.Fatalf("default version %s, want 10", m.Version)
	}
}

func TestLoadTimesOut(t *testing.T) {
	t.Parallel()
	fx := newFixture(t, 10000)
	fx.agent.cfg.LoadTimeout = 30 * time.Millisecond
	fx.backend.gate = make(chan struct{}) // never opens
	_, err := fx.agent.Load(context.Background(), fx.spec("a", 0))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("error %v, want a deadline", err)
	}
	if got := fx.resident(t); len(got) != 0 {
		t.Fatalf("resident after a timed-out load: %v", got)
	}
}

// fakeRouter is a hand-written Router: models stay routed until the test lets them go.
type fakeRouter struct {
	mu       sync.Mutex
	routed   map[placement.ModelVersion]chan struct{}
	asked    chan placement.ModelVersion
	released map[placement.ModelVersion]bool
}

func newFakeRouter() *fakeRouter {
	return &fakeRouter{routed: map[placement.ModelVersion]chan struct{}{}, asked: make(chan placement.ModelVersion, 10), released: map[placement.ModelVersion]bool{}}
}

func (f *fakeRouter) gate(m placement.ModelVersion) chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.routed[m] == nil {
		f.routed[m] = make(chan struct{})
	}
	return f.routed[m]
}

func (f *fakeRouter) WaitUnrouted(ctx context.Context, m placement.ModelVersion) error {
	f.asked <- m
	select {
	case <-f.gate(m):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// withRouter gives the agent a fakeRouter that holds every drain until the test lets it go.
func (fx *fixture) withRouter() *fakeRouter {
	router := newFakeRouter()
	fx.agent.router = router
	fx.agent.cfg.DrainTimeout = 10 * time.Second
	return router
}

func TestEvictionWaitsUntilTheMeshStopsRouting(t *testing.T) {
	t.Parallel()
	fx := newFixture(t, 2500)
	router := fx.withRouter()
	ctx := context.Background()
	for _, n := range []string{"a", "b"} {
		if _, err := fx.agent.Load(ctx, fx.spec(n, 1000)); err != nil {
			t.Fatal(err)
		}
	}
	fx.infer(t, "b") // a is the least recently used
	loaded := make(chan error, 1)
	go func() {
		_, err := fx.agent.Load(ctx, fx.spec("c", 1000))
		loaded <- err
	}()
	a := placement.ModelVersion{Name: "a", Version: "1"}
	if got := <-router.asked; got != a {
		t.Fatalf("asked about %v, want a", got)
	}
	// While the mesh still routes a here, a is draining but keeps answering.
	if got := fx.resident(t)["a"]; got != placement.StateDraining {
		t.Fatalf("a is %v while waiting for the mesh, want draining", got)
	}
	fx.infer(t, "a")
	if fx.agent.Ready(a) {
		t.Fatal("a draining model is reported ready")
	}
	close(router.gate(a))
	if err := <-loaded; err != nil {
		t.Fatal(err)
	}
	if got := fx.resident(t); len(got) != 2 || got["c"] != placement.StateReady {
		t.Fatalf("resident %v, want b and c", got)
	}
}

func TestLoadOfADrainingModelWaitsThenLoadsAgain(t *testing.T) {
	t.Parallel()
	fx := newFixture(t, 10000)
	router := fx.withRouter()
	ctx := context.Background()
	if _, err := fx.agent.Load(ctx, fx.spec("a", 0)); err != nil {
		t.Fatal(err)
	}
	a := placement.ModelVersion{Name: "a", Version: "1"}
	drained := make(chan error, 1)
	go func() { drained <- fx.agent.Drain(ctx, a) }()
	<-router.asked
	reloaded := make(chan error, 1)
	go func() {
		_, err := fx.agent.Load(ctx, fx.spec("a", 0))
		reloaded <- err
	}()
	close(router.gate(a))
	if err := <-drained; err != nil {
		t.Fatal(err)
	}
	if err := <-reloaded; err != nil {
		t.Fatalf("load after drain: %v", err)
	}
	if fx.backend.loadCount("a") != 2 || !fx.agent.Ready(a) {
		t.Fatalf("runtime loads %d, ready %v; want a loaded again", fx.backend.loadCount("a"), fx.agent.Ready(a))
	}
}

func TestLostForgetsWithoutUnloadingAndTouchMovesLastUse(t *testing.T) {
	t.Parallel()
	fx := newFixture(t, 10000)
	ctx := context.Background()
	for _, n := range []string{"a", "b"} {
		if _, err := fx.agent.Load(ctx, fx.spec(n, 100)); err != nil {
			t.Fatal(err)
		}
	}
	a := placement.ModelVersion{Name: "a", Version: "1"}
	later := time.Unix(2_000_000, 0)
	fx.agent.Touch(a, later)
	fx.agent.Touch(a, time.Unix(1, 0)) // never backwards
	for _, r := range func() []Replica { rs, _ := fx.agent.Snapshot(); return rs }() {
		if r.Model == a && !r.LastUsed.Equal(later) {
			t.Fatalf("last use %v, want %v", r.LastUsed, later)
		}
	}
	lost := fx.agent.Lost(ctx)
	if len(lost) != 2 || len(fx.resident(t)) != 0 {
		t.Fatalf("lost %v, resident %v", lost, fx.resident(t))
	}
	if len(fx.backend.unloads) != 0 {
		t.Fatalf("the runtime was asked to unload %v models it had lost", fx.backend.unloads)
	}
	// Loaded again on demand.
	if _, err := fx.agent.Load(ctx, fx.spec("a", 100)); err != nil {
		t.Fatal(err)
	}
}

func TestDrainOfALostModelSparesItsReplacement(t *testing.T) {
	t.Parallel()
	fx := newFixture(t, 10000)
	router := fx.withRouter()
	ctx := context.Background()
	if _, err := fx.agent.Load(ctx, fx.spec("a", 100)); err != nil {
		t.Fatal(err)
	}
	a := placement.ModelVersion{Name: "a", Version: "1"}
	drained := make(chan error, 1)
	go func() { drained <- fx.agent.Drain(ctx, a) }()
	<-router.asked     // the drain waits for the mesh
	fx.agent.Lost(ctx) // the runtime dies: a is forgotten
	if _, err := fx.agent.Load(ctx, fx.spec("a", 100)); err != nil {
		t.Fatalf("load after the runtime came back: %v", err)
	}
	close(router.gate(a)) // the old drain finishes now
	if err := <-drained; err != nil {
		t.Fatal(err)
	}
	if !fx.agent.Ready(a) || len(fx.backend.unloads) != 0 {
		t.Fatalf("the old drain unloaded the new replica: ready %v, unloads %v", fx.agent.Ready(a), fx.backend.unloads)
	}
}

func TestGPUDevicesAreBudgetedOneByOne(t *testing.T) {
	t.Parallel()
	// Two GPUs of 3000 bytes each; model files are 1000 bytes, estimated at 2000 on a GPU.
	fx := newFixtureMemory(t, placement.Memory{Host: 10000, GPU: []int64{3000, 3000}})
	ctx := context.Background()
	load := func(spec Spec) LoadResult {
		t.Helper()
		res, err := fx.agent.Load(ctx, spec)
		if err != nil {
			t.Fatalf("load %s: %v", spec.Model.Name, err)
		}
		return res
	}
	gpuOf := func(name string) int {
		fx.backend.mu.Lock()
		defer fx.backend.mu.Unlock()
		return fx.backend.gpus[name]
	}

	if res := load(fx.spec("a", 0)); res.Replica.GPU != 0 || !cmp.Equal(res.Replica.Memory, placement.Memory{GPU: []int64{2000}}) {
		t.Fatalf("a: on GPU %d holding %s, want GPU 0 holding gpu0=2000", res.Replica.GPU, res.Replica.Memory)
	}
	if res := load(fx.spec("b", 0)); res.Replica.GPU != 1 || gpuOf("b") != 1 {
		t.Fatalf("b went to GPU %d (runtime told %d), want the emptier GPU 1", res.Replica.GPU, gpuOf("b"))
	}
	// Both GPUs are two-thirds full: c evicts one model, the least recently used (a), and
	// takes its device; b on the other GPU stays.
	fx.agent.Touch(placement.ModelVersion{Name: "b", Version: "1"}, fx.agent.now().Add(time.Hour))
	res := load(fx.spec("c", 0))
	if diff := cmp.Diff([]placement.ModelVersion{{Name: "a", Version: "1"}}, res.Evicted); diff != "" || res.Replica.GPU != 0 {
		t.Fatalf("c on GPU %d, evicted (-want +got):\n%s", res.Replica.GPU, diff)
	}
	// A model that measured host memory only (a CPU instance) reserves no GPU memory: it is
	// loaded beside full GPUs and evicts nothing. The runtime is still told a device (of two
	// equally free ones, the first), in case the model takes GPU memory here.
	cpu := fx.spec("d", 0)
	cpu.Learned = placement.Footprint{Host: 4000}
	fx.backend.measured["d"] = placement.HostMemory(4000)
	if res := load(cpu); res.Replica.GPU != 0 || len(res.Evicted) != 0 || gpuOf("d") != 0 || res.Replica.Memory.GPUTotal() != 0 {
		t.Fatalf("host-only d: GPU %d (runtime told %d) holding %s, evicted %v; want GPU 0, host memory only, no eviction",
			res.Replica.GPU, gpuOf("d"), res.Replica.Memory, res.Evicted)
	}
	// e is reserved on a GPU first (2000, estimated): both are full, so c, used before b,
	// goes. The runtime then reports e on GPU 1 (its own config chose the device) and holding
	// 7000 bytes of host memory: d, the model holding host memory, goes too, and b stays,
	// since GPU 1 still has room.
	fx.backend.measured["e"] = placement.Memory{Host: 7000, GPU: []int64{0, 1000}}
	res = load(fx.spec("e", 0))
	if diff := cmp.Diff([]placement.ModelVersion{{Name: "c", Version: "1"}, {Name: "d", Version: "1"}}, res.Evicted); diff != "" {
		t.Fatalf("e evicted (-want +got):\n%s", diff)
	}
	if got, want := res.Replica.Memory, (placement.Memory{Host: 7000, GPU: []int64{0, 1000}}); !cmp.Equal(got, want) || res.Replica.Source != placement.SizeMeasured {
		t.Fatalf("e holds %s (%s), want %s measured", got, res.Replica.Source, want)
	}
	if got := fx.resident(t); len(got) != 2 || got["b"] != placement.StateReady || got["e"] != placement.StateReady {
		t.Fatalf("resident %v, want b and e", got)
	}
}

func TestGPUModelLargerThanAnyDeviceFails(t *testing.T) {
	t.Parallel()
	// 4000 bytes of GPU memory in all, but no single device holds a 2500-byte model.
	fx := newFixtureMemory(t, placement.Memory{Host: 10000, GPU: []int64{2000, 2000}})
	_, err := fx.agent.Load(context.Background(), fx.spec("a", 2500))
	if !errors.Is(err, ErrNoCapacity) || !strings.Contains(err.Error(), "whole budget") {
		t.Fatalf("load of a model larger than every GPU: %v, want ErrNoCapacity naming the whole budget", err)
	}
	if got := fx.backend.loadCount("a"); got != 0 {
		t.Fatalf("runtime asked to load it %d times, want 0", got)
	}
}

func TestAwaitUnroutedWaitsForEveryModel(t *testing.T) {
	t.Parallel()
	fx := newFixture(t, 100000)
	ctx := context.Background()
	for _, n := range []string{"a", "b"} {
		if _, err := fx.agent.Load(ctx, fx.spec(n, 100)); err != nil {
			t.Fatal(err)
		}
	}
	router := fx.withRouter()
	done := make(chan struct{})
	go func() { fx.agent.AwaitUnrouted(ctx); close(done) }()
	asked := map[string]bool{}
	for range 2 {
		asked[(<-router.asked).Name] = true // both waits run at once
	}
	if !asked["a"] || !asked["b"] {
		t.Fatalf("asked about %v, want a and b", asked)
	}
	close(router.gate(placement.ModelVersion{Name: "a", Version: "1"}))
	select {
	case <-done:
		t.Fatal("returned while b was still routed here")
	case <-time.After(50 * time.Millisecond):
	}
	close(router.gate(placement.ModelVersion{Name: "b", Version: "1"}))
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("still waiting after the mesh stopped routing every model")
	}
	// The models still serve: waiting is not unloading.
	if got := fx.resident(t); got["a"] != placement.StateReady || got["b"] != placement.StateReady {
		t.Fatalf("resident %v after AwaitUnrouted, want both still ready", got)
	}
}
