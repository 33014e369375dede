package agent

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/runtime-worker/storage"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

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
	if caps := a.backend.Capabilities(); spec.Format != "" && !caps.Reads(spec.Format) {
		if len(caps.Formats) == 0 { // a model server that is not answering
			return LoadResult{}, fmt.Errorf("load %s: %w: %s reads no format now", spec.Model, ErrRuntimeDown, a.backend.Runtime())
		}
		return LoadResult{}, fmt.Errorf("load %s: %w: %s reads %s, not %s", spec.Model, ErrFormat, a.backend.Runtime(), strings.Join(caps.Formats, ", "), spec.Format)
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
		r = &replica{model: spec.Model, state: placement.StateLoading, gpu: -1, pinned: spec.Pinned && !spec.Extra, extra: spec.Extra,
			since: a.now(), done: make(chan struct{}), gone: make(chan struct{})}
		if a.cfg.Concurrency > 0 {
			r.slots = make(chan struct{}, a.cfg.Concurrency)
		}
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
	if !spec.Extra {
		// A later caller may pin a model someone else loaded, and make an extra copy one
		// like any other.
		r.pinned = r.pinned || spec.Pinned
		r.extra = false
	}
	res := LoadResult{Replica: r.snapshot(a.now(), a.cfg.DemandWindow), Loaded: !exists}
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
	loaded, err := a.backend.Load(bctx, spec.Model, Files{Path: fetched.Path, Format: spec.Format, GPU: gpu})
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
