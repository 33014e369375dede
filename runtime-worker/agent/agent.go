package agent

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/runtime-worker/storage"
	"github.com/modelmesh/mesh/runtime-worker/tensor"
)

// Errors the agent returns; the worker's API maps them to wire statuses in one place.
var (
	// ErrNotFound: the model version is not resident (or not ready) on this worker.
	ErrNotFound = errors.New("model not loaded on this worker")
	// ErrNoCapacity: the model does not fit even after evicting every idle, unpinned model.
	ErrNoCapacity = errors.New("not enough memory for the model")
	// ErrDraining: the model version is being drained and cannot be loaded again until gone.
	ErrDraining = errors.New("model is draining")
	// ErrLoadFailed: the runtime rejected the model (corrupt file, wrong format).
	ErrLoadFailed = errors.New("model failed to load")
	// ErrFormat: the model's format is not one the worker's runtime reads.
	ErrFormat = errors.New("model format not read by this runtime")
	// ErrRuntimeDown: the runtime reads no format now (its model server is not answering);
	// another worker, or this one later, may load the model.
	ErrRuntimeDown = errors.New("runtime not answering")
	// ErrClosed: the worker is shutting down.
	ErrClosed = errors.New("worker is shutting down")
)

// Router tells whether the mesh still routes requests for a model version to this worker.
// The agent asks it before unloading, so that no request is sent to a replica that no
// longer holds its model (drain before unload).
type Router interface {
	// WaitUnrouted blocks until the gateway no longer routes m here, or ctx ends.
	WaitUnrouted(ctx context.Context, m placement.ModelVersion) error
}

// Config sizes the agent.
type Config struct {
	// Capacity is the memory budget in each dimension (host memory, each GPU's memory); what
	// the replicas hold never exceeds it in any dimension.
	Capacity placement.Memory
	// LoadConcurrency bounds loads running at once.
	LoadConcurrency int
	// LoadTimeout bounds one load, from fetch to ready.
	LoadTimeout time.Duration
	// EstimateFactor turns a model file's size into the memory reserved for it when no size
	// is declared or learned.
	EstimateFactor float64
	// DrainGrace is how long a worker shutting down keeps serving, once the mesh has stopped
	// routing any of its models here, for requests already on their way (AwaitUnrouted). A
	// drained or evicted model does not wait for it: it unloads once the mesh no longer routes
	// it here and nothing is in flight on it.
	DrainGrace time.Duration
	// DrainTimeout bounds the wait for the mesh to stop routing a draining model here.
	DrainTimeout time.Duration
	// RouteSettle is how long after a replica turned ready the routed sets are first believed
	// when they say the mesh does not route it here: a control plane that read the worker's
	// state before a drain may still be about to route the new replica (it records a replica
	// in its routed sets before the push that adds it). It must exceed the control plane's
	// --batch plus one translation. A replica ready for longer is in the routed sets of every
	// control plane that routes it, so its drain waits for them as they are.
	RouteSettle time.Duration
	// MinIdle is how long a model must have gone unused before it may be evicted: a model
	// just loaded or just used may have requests on their way to it.
	MinIdle time.Duration
	// FreeWatermark is the memory kept free, in each dimension, ahead of demand: whenever
	// less would be free once the drains under way end, idle models are evicted in the
	// background (drained first, as any eviction) until that much is, so that loads find room
	// without waiting for a drain. Zero: evict only when a load needs room.
	FreeWatermark placement.Memory
	// HalfLife ages the request counts eviction weighs (placement.Frequency): a request
	// counts half as much per HalfLife since it was made. Zero: never aged.
	HalfLife time.Duration
	// Concurrency bounds the requests one replica runs at once; more wait for a slot, in
	// arrival order, for as long as their deadline allows (the wait is the replica's queue
	// in its Demand). Zero: no bound.
	Concurrency int
	// DemandWindow is the time constant of each replica's Demand (exponential averages of
	// its requests in flight, queued, and arriving). Zero: the figures at the moment.
	DemandWindow time.Duration
	// TracerProvider makes the spans of a load's steps (fetch, reservation and evictions,
	// backend load), children of the caller's span; nil: no spans.
	TracerProvider trace.TracerProvider
}

