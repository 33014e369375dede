package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
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
	readyAt  time.Time
	meta     tensor.Metadata
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

func (r *replica) snapshot() Replica {
	return Replica{Model: r.model, State: r.state, Memory: r.mem, GPU: r.gpu, Source: r.source, Since: r.since,
		LastUsed: r.lastUsed, InFlight: r.inFlight, Pinned: r.pinned}
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
	for _, r := range a.replicas {
		out = append(out, r.snapshot())
	}
	return out, a.used
}

// Load makes spec.Model resident and ready, or joins the load already running for it.
// Blocks until the model is ready, the load fails, or ctx ends; a load outlives its first
// caller's ctx (other callers may be waiting on it) and is bounded by Config.LoadTimeout.
func (a *Agent) Load(ctx context.Context, spec Spec) (LoadResult, error) {
	if err := spec.Model.Validate(); err != nil {
		return LoadResult{}, err
	}
	if spec.Model.Version == "" {
		return LoadResult{}, fmt.Errorf("%w: a load needs a model version", placement.ErrInvalidID)
	}
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return LoadResult{}, ErrClosed
	}
	r, exists := a.replicas[spec.Model]
	if exists && (r.state == placement.StateDraining || r.closing) {
		// Evicted or drained while still wanted: let the retirement finish, then load again.
		a.mu.Unlock()
		select {
		case <-r.gone:
			return a.Load(ctx, spec)
		case <-ctx.Done():
			return LoadResult{}, fmt.Errorf("load %s: waiting for its drain to end: %w", spec.Model, ErrDraining)
		}
	}
	if !exists {
		r = &replica{model: spec.Model, state: placement.StateLoading, gpu: -1, pinned: spec.Pinned, since: a.now(), done: make(chan struct{}), gone: make(chan struct{})}
		a.replicas[spec.Model] = r
		a.loads.Add(1)
		go a.runLoad(context.WithoutCancel(ctx), r, spec)
	}
	a.mu.Unlock()
	if !exists {
		a.notify()
	}

	select {
	case <-r.done:
	case <-ctx.Done():
		return LoadResult{}, fmt.Errorf("wait for load of %s: %w", spec.Model, ctx.Err())
	}
	if r.err != nil {
		return LoadResult{}, r.err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	// Whoever asked for the model is about to send it requests.
	r.lastUsed, r.handout, r.clock = a.now(), handout{at: a.now()}, a.clock
	if spec.Pinned && !r.pinned {
		r.pinned = true // a later caller may pin a model someone else loaded
	}
	res := LoadResult{Replica: r.snapshot(), Loaded: !exists}
	if !exists {
		res.Evicted = r.evicted
	}
	return res, nil
}

// runLoad performs one load for every caller waiting on r.done.
func (a *Agent) runLoad(ctx context.Context, r *replica, spec Spec) {
	defer a.loads.Done()
	ctx, cancel := context.WithTimeout(ctx, a.cfg.LoadTimeout)
	defer cancel()
	go func() {
		select {
		case <-a.quit:
			cancel()
		case <-ctx.Done():
		}
	}()
	start := a.now()
	log := a.log.With("model", spec.Model.Name, "version", spec.Model.Version)

	err := a.load(ctx, r, spec)
	elapsed := a.now().Sub(start)
	a.metrics.loadDuration.Observe(elapsed.Seconds())
	if err != nil {
		a.metrics.loads.WithLabelValues(loadResult(err)).Inc()
		a.mu.Lock()
		delete(a.replicas, r.model)
		a.used = a.used.Minus(r.mem)
		a.roomFreed()
		a.updateGauges()
		a.mu.Unlock()
		r.err = err
		close(r.done)
		close(r.gone)
		a.notify()
		log.WarnContext(ctx, "model load failed", "error", err, "duration_ms", elapsed.Milliseconds())
		return
	}
	a.metrics.loads.WithLabelValues("ok").Inc()
	close(r.done)
	a.notify()
	a.squeezed() // the new replica may be evicted for headroom once it is idle
	log.InfoContext(ctx, "model loaded", "memory", r.mem.String(), "gpu", r.gpu, "size_source", string(r.source),
		"duration_ms", elapsed.Milliseconds(), "load_ms", r.loadTime.Milliseconds(), "room_wait_ms", r.roomWait.Milliseconds(), "evicted", len(r.evicted))
}

func (a *Agent) load(ctx context.Context, r *replica, spec Spec) error {
	// The files are fetched before a load slot is taken: a download from a slow or hung
	// store must not hold up loads whose files are at hand.
	fctx, span := a.tracer.Start(ctx, "worker.fetch", trace.WithAttributes(attribute.String("mesh.storage", spec.Storage.String())))
	start := a.now()
	fetched, err := a.store.Fetch(fctx, spec.Storage, spec.Model)
	own := a.now().Sub(start) // the load's own time: fetch and runtime, not the waits between
	span.SetAttributes(attribute.Int64("mesh.file_bytes", fetched.Bytes), attribute.Bool("mesh.disk_cache_hit", fetched.Cached))
	endSpan(span, err)
	if err != nil {
		return fmt.Errorf("load %s: %w", spec.Model, err)
	}
	defer fetched.Release() // the runtime has read (or copied) the files once Load returns
	// Room first, then a load slot: a load waiting for its victims to drain must not keep
	// loads that have room from the runtime.
	want, source := a.reservation(spec, fetched.Bytes)
	roomStart := a.now()
	evicted, err := a.tracedReserve(ctx, r, a.choices(want), string(source))
	r.roomWait = a.now().Sub(roomStart)
	if err != nil {
		return fmt.Errorf("load %s (%s, %s): %w", spec.Model, want.On(-1).String(), source, err)
	}
	a.mu.Lock()
	r.source = source
	r.evicted = evicted
	reserved, gpu := r.mem, r.gpu
	a.mu.Unlock()
	select {
	case a.loadSem <- struct{}{}:
		defer func() { <-a.loadSem }()
	case <-ctx.Done():
		return fmt.Errorf("load %s: waiting for a load slot: %w", spec.Model, ctx.Err())
	}

	bctx, span := a.tracer.Start(ctx, "worker.backend_load", trace.WithAttributes(
		attribute.String("mesh.runtime", a.backend.Runtime()), attribute.Int("mesh.gpu", gpu)))
	start = a.now()
	loaded, err := a.backend.Load(bctx, spec.Model, fetched.Path, gpu)
	own += a.now().Sub(start)
	span.SetAttributes(attribute.String("mesh.measured", loaded.Memory.String()))
	endSpan(span, err)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("load %s: %w", spec.Model, ctx.Err())
		}
		return fmt.Errorf("load %s: %w: %v", spec.Model, ErrLoadFailed, err)
	}
	final := reserved
	if spec.DeclaredBytes == 0 && !loaded.Memory.IsZero() {
		final, source = loaded.Memory, placement.SizeMeasured
		if final.GPUTotal() == 0 && final.Host < fetched.Bytes {
			// A host-memory model holds at least its weights; resident-memory growth can read
			// lower when a small model fits in memory the process had already mapped.
			final.Host = fetched.Bytes
		}
	}
	if more := final.Minus(reserved).Positive(); !more.IsZero() {
		extra, err := a.tracedReserve(ctx, r, []choice{{gpu: gpu, mem: more}}, "measured")
		if err != nil {
			if uerr := a.backend.Unload(context.WithoutCancel(ctx), spec.Model); uerr != nil {
				a.log.WarnContext(ctx, "unload a model that did not fit", "model", spec.Model.String(), "error", uerr)
			}
			return fmt.Errorf("load %s: measured %s at load, %s reserved: %w", spec.Model, final, reserved, err)
		}
		evicted = append(evicted, extra...)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.used = a.used.Minus(r.mem).Plus(final) // release what was reserved and not needed
	a.roomFreed()                            // what the load did not need
	r.mem, r.source, r.evicted, r.meta = final, source, evicted, loaded.Metadata
	r.state = placement.StateReady
	r.since, r.lastUsed, r.handout, r.clock, r.loadTime = a.now(), a.now(), handout{at: a.now()}, a.clock, own
	r.readyAt = r.since
	a.updateGauges()
	return nil
}

// tracedReserve is reserve as the span worker.reserve (what it reserves, the figure's
// source, what it evicted), each eviction a child span.
func (a *Agent) tracedReserve(ctx context.Context, r *replica, choices []choice, source string) ([]placement.ModelVersion, error) {
	ctx, span := a.tracer.Start(ctx, "worker.reserve", trace.WithAttributes(
		attribute.String("mesh.reserve", choices[0].mem.String()), attribute.String("mesh.size_source", source)))
	evicted, err := a.reserve(ctx, r, choices)
	span.SetAttributes(attribute.Int("mesh.evicted", len(evicted)))
	endSpan(span, err)
	return evicted, err
}