// Spec is what a load needs to know about a model.
type Spec struct {
	Model placement.ModelVersion
	// Storage says where the model's files are.
	Storage storage.Location
	// DeclaredBytes, when > 0, is counted as the model's size whatever is measured: GPU
	// memory on a worker with GPUs, host memory on one without.
	DeclaredBytes int64
	// Learned, when not zero, was measured at an earlier load and is reserved before this one.
	Learned placement.Footprint
	Pinned  bool
	// Format is the model's format as the registry names it; empty: whatever the runtime
	// reads. One the runtime does not read fails the load with ErrFormat.
	Format string
	// Extra marks a copy beyond the model's first, added because its demand grew (ext_proc's
	// scaler): it loads only into memory that is free with the free watermark kept, evicting
	// nothing, and is the first replica to go under memory pressure, busy or not (it drains
	// first, as any eviction). A load without Extra of a resident extra replica makes it a
	// replica like any other.
	Extra bool
}

// Replica is a snapshot of one resident model version.
type Replica struct {
	Model  placement.ModelVersion
	State  placement.State
	Memory placement.Memory
	// GPU is the device the replica was placed on, -1 for none.
	GPU      int
	Source   placement.SizeSource
	Since    time.Time
	LastUsed time.Time
	InFlight int
	Pinned   bool
	Extra    bool
	// Demand is what the replica was asked to serve over the demand window.
	Demand placement.Demand
}

// LoadResult is what Load did.
type LoadResult struct {
	Replica Replica
	Evicted []placement.ModelVersion
	// Loaded is false when the model was already resident or the caller joined a load
	// another caller started.
	Loaded bool
}

type replica struct {
	model    placement.ModelVersion
	state    placement.State
	mem      placement.Memory
	gpu      int
	source   placement.SizeSource
	pinned   bool
	since    time.Time
	lastUsed time.Time
	// handout protects the requests on their way here that the worker has not seen yet.
	handout  handout
	inFlight int
	// extra: a copy added for demand (Spec.Extra).
	extra bool
	// slots bounds the requests running at once (Config.Concurrency); nil: no bound.
	slots chan struct{}
	// busy counts the requests in flight and queued those waiting for a slot, averaged;
	// arrivals counts requests with the rate's ageing. They make the replica's Demand.
	busy, queued placement.Level
	arrivals     placement.Frequency
	readyAt      time.Time
	meta         tensor.Metadata
	// requests counts uses since the load, aged; clock is the eviction clock at the last
	// use; loadTime what the load took (fetch and runtime, no waits). Eviction weighs them.
	requests placement.Frequency
	clock    float64
	loadTime time.Duration
	// roomWait is how long the load waited for room (victims draining); load goroutine only.
	roomWait time.Duration
	// closing stops new requests; set when the replica is about to unload.
	closing bool
	// freeing: draining, its memory counted in Agent.freeing until it is forgotten.
	freeing bool
	// done is closed when the load ends; err and evicted are its outcome.
	done    chan struct{}
	err     error
	evicted []placement.ModelVersion
	// idle is closed by the request that leaves a closing replica with none in flight.
	idle chan struct{}
	// gone is closed once the replica is unloaded and forgotten.
	gone chan struct{}
}

// snapshot is r at now, its demand averaged over window.
func (r *replica) snapshot(now time.Time, window time.Duration) Replica {
	return Replica{Model: r.model, State: r.state, Memory: r.mem, GPU: r.gpu, Source: r.source, Since: r.since,
		LastUsed: r.lastUsed, InFlight: r.inFlight, Pinned: r.pinned, Extra: r.extra,
		Demand: placement.Demand{InFlight: r.busy.Mean(now, window), Queued: r.queued.Mean(now, window),
			Rate: placement.Rate(r.arrivals, now, window)}}
}

// Agent owns the models of one worker. All methods are safe for concurrent use. Loads run on
// goroutines the agent owns; Close stops them and unloads everything.
type Agent struct {
	cfg     Config
	backend Backend
	store   Fetcher
	router  Router
	log     *slog.Logger
	metrics *Metrics
	tracer  trace.Tracer
	now     func() time.Time

	loadSem chan struct{}
	quit    chan struct{}
	// loads counts the goroutines the agent owns: loads, drains and evictions, the headroom
	// loop. Close waits for them.
	loads   sync.WaitGroup
	changed chan struct{}
	// pressure wakes the headroom loop after memory was taken.
	pressure chan struct{}

	// mu guards everything below. Memory decisions (reservations, the choice of victims) are
	// taken under it and never wait under it.
	mu       sync.Mutex
	replicas map[placement.ModelVersion]*replica
	// used is what the replicas hold, reservations of loads under way included; within
	// Capacity in every dimension. freeing is the part of it held by draining replicas,
	// which unload soon; promised is room promised to loads waiting for their victims to
	// unload, not yet in used. used - freeing + promised (outlook) stays within Capacity too,
	// so a load that takes free memory never takes what a drain frees for another.
	used     placement.Memory
	freeing  placement.Memory
	promised placement.Memory
	// freed is closed, and replaced, whenever used falls: loads waiting for room look again.
	freed chan struct{}
	// clock is the eviction policy's clock (placement.RaiseClock).
	clock  float64
	closed bool
}