// endSpan ends span, marking it failed when err is not nil.
func endSpan(span trace.Span, err error) {
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// reservation picks the memory to reserve before loading, and where the figure comes from:
// the rule placement uses (placement.Size.On), else the files' size times the estimate
// factor, placed as a declared size would be.
func (a *Agent) reservation(spec Spec, fileBytes int64) (placement.Footprint, placement.SizeSource) {
	gpus := len(a.cfg.Capacity.GPU) > 0
	if f, source := (placement.Size{Declared: spec.DeclaredBytes, Learned: spec.Learned}).On(gpus); source != "" {
		return f, source
	}
	return placement.Bytes(int64(math.Ceil(float64(fileBytes)*a.cfg.EstimateFactor)), gpus), placement.SizeEstimated
}

// handout is a replica's last hand-out: a moment after which requests may be on their way
// to it that the worker has not seen. The mesh confirms a replica with a Load before it sends
// it a cold request (and the requests waiting for a load are sent when it ends); a runtime
// serving on its own port (Triton) reports uses the worker never sees. Requests through the
// worker are counted in flight once they arrive, and those the gateway routes here are
// waited for by the drain; a hand-out's are covered by this.
type handout struct {
	at time.Time
	// arrived is when the first request after it came through the worker; zero: none yet.
	arrived time.Time
}

const (
	// handoutSpread bounds how much later than the first the other requests of one hand-out
	// arrive, in multiples of the first one's way here: they were sent together (ext_proc
	// answers every request waiting for a load at once).
	handoutSpread = 4
	// minHandoutWait is the least a hand-out protects a replica once its first request came.
	minHandoutWait = 10 * time.Millisecond
)

// arrive records a request through the worker at time t.
func (h handout) arrive(t time.Time) handout {
	if !h.at.IsZero() && h.arrived.IsZero() {
		h.arrived = t
	}
	return h
}

// protects reports whether the replica must not be evicted at now: within limit of the
// hand-out, until its first request has come through the worker and handoutSpread times
// that request's way here (at least minHandoutWait) has passed since. A runtime's own use
// (no request through the worker) protects for the whole limit.
func (h handout) protects(now time.Time, limit time.Duration) bool {
	end := h.at.Add(limit)
	if !h.arrived.IsZero() {
		end = minTime(end, h.arrived.Add(max(minHandoutWait, handoutSpread*h.arrived.Sub(h.at))))
	}
	return now.Before(end)
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// choice is one way to reserve memory for a load: on GPU device gpu (-1: host only).
type choice struct {
	gpu int
	mem placement.Memory
}

// choices lists where f may go: on a worker with GPUs, on each device, even when f was
// learned without GPU memory (measured on a worker without GPUs, the model would take one
// here: the runtime is told the device, so it does not spread over all of them); else in
// host memory.
func (a *Agent) choices(f placement.Footprint) []choice {
	if len(a.cfg.Capacity.GPU) == 0 {
		return []choice{{gpu: -1, mem: f.On(-1)}}
	}
	out := make([]choice, len(a.cfg.Capacity.GPU))
	for d := range out {
		out[d] = choice{gpu: d, mem: f.On(d)}
	}
	return out
}

// reserve adds one of the choices to r's share of the budget. Memory that is free now, and
// not promised to another load, is taken at once: the fitting choice on the device with the
// most free memory. Else, if the drains under way will free enough, the load waits for them.
// Else idle models are evicted in eviction order (placement.ChooseEvictions): the choice
// that evicts the fewest bytes, then the one whose victims are worth least, then the device
// with the most free memory. The victims drain on goroutines of their own with their memory
// promised to r, and the load waits until they are gone. Busy models are waited for (within
// ctx) as long as evicting every unpinned model would make room at all; if even that cannot,
// nothing changes and it returns ErrNoCapacity. No lock is held while waiting, so a load that
// fits never waits behind one that waits for a drain.
func (a *Agent) reserve(ctx context.Context, r *replica, choices []choice) ([]placement.ModelVersion, error) {
	if !slices.ContainsFunc(choices, func(c choice) bool { return c.mem.Within(a.cfg.Capacity) }) {
		return nil, fmt.Errorf("%w: needs %s, the worker's whole budget is %s", ErrNoCapacity, choices[0].mem, a.cfg.Capacity)
	}
	var promise *choice // set once victims drain for this load
	var evicted []placement.ModelVersion
	for {
		a.mu.Lock()
		if a.closed {
			a.breakPromise(promise)
			a.mu.Unlock()
			return nil, ErrClosed
		}
		if c, ok := a.takeable(choices, promise); ok {
			a.breakPromise(promise) // kept: the promised room turns into used
			r.mem, r.gpu = r.mem.Plus(c.mem), c.gpu
			a.used = a.used.Plus(c.mem)
			a.updateGauges()
			a.mu.Unlock()
			a.notify()
			a.squeezed()
			return evicted, nil
		}
		if promise == nil && !a.drainsWillFree(choices) {
			victims, best, possible := a.chooseVictims(choices)
			if best >= 0 {
				promise = &choice{gpu: choices[best].gpu, mem: choices[best].mem}
				a.promised = a.promised.Plus(promise.mem)
				for _, v := range victims {
					a.startEviction(ctx, v, r.model)
					evicted = append(evicted, v.Model)
				}
				a.updateGauges()
				a.mu.Unlock()
				a.notify()
				continue
			}
			if !possible {
				free := a.cfg.Capacity.Minus(a.used)
				a.mu.Unlock()
				return nil, fmt.Errorf("%w: needs %s, %s free and not enough unpinned models to evict", ErrNoCapacity, choices[0].mem, free)
			}
		}
		wake, free := a.freed, a.cfg.Capacity.Minus(a.used)
		a.mu.Unlock()
		select {
		case <-ctx.Done():
			a.mu.Lock()
			a.breakPromise(promise) // its victims still go: the room they leave is free for any load
			a.mu.Unlock()
			if promise != nil {
				return nil, fmt.Errorf("%w: needs %s, %s free, and the models evicted for it were still draining: %w", ErrNoCapacity, choices[0].mem, free, ctx.Err())
			}
			return nil, fmt.Errorf("%w: needs %s, %s free, and the models that could make room stayed busy: %w", ErrNoCapacity, choices[0].mem, free, ctx.Err())
		case <-wake:
		case <-time.After(20 * time.Millisecond): // busy models turn idle, recent ones old enough
		}
	}
}

// outlook is the memory in use once the drains under way end and the loads waiting for them
// take what was promised; caller holds a.mu.
func (a *Agent) outlook() placement.Memory { return a.used.Minus(a.freeing).Plus(a.promised) }

// takeable picks the choice to reserve now, if any: for a load holding a promise, its own
// choice once it fits in free memory; for any other, one that fits in free memory and leaves
// what is promised to others, on the device with the most free memory. Caller holds a.mu.
func (a *Agent) takeable(choices []choice, promise *choice) (choice, bool) {
	if promise != nil {
		return *promise, a.used.Plus(promise.mem).Within(a.cfg.Capacity)
	}
	best := -1
	for i, c := range choices {
		if a.used.Plus(c.mem).Within(a.cfg.Capacity) && a.outlook().Plus(c.mem).Within(a.cfg.Capacity) &&
			(best < 0 || a.free(c.gpu) > a.free(choices[best].gpu)) {
			best = i
		}
	}
	if best < 0 {
		return choice{}, false
	}
	return choices[best], true
}

// drainsWillFree reports whether one of the choices fits once the drains under way end;
// caller holds a.mu.
func (a *Agent) drainsWillFree(choices []choice) bool {
	return slices.ContainsFunc(choices, func(c choice) bool { return a.outlook().Plus(c.mem).Within(a.cfg.Capacity) })
}

// breakPromise takes back the room promised to a load (nil: none); caller holds a.mu.
func (a *Agent) breakPromise(promise *choice) {
	if promise != nil {
		a.promised = a.promised.Minus(promise.mem)
	}
}

// chooseVictims picks, over the choices, the evictions that make room for one: best is its
// index, -1 when no choice can be made room for now. possible reports whether evicting every
// unpinned model would make room for one of them. Caller holds a.mu.
func (a *Agent) chooseVictims(choices []choice) (victims []placement.Candidate, best int, possible bool) {
	cands, reclaimable := a.candidates()
	best = -1
	for i, c := range choices {
		need := a.outlook().Plus(c.mem).Minus(a.cfg.Capacity)
		possible = possible || reclaimable.Covers(need)
		if placement.WaitsForRecent(cands, need) {
			continue // the model to go was just handed out: wait for it, not for a better one
		}
		v, ok := placement.ChooseEvictions(cands, need)
		if ok && (best < 0 || a.better(c, v, choices[best], victims)) {
			best, victims = i, v
		}
	}
	return victims, best, possible
}

// candidates is every replica as eviction sees it, and the memory eviction could ever take:
// that of ready, unpinned replicas (draining ones already count as freed). Caller holds a.mu.
func (a *Agent) candidates() ([]placement.Candidate, placement.Memory) {
	now := a.now()
	cands := make([]placement.Candidate, 0, len(a.replicas))
	var reclaimable placement.Memory
	for _, o := range a.replicas {
		if o.closing {
			continue
		}
		cands = append(cands, placement.Candidate{Model: o.model, State: o.state, Memory: o.mem,
			LastUsed: o.lastUsed, InFlight: o.inFlight, Pinned: o.pinned, Recent: o.handout.protects(now, a.cfg.MinIdle),
			Requests: o.requests.At(now, a.cfg.HalfLife), LoadTime: o.loadTime, Clock: o.clock})
		if !o.pinned && o.state == placement.StateReady {
			reclaimable = reclaimable.Plus(o.mem)
		}
	}
	return cands, reclaimable
}

// startEviction marks the chosen replica draining (its memory freeing), raises the eviction
// clock to its priority, and drains and unloads it on a goroutine the agent owns. forModel
// is the load it makes room for, zero for headroom. Caller holds a.mu, and the agent is not
// closed.
func (a *Agent) startEviction(ctx context.Context, v placement.Candidate, forModel placement.ModelVersion) {
	d := a.replicas[v.Model]
	// Draining: reported so the mesh stops routing here, still serving what arrives.
	d.state, d.since = placement.StateDraining, a.now()
	a.markFreeing(d)
	a.clock = placement.RaiseClock(a.clock, []placement.Candidate{v})
	a.loads.Add(1)
	// The drain outlives the load's context: once chosen it must not be cut short
	// (waitUnrouted is bounded by Config.DrainTimeout, closeAndWait by its requests).
	go a.evict(context.WithoutCancel(ctx), d, v, forModel, d.readyAt)
}

// evict drains d, chosen as v, and unloads it.
func (a *Agent) evict(ctx context.Context, d *replica, v placement.Candidate, forModel placement.ModelVersion, readyAt time.Time) {
	defer a.loads.Done()
	ctx, span := a.tracer.Start(ctx, "worker.evict", trace.WithAttributes(
		attribute.String("mesh.model", v.Model.Name), attribute.String("mesh.version", v.Model.Version)))
	a.waitUnrouted(ctx, d, readyAt)
	a.closeAndWait(ctx, d)
	// Counted and logged before the memory is released: the load waiting for it may return
	// at once, and what it reports must include this eviction.
	a.unload(ctx, d, "evict", func() {
		span.End()
		a.metrics.evictions.Inc()
		why := forModel.String()
		if forModel.Name == "" {
			a.metrics.headroomEvictions.Inc()
			why = "headroom"
		}
		a.metrics.evictedAge.Observe(a.now().Sub(v.LastUsed).Seconds())
		a.log.InfoContext(ctx, "model evicted", "model", v.Model.Name, "version", v.Model.Version,
			"memory", v.Memory.String(), "idle_ms", a.now().Sub(v.LastUsed).Milliseconds(), "requests", v.Requests,
			"priority", v.Priority(), "for", why)
	})
}

// markFreeing counts a draining replica's memory as soon free; caller holds a.mu.
func (a *Agent) markFreeing(r *replica) {
	if !r.freeing {
		r.freeing = true
		a.freeing = a.freeing.Plus(r.mem)
	}
}

// roomFreed wakes the loads waiting for room; caller holds a.mu.
func (a *Agent) roomFreed() {
	close(a.freed)
	a.freed = make(chan struct{})
}

// squeezed wakes the headroom loop: memory was taken.
func (a *Agent) squeezed() {
	select {
	case a.pressure <- struct{}{}:
	default:
	}
}

// keepHeadroom keeps Config.FreeWatermark free ahead of demand until the agent closes. Each
// time memory is taken, a load ends, and every 20 ms while it is short of the watermark with
// models that may soon be evicted (busy, or used too recently), it evicts idle models in
// eviction order (placement.ChooseHeadroom: those idle now, even when they cannot make the
// whole watermark) until, once the drains under way end, the watermark will be free. Its
// victims drain as any eviction: out of the gateway's routes before they unload.
func (a *Agent) keepHeadroom() {
	defer a.loads.Done()
	for {
		var retry <-chan time.Time
		if a.makeHeadroom() {
			retry = time.After(20 * time.Millisecond)
		}
		select {
		case <-a.quit:
			return
		case <-a.pressure:
		case <-retry:
		}
	}
}

// makeHeadroom starts the evictions the watermark asks for now. It reports whether the
// worker stays short of the watermark with models that may be evicted later.
func (a *Agent) makeHeadroom() (retry bool) {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return false
	}
	need := a.outlook().Plus(a.cfg.FreeWatermark).Minus(a.cfg.Capacity).Positive()
	if need.IsZero() {
		a.mu.Unlock()
		return false
	}
	cands, _ := a.candidates()
	victims := placement.ChooseHeadroom(cands, need)
	for _, v := range victims {
		a.startEviction(context.Background(), v, placement.ModelVersion{})
	}
	if len(victims) > 0 {
		a.updateGauges()
	}
	short := !placement.Freed(victims).Covers(need)
	later := slices.ContainsFunc(cands, func(c placement.Candidate) bool {
		return c.State == placement.StateReady && !c.Pinned && !c.Evictable()
	})
	a.mu.Unlock()
	if len(victims) > 0 {
		a.notify()
	}
	return short && later
}

// unload releases a replica that is closing and has nothing in flight, then forgets it;
// before, when not nil, runs between the two.
func (a *Agent) unload(ctx context.Context, r *replica, reason string, before func()) {
	a.mu.Lock()
	current := a.replicas[r.model] == r
	a.mu.Unlock()
	if !current {
		// Lost while it drained: the runtime no longer has it, and a new replica of the same
		// model may be loading; unloading by name would kill that one.
		if before != nil {
			before()
		}
		return
	}
	if err := a.backend.Unload(context.WithoutCancel(ctx), r.model); err != nil {
		a.log.WarnContext(ctx, "backend unload", "model", r.model.String(), "error", err)
	}
	if before != nil {
		before()
	}
	a.forget(ctx, r, reason)
}

// forget removes r from the agent, once: a replica the runtime lost may still be on its
// way through a drain. Its files stay in the disk tier for the next load.
func (a *Agent) forget(ctx context.Context, r *replica, reason string) {
	a.mu.Lock()
	if a.replicas[r.model] != r {
		a.mu.Unlock()
		return
	}
	delete(a.replicas, r.model)
	a.used = a.used.Minus(r.mem)
	if r.freeing {
		a.freeing = a.freeing.Minus(r.mem)
	}
	a.roomFreed()
	a.updateGauges()
	a.mu.Unlock()
	close(r.gone)
	a.metrics.unloads.WithLabelValues(reason).Inc()
	a.notify()
}

// Touch records a use the runtime saw itself (Triton serves inference without the worker):
// the model's last use moves forward to at, never back, and counts as one request for
// eviction (the runtime reports the last use, not how many there were).
func (a *Agent) Touch(m placement.ModelVersion, at time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if r := a.replicas[m]; r != nil && at.After(r.lastUsed) {
		r.lastUsed, r.handout, r.clock = at, handout{at: at}, a.clock
		r.requests = r.requests.Add(at, a.cfg.HalfLife)
	}
}

// Lost forgets every loaded replica at once, without asking the runtime to unload: the
// runtime lost them (Triton died or restarted). They leave Redis with the next write, so the
// mesh stops routing to them and loads them again on demand. Loads under way fail on their
// own. It returns what was forgotten.
func (a *Agent) Lost(ctx context.Context) []placement.ModelVersion {
	a.mu.Lock()
	var lost []*replica
	for _, r := range a.replicas {
		if r.state != placement.StateLoading {
			r.closing = true
			lost = append(lost, r)
		}
	}
	a.mu.Unlock()
	out := make([]placement.ModelVersion, 0, len(lost))
	for _, r := range lost {
		a.forget(ctx, r, "runtime_lost")
		out = append(out, r.model)
	}
	return out
}

// Acquire resolves m (an empty version means the newest servable one) to a replica that
// serves requests, ready or draining, and counts one request in flight on it. The caller
// must call the returned release exactly once.
func (a *Agent) Acquire(m placement.ModelVersion) (placement.ModelVersion, tensor.Metadata, func(), error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	r := a.resolve(m, func(r *replica) bool {
		return !r.closing && (r.state == placement.StateReady || r.state == placement.StateDraining)
	})
	if r == nil {
		return m, tensor.Metadata{}, nil, fmt.Errorf("%s: %w", display(m), ErrNotFound)
	}
	r.inFlight++
	r.lastUsed, r.clock = a.now(), a.clock
	r.handout = r.handout.arrive(r.lastUsed)
	r.requests = r.requests.Add(r.lastUsed, a.cfg.HalfLife)
	var once sync.Once
	release := func() {
		once.Do(func() {
			a.mu.Lock()
			defer a.mu.Unlock()
			r.inFlight--
			if r.inFlight == 0 && r.idle != nil {
				close(r.idle)
				r.idle = nil
			}
		})
	}
	return r.model, r.meta, release, nil
}

// Infer runs one request on a resident model, counting it in flight for eviction and drain.
func (a *Agent) Infer(ctx context.Context, req *tensor.Request) (*tensor.Response, error) {
	m, meta, release, err := a.Acquire(req.Model)
	if err != nil {
		return nil, err
	}
	defer release()
	if err := meta.Check(req); err != nil {
		return nil, err
	}
	resp, err := a.backend.Infer(ctx, m, req)
	if err != nil {
		return nil, fmt.Errorf("infer %s: %w", m, err)
	}
	resp.Model, resp.ID = m, req.ID
	return resp, nil
}

// Ready reports whether m (empty version: any version) is loaded and not draining.
func (a *Agent) Ready(m placement.ModelVersion) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.resolve(m, func(r *replica) bool { return r.state == placement.StateReady && !r.closing }) != nil
}

// Metadata describes a servable model version, and lists the versions of its name here.
func (a *Agent) Metadata(m placement.ModelVersion) (placement.ModelVersion, tensor.Metadata, []string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	r := a.resolve(m, func(r *replica) bool { return r.state != placement.StateLoading && !r.closing })
	if r == nil {
		return m, tensor.Metadata{}, nil, fmt.Errorf("%s: %w", display(m), ErrNotFound)
	}
	var versions []string
	for k, o := range a.replicas {
		if k.Name == m.Name && o.state != placement.StateLoading && !o.closing {
			versions = append(versions, k.Version)
		}
	}
	return r.model, r.meta, versions, nil
}

// resolve finds the replica for m among those ok accepts; caller holds a.mu.
func (a *Agent) resolve(m placement.ModelVersion, ok func(*replica) bool) *replica {
	if m.Version != "" {
		if r := a.replicas[m]; r != nil && ok(r) {
			return r
		}
		return nil
	}
	var best *replica
	for k, r := range a.replicas {
		if k.Name == m.Name && ok(r) && (best == nil || placement.NewerVersion(k.Version, best.model.Version)) {
			best = r
		}
	}
	return best
}

// Drain takes m out of service: it is reported draining at once and keeps serving; once the
// mesh no longer routes it here (Router, bounded by Config.DrainTimeout) it stops taking new
// ones, waits for those in flight and unloads. Blocks until the model is gone or ctx ends
// (the drain then goes on).
func (a *Agent) Drain(ctx context.Context, m placement.ModelVersion) error {
	return a.retire(ctx, m, true, "drain")
}