// New returns an agent; router may be nil (a worker outside a mesh), metrics may be nil in
// tests.
func New(cfg Config, backend Backend, store Fetcher, router Router, log *slog.Logger, metrics *Metrics) *Agent {
	if cfg.LoadConcurrency < 1 {
		cfg.LoadConcurrency = 1
	}
	if metrics == nil {
		metrics = NewMetrics(nil, 0)
	}
	for _, d := range cfg.Capacity.Dimensions() {
		metrics.capacity.WithLabelValues(d.Name).Set(float64(d.Bytes))
		metrics.used.WithLabelValues(d.Name) // 0 until the first load
	}
	tp := cfg.TracerProvider
	if tp == nil {
		tp = noop.NewTracerProvider()
	}
	a := &Agent{
		cfg: cfg, backend: backend, store: store, router: router, log: log, metrics: metrics, now: time.Now,
		tracer:   tp.Tracer("github.com/modelmesh/mesh/runtime-worker/agent"),
		loadSem:  make(chan struct{}, cfg.LoadConcurrency),
		quit:     make(chan struct{}),
		changed:  make(chan struct{}, 1),
		pressure: make(chan struct{}, 1),
		freed:    make(chan struct{}),
		replicas: make(map[placement.ModelVersion]*replica),
	}
	metrics.watch(a)
	if !cfg.FreeWatermark.IsZero() {
		a.loads.Add(1)
		go a.keepHeadroom()
	}
	return a
}

// Runtime names the backend's runtime.
func (a *Agent) Runtime() string { return a.backend.Runtime() }

// Capacity is the memory budget.
func (a *Agent) Capacity() placement.Memory { return a.cfg.Capacity }

// Changed receives a value after any change of replica state or memory use; several changes
// may coalesce into one value. Readers take a Snapshot after each.
func (a *Agent) Changed() <-chan struct{} { return a.changed }

// Republish asks for the worker's state to be written again soon (Changed): for a change the
// agent cannot see, such as its model server answering again, which changes what the
// runtime reads.
func (a *Agent) Republish() { a.notify() }

func (a *Agent) notify() {
	select {
	case a.changed <- struct{}{}:
	default:
	}
}

// Snapshot returns every replica and the memory in use, loading reservations included.
func (a *Agent) Snapshot() ([]Replica, placement.Memory) {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]Replica, 0, len(a.replicas))
	now := a.now()
	for _, r := range a.replicas {
		out = append(out, r.snapshot(now, a.cfg.DemandWindow))
	}
	return out, a.used
}

// Close cancels running loads, finishes drains, and unloads every model; once ctx ends it
// stops waiting for requests in flight. Loads and requests after Close fail with ErrClosed
// or ErrNotFound.
func (a *Agent) Close(ctx context.Context) {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return
	}
	a.closed = true
	a.mu.Unlock()
	close(a.quit)
	// Loads end at once (quit cancels them); a drain waits for its requests, which ctx bounds.
	finished := make(chan struct{})
	go func() { a.loads.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-ctx.Done():
		a.log.WarnContext(ctx, "shutdown: drains still waiting for requests in flight; unloading anyway", "error", ctx.Err())
	}
	a.mu.Lock()
	rest := make([]*replica, 0, len(a.replicas))
	for _, r := range a.replicas {
		rest = append(rest, r)
	}
	a.mu.Unlock()
	for _, r := range rest {
		a.closeAndWait(ctx, r)
		a.mu.Lock()
		busy := r.inFlight
		a.mu.Unlock()
		if busy > 0 {
			// Out of time with requests still running on it: releasing the runtime's model
			// under them could crash the process, which is about to exit anyway.
			a.log.WarnContext(ctx, "shutdown: left loaded, requests still in flight", "model", r.model.String(), "in_flight", busy)
			continue
		}
		a.unload(ctx, r, "shutdown", nil)
	}
}

// updateGauges refreshes the memory and state gauges; caller holds a.mu.
func (a *Agent) updateGauges() {
	for i, d := range a.cfg.Capacity.Dimensions() {
		used := a.used.Host
		if i > 0 {
			used = a.used.Device(i - 1)
		}
		a.metrics.used.WithLabelValues(d.Name).Set(float64(used))
	}
	counts := map[placement.State]int{}
	for _, r := range a.replicas {
		counts[r.state]++
	}
	for _, s := range []placement.State{placement.StateLoading, placement.StateReady, placement.StateDraining} {
		a.metrics.models.WithLabelValues(s.String()).Set(float64(counts[s]))
	}
}