// Unload stops new requests for m at once, waits for those in flight and unloads it.
func (a *Agent) Unload(ctx context.Context, m placement.ModelVersion) error {
	return a.retire(ctx, m, false, "unload")
}

func (a *Agent) retire(ctx context.Context, m placement.ModelVersion, drain bool, reason string) error {
	if err := m.Validate(); err != nil {
		return err
	}
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return ErrClosed
	}
	r := a.replicas[m]
	if r == nil || r.state == placement.StateLoading {
		a.mu.Unlock()
		return fmt.Errorf("%s %s: %w", reason, display(m), ErrNotFound)
	}
	if r.state == placement.StateDraining {
		a.mu.Unlock()
		return fmt.Errorf("%s %s: %w", reason, display(m), ErrDraining)
	}
	r.state, r.since = placement.StateDraining, a.now()
	readyAt := r.readyAt
	a.markFreeing(r)
	a.updateGauges()
	a.loads.Add(1) // the drain outlives ctx; Close waits for it (added under mu: Close sets closed under mu before it waits)
	a.mu.Unlock()
	a.notify()
	done := make(chan struct{})
	go func() {
		defer a.loads.Done()
		defer close(done)
		if drain {
			// No grace after it: the routed set shrinks only once every gateway acknowledged
			// the configuration without this replica, and closeAndWait waits for what is
			// in flight.
			a.waitUnrouted(context.WithoutCancel(ctx), r, readyAt)
		}
		a.closeAndWait(context.WithoutCancel(ctx), r)
		a.unload(context.WithoutCancel(ctx), r, reason, nil)
		a.log.InfoContext(ctx, "model unloaded", "model", m.Name, "version", m.Version, "reason", reason)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%s %s: still draining: %w", reason, m, ctx.Err())
	}
}

// waitUnrouted waits, up to Config.DrainTimeout, until the mesh no longer routes r here, as
// the routed sets say at Config.RouteSettle after r turned ready (readyAt) or later. Without a router
// (a worker outside a mesh) it returns at once; on timeout it logs and returns, since a
// replica must not be held forever by an unreachable control plane.
func (a *Agent) waitUnrouted(ctx context.Context, r *replica, readyAt time.Time) {
	if a.router == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, a.cfg.DrainTimeout)
	defer cancel()
	start := a.now()
	err := a.router.WaitUnrouted(ctx, r.model)
	if early := readyAt.Add(a.cfg.RouteSettle).Sub(a.now()); err == nil && early > 0 {
		// Unrouted so soon after turning ready that a control plane may not have recorded
		// the push that routes it here yet: ask again once any such push would show.
		select {
		case <-time.After(early):
			err = a.router.WaitUnrouted(ctx, r.model)
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	if err != nil {
		a.metrics.drainTimeouts.Inc()
		a.log.WarnContext(ctx, "the mesh still routes a draining model here; unloading anyway", "model", r.model.String(), "error", err)
		return
	}
	a.metrics.drainWait.Observe(a.now().Sub(start).Seconds())
}

// AwaitUnrouted waits until the mesh routes none of the worker's models here any more, each
// wait bounded by Config.DrainTimeout, then Config.DrainGrace for requests already on their
// way. A worker shutting down calls it after its records left Redis and before it stops
// serving, so that no request is sent to a closed port.
func (a *Agent) AwaitUnrouted(ctx context.Context) {
	a.mu.Lock()
	rs := make([]*replica, 0, len(a.replicas))
	readyAt := make([]time.Time, 0, len(a.replicas))
	for _, r := range a.replicas {
		if r.state != placement.StateLoading {
			rs, readyAt = append(rs, r), append(readyAt, r.readyAt)
		}
	}
	a.mu.Unlock()
	if len(rs) == 0 {
		return
	}
	var wg sync.WaitGroup
	for i, r := range rs {
		wg.Go(func() { a.waitUnrouted(ctx, r, readyAt[i]) })
	}
	wg.Wait()
	select {
	case <-time.After(a.cfg.DrainGrace):
	case <-ctx.Done():
	}
}

// closeAndWait stops new requests on r and waits until none is in flight or ctx ends.
func (a *Agent) closeAndWait(ctx context.Context, r *replica) {
	a.mu.Lock()
	r.closing = true
	if r.inFlight == 0 {
		a.mu.Unlock()
		return
	}
	if r.idle == nil {
		r.idle = make(chan struct{})
	}
	idle := r.idle
	a.mu.Unlock()
	select {
	case <-idle:
	case <-ctx.Done():
	}
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

// better reports whether choice c, evicting v, beats choice d, evicting w: fewer bytes
// evicted, then victims worth less (the highest priority among them), then victims less
// recently used, then more free memory on c's device. Caller holds a.mu.
func (a *Agent) better(c choice, v []placement.Candidate, d choice, w []placement.Candidate) bool {
	if fv, fw := placement.Freed(v).Total(), placement.Freed(w).Total(); fv != fw {
		return fv < fw
	}
	if pv, pw := placement.RaiseClock(0, v), placement.RaiseClock(0, w); pv != pw {
		return pv < pw
	}
	if lv, lw := newestUse(v), newestUse(w); !lv.Equal(lw) {
		return lv.Before(lw)
	}
	return a.free(c.gpu) > a.free(d.gpu)
}

// newestUse is the last use of the most recently used of cs (zero for none).
func newestUse(cs []placement.Candidate) time.Time {
	var t time.Time
	for _, c := range cs {
		if c.LastUsed.After(t) {
			t = c.LastUsed
		}
	}
	return t
}

// free is the memory not spoken for on GPU device gpu, or in host memory for -1; caller
// holds a.mu.
func (a *Agent) free(gpu int) int64 {
	if gpu < 0 {
		return a.cfg.Capacity.Host - a.used.Host
	}
	return a.cfg.Capacity.Device(gpu) - a.used.Device(gpu)
}

func display(m placement.ModelVersion) string {
	if m.Version == "" {
		return m.Name
	}
	return m.String()
}

func loadResult(err error) string {
	switch {
	case errors.Is(err, ErrNoCapacity):
		return "no_capacity"
	case storage.Failed(err):
		return "storage"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, ErrLoadFailed):
		return "runtime_error"
	}
	return "error"
}
