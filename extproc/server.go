// Package extproc is the mesh's Envoy ext_proc service on the cold path. For each request
// Envoy sends (headers only) it resolves the model version, routes to a worker that holds it
// ready, or has one worker load it (once for all waiting requests, across every ext_proc
// replica) and holds the request until the load is done.
//
// The package is three layers: handler.go is the ext_proc stream loop and the only place
// Envoy protos appear (with response.go, which turns decisions and errors into
// ProcessingResponses in one function); decide.go is the pure per-request decision; this
// file coordinates loads (in-process coalescing, the Redis lock, waiting).
package extproc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/internal/residency"
)

// Config tunes a Server. Zero durations take the defaults named on each field.
type Config struct {
	// LoadDeadline bounds how long a request is held for a load (default 60s). It must stay
	// below Envoy's max_message_timeout (MaxMessageTimeout).
	LoadDeadline time.Duration
	// MaxWaiting bounds the requests held per model version; more are refused (default 1000).
	MaxWaiting int
	// MaxMessageTimeout is Envoy's max_message_timeout (default 120s): the ceiling of the
	// override_message_timeout sent before holding a request.
	MaxMessageTimeout time.Duration
	// RetryAfter is the Retry-After sent with 503 answers (default 1s, rounded up to seconds).
	RetryAfter time.Duration
	// LockPoll is how often a replica waiting on another's lock checks whether it is gone
	// (default 100ms); readiness itself arrives with residency snapshots.
	LockPoll time.Duration
	// ExtendAfter is how long the confirmation of a ready replica may take before Envoy is
	// asked for more time (default 100ms): the worker's answer is at once for a resident
	// model, but waits out a drain and a reload when the replica is going away.
	ExtendAfter time.Duration
	// Rand returns a uniform number in [0, n); default math/rand/v2.Uint64N.
	Rand func(n uint64) uint64
	// TracerProvider makes the spans of decisions and cold waits; default a no-op one.
	TracerProvider trace.TracerProvider
	// EndLease ends a worker's lease in Redis (residency.EndLease) when its management port
	// refuses connections; nil ends none (the worker then leaves when its lease runs out).
	EndLease func(ctx context.Context, worker string) error
	// RecordLoad, when not nil, is told the outcome of every flight that ended (failure nil:
	// loaded) but those cut short by Close: residency.RecordLoad, which the control plane
	// reads for the status of models that are Kubernetes resources.
	RecordLoad func(ctx context.Context, m placement.ModelVersion, failure *residency.Failure) error
	// Refresh, when not nil, reads the residency state into the view at once; a request for
	// a model the view does not know, or that no worker in the view can take, is decided
	// again after one (at most one every 100 ms, shared by the requests waiting), so that a
	// model registered a moment ago (a new InferenceService), or a worker whose model server
	// just came up, is not refused because an event is still on its way.
	Refresh func(ctx context.Context) error
	// ProbeAfter is how long a Load may run before the worker's liveness is checked, and how
	// often after (default 250ms); ProbeTimeout how long that check waits (default 1s). A
	// hung worker is given up after about both together: a request that fell back from a
	// model cluster must be answered within the gateway's --hot-try-timeout.
	ProbeAfter, ProbeTimeout time.Duration
	// SuspectFor is how long this replica leaves out a worker found unreachable, whatever
	// its snapshot says (default 3s: longer than a heartbeat, so a worker alive after all
	// is back in the snapshot by then).
	SuspectFor time.Duration
}

func (c Config) withDefaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.LoadDeadline, 60*time.Second)
	def(&c.MaxMessageTimeout, 120*time.Second)
	def(&c.ExtendAfter, 100*time.Millisecond)
	def(&c.RetryAfter, time.Second)
	def(&c.LockPoll, 100*time.Millisecond)
	def(&c.SuspectFor, 3*time.Second)
	def(&c.ProbeAfter, 250*time.Millisecond)
	def(&c.ProbeTimeout, time.Second)
	if c.MaxWaiting <= 0 {
		c.MaxWaiting = 1000
	}
	if c.Rand == nil {
		c.Rand = rand.Uint64N
	}
	if c.TracerProvider == nil {
		c.TracerProvider = noop.NewTracerProvider()
	}
	return c
}

// Server is the ext_proc service. Every method is safe for concurrent use. It owns the
// goroutines that run loads; Close cancels them and waits for them.
type Server struct {
	cfg     Config
	view    *View
	loader  Loader
	locks   *Locks
	log     *slog.Logger
	metrics *Metrics
	tracer  trace.Tracer
	// tracing is false with the no-op provider: no trace context is read then.
	tracing bool

	mu       sync.Mutex
	flights  map[placement.ModelVersion]*flight
	closed   bool
	wg       sync.WaitGroup
	suspects suspects
	pending  pending
	// refreshing is closed when the Refresh under way ends; refreshed is when the last one
	// did.
	refreshing chan struct{}
	refreshed  time.Time
}

// minRefresh bounds how often requests refused by the view make it be read again.
const minRefresh = 100 * time.Millisecond

// refresh reads the state again (Config.Refresh), or waits for the read under way; it reports
// whether the view may have changed since the caller looked.
func (s *Server) refresh(ctx context.Context) bool {
	s.mu.Lock()
	if r := s.refreshing; r != nil {
		s.mu.Unlock()
		select {
		case <-r:
			return true
		case <-ctx.Done():
			return false
		}
	}
	if time.Since(s.refreshed) < minRefresh {
		s.mu.Unlock()
		return false
	}
	done := make(chan struct{})
	s.refreshing = done
	s.mu.Unlock()
	rctx, cancel := context.WithTimeout(ctx, time.Second)
	err := s.cfg.Refresh(rctx)
	cancel()
	s.mu.Lock()
	s.refreshing, s.refreshed = nil, time.Now()
	s.mu.Unlock()
	close(done)
	if err != nil {
		s.log.WarnContext(ctx, "read the residency state again for an unknown model", "error", err)
		return false
	}
	return true
}

// flight is one coalesced load of a model version in this replica. Fields other than done
// and cancel are guarded by Server.mu.
type flight struct {
	done    chan struct{}
	cancel  context.CancelFunc
	waiting int
	// Set once, before done is closed.
	finished bool
	worker   residency.Worker
	err      error
}

// New returns a server reading state from view, loading through loader and coordinating
// with other replicas through locks (nil: coalesce within this process only).
func New(cfg Config, view *View, loader Loader, locks *Locks, log *slog.Logger, metrics *Metrics) *Server {
	cfg = cfg.withDefaults()
	return &Server{
		cfg: cfg, view: view, loader: loader, locks: locks, log: log, metrics: metrics,
		tracer:  cfg.TracerProvider.Tracer("github.com/modelmesh/mesh/extproc"),
		tracing: !isNoop(cfg.TracerProvider),
		flights: map[placement.ModelVersion]*flight{},
	}
}

// Answer is a successful handling: send the request to Endpoint.
type Answer struct {
	Outcome  string
	Endpoint string
	// Model is the chosen version (empty for server-level calls).
	Model placement.ModelVersion
}

// Handle decides one request and, when its model must be loaded, holds it until the load
// finished, the load deadline passed or ctx ended. extend is called before any wait that may
// outlast Envoy's message timeout, so the caller can ask Envoy for more time (it may be
// called twice; the caller sends one extension); an error from it ends the handling. Errors
// are *Error values (or ctx's error).
func (s *Server) Handle(ctx context.Context, req Request, extend func() error) (Answer, error) {
	// One deadline for the whole request: the extension asks Envoy for Config.LoadDeadline
	// (and a margin) from when it is sent, which is never before now.
	deadline := time.Now().Add(s.cfg.LoadDeadline)
	d, err := Decide(s.snapshot(), req, s.cfg.Rand)
	if (errors.Is(err, ErrNotRegistered) || errors.Is(err, ErrNoWorker)) && s.cfg.Refresh != nil && s.refresh(ctx) {
		d, err = Decide(s.snapshot(), req, s.cfg.Rand)
	}
	if err != nil {
		return Answer{}, err
	}
	if d.Kind == Route && d.Outcome == "server_level" {
		return Answer{Outcome: d.Outcome, Endpoint: d.Endpoint, Model: d.Model}, nil
	}
	if d.Kind == Route {
		// The snapshot may be a few events behind: the replica may be draining or gone. A
		// Load on its worker confirms it (it returns at once for a resident model), marks it
		// used so it is not evicted while this request travels, and waits out a drain.
		err := s.confirm(ctx, d, extend, deadline)
		if err == nil {
			return Answer{Outcome: d.Outcome, Endpoint: d.Endpoint, Model: d.Model}, nil
		}
		if errors.Is(err, errExtend) {
			return Answer{}, err
		}
		d.Kind = Load
	}
	w, err := s.hold(ctx, d, extend, deadline)
	if err != nil {
		return Answer{}, err
	}
	return Answer{Outcome: "cold_loaded", Endpoint: req.Endpoint(w), Model: d.Model}, nil
}

// errExtend wraps a failure to ask Envoy for more time: the stream is gone.
var errExtend = errors.New("extend envoy's message timeout")

// confirm asks the worker of a ready replica to confirm it. When the answer takes longer than
// Config.ExtendAfter (a draining replica is waited out and loaded again), Envoy is asked for
// more time first, so that it does not give up on the request at its message timeout.
func (s *Server) confirm(ctx context.Context, d Decision, extend func() error, deadline time.Time) error {
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.confirmOn(ctx, d.Worker, d.Target) }()
	timer := time.NewTimer(s.cfg.ExtendAfter)
	defer timer.Stop()
	select {
	case err := <-done:
		return err
	case <-timer.C:
	}
	if err := extend(); err != nil {
		<-done
		return fmt.Errorf("%w: %w", errExtend, err)
	}
	return <-done
}

// confirmOn asks w to confirm a resident replica (a Load, answered at once, or after a
// drain); a worker found gone is suspected.
func (s *Server) confirmOn(ctx context.Context, w residency.Worker, t Target) error {
	err := s.loadOn(ctx, w, t)
	if errors.Is(err, ErrWorkerGone) {
		s.suspect(ctx, w)
	}
	return err
}

// loadOn is the loader's Load on w, watched: while it runs, every Config.ProbeAfter the
// worker's management port is asked for /healthz, which a working worker answers at once
// whatever it is loading. A worker that does not (its process is stopped or wedged: the
// port accepts connections and nothing answers) is given up as gone: the Load is cancelled
// and ErrWorkerGone returned.
func (s *Server) loadOn(ctx context.Context, w residency.Worker, t Target) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.loader.Load(ctx, w, t) }()
	probe := time.NewTicker(s.cfg.ProbeAfter)
	defer probe.Stop()
	for {
		select {
		case err := <-done:
			return err
		case <-probe.C:
			if !answers(ctx, w.MgmtAddr, s.cfg.ProbeTimeout) && ctx.Err() == nil {
				cancel()
				<-done
				return fmt.Errorf("%w: worker %s: its management port %s did not answer /healthz within %s", ErrWorkerGone, w.ID, w.MgmtAddr, s.cfg.ProbeTimeout)
			}
		}
	}
}

// hold joins (or starts) the flight for d's model version and waits for it, as the span
// extproc.cold_wait; a flight it starts runs in that span, so the Load is its child.
func (s *Server) hold(ctx context.Context, d Decision, extend func() error, deadline time.Time) (_ residency.Worker, err error) {
	m := d.Model
	ctx, span := s.tracer.Start(ctx, "extproc.cold_wait", trace.WithAttributes(
		attribute.String("mesh.model", m.Name), attribute.String("mesh.version", m.Version)))
	defer func() {
		if err != nil {
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return residency.Worker{}, errorf(ErrLoadFailed, "ext_proc is shutting down")
	}
	f := s.flights[m]
	if f != nil && f.finished {
		// A finished flight is not reused: its replica may have been evicted since; a new
		// flight confirms residency with the worker (at once when it is resident).
		delete(s.flights, m)
		f = nil
	}
	switch {
	case f == nil:
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.LoadDeadline)
		f = &flight{done: make(chan struct{}), cancel: cancel}
		s.flights[m] = f
		s.wg.Add(1)
		go s.fly(fctx, f, d)
	case f.waiting >= s.cfg.MaxWaiting:
		s.mu.Unlock()
		return residency.Worker{}, errorf(ErrQueueFull, "%d requests already wait for model %s", s.cfg.MaxWaiting, m)
	default:
		s.metrics.coalesced.Inc()
		span.SetAttributes(attribute.Bool("mesh.coalesced", true))
	}
	f.waiting++
	s.metrics.held.Inc()
	s.mu.Unlock()
	defer func() {
		s.metrics.held.Dec()
		s.mu.Lock()
		f.waiting--
		s.mu.Unlock()
	}()

	start := time.Now()
	w, err := s.wait(ctx, f, deadline, extend)
	result := "ok"
	if err != nil {
		result = "error"
	}
	s.metrics.coldWait.WithLabelValues(result).Observe(time.Since(start).Seconds())
	return w, err
}

func (s *Server) wait(ctx context.Context, f *flight, deadline time.Time, extend func() error) (residency.Worker, error) {
	select {
	case <-f.done:
	default:
		if err := extend(); err != nil {
			return residency.Worker{}, err
		}
		timer := time.NewTimer(time.Until(deadline))
		defer timer.Stop()
		select {
		case <-f.done:
		case <-timer.C:
			return residency.Worker{}, errorf(ErrDeadline, "model not ready within %s", s.cfg.LoadDeadline)
		case <-ctx.Done():
			return residency.Worker{}, ctx.Err()
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return f.worker, f.err
}

// fly runs one flight to its end on a goroutine the server owns.
func (s *Server) fly(ctx context.Context, f *flight, d Decision) {
	defer s.wg.Done()
	defer f.cancel()
	s.metrics.loadsInFlight.Inc()
	defer s.metrics.loadsInFlight.Dec()
	// What only bookkeeping needs (the load lock's release, the load's record) runs once the
	// waiting requests are answered: it is not on the cold start's path.
	var after []func()
	w, err := s.ensure(ctx, d, &after)
	closing := false
	if err != nil && !errors.As(err, new(*Error)) {
		switch {
		case errors.Is(ctx.Err(), context.DeadlineExceeded):
			err = errorf(ErrDeadline, "model %s not ready within %s", d.Model, s.cfg.LoadDeadline)
		default: // cancelled by Close
			err = errorf(ErrLoadFailed, "load of model %s stopped: ext_proc is shutting down", d.Model)
			closing = true
		}
	}
	result := "ok"
	if err != nil {
		result = "error"
	}
	s.metrics.coldStarts.WithLabelValues(s.metrics.models.Label(d.Model.Name), result).Inc()
	s.mu.Lock()
	f.finished, f.worker, f.err = true, w, err
	if err != nil && s.flights[d.Model] == f {
		delete(s.flights, d.Model) // the next request tries again
	}
	s.mu.Unlock()
	close(f.done)
	for _, fn := range after {
		fn()
	}
	if s.cfg.RecordLoad != nil && !closing {
		s.recordLoad(ctx, d.Model, w, err)
	}
}

// recordLoad tells cfg.RecordLoad how the flight of m ended; a Redis error is logged.
func (s *Server) recordLoad(ctx context.Context, m placement.ModelVersion, w residency.Worker, err error) {
	var failure *residency.Failure
	if err != nil {
		reason := "ModelLoadFailed"
		if errors.Is(err, ErrNoWorker) {
			reason = "RuntimeUnhealthy"
		}
		failure = &residency.Failure{Reason: reason, Message: err.Error(), Worker: w.ID, UnixMs: time.Now().UnixMilli()}
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	if rerr := s.cfg.RecordLoad(rctx, m, failure); rerr != nil {
		s.log.WarnContext(ctx, "record the outcome of a load in redis", "model", m.String(), "error", rerr)
	}
}

// ensure makes d's model ready somewhere and says where: a replica that appeared in the
// snapshot, or the worker this replica loaded it on while holding the fleet-wide lock.
func (s *Server) ensure(ctx context.Context, d Decision, after *[]func()) (residency.Worker, error) {
	log := s.log.With("model", d.Model.String())
	for {
		if w, ok := s.readyNow(d.Model); ok {
			if err := s.confirmOn(ctx, w, d.Target); err == nil {
				return w, nil // confirmed resident, and marked used
			}
			// The snapshot's replica is gone (its worker died or is stopping) and the snapshot
			// has not caught up: wait a little rather than spin on it.
			select {
			case <-ctx.Done():
				return residency.Worker{}, ctx.Err()
			case <-time.After(s.cfg.LockPoll):
			}
		}
		if s.locks == nil {
			return s.load(ctx, log, d, nil, after)
		}
		lock, err := s.locks.Acquire(ctx, d.Model)
		if err != nil {
			if ctx.Err() != nil {
				return residency.Worker{}, ctx.Err()
			}
			// Without Redis every replica loads on its own; they all rank workers the same
			// way, so their Loads usually meet on one worker, which coalesces them.
			log.WarnContext(ctx, "load lock unavailable; loading without it", "error", err)
			return s.load(ctx, log, d, nil, after)
		}
		if lock != nil {
			return s.load(ctx, log.With("fence", lock.Generation), d, lock, after)
		}
		s.metrics.lockWaits.Inc()
		log.DebugContext(ctx, "another replica is loading; waiting")
		if err := s.awaitOther(ctx, d.Model); err != nil {
			return residency.Worker{}, err
		}
	}
}

// readyNow picks a ready replica of m from the latest snapshot.
func (s *Server) readyNow(m placement.ModelVersion) (residency.Worker, bool) {
	snap := s.snapshot()
	if snap == nil {
		return residency.Worker{}, false
	}
	return ReadyWorker(snap, m)
}

// awaitOther returns when m is ready in the snapshot or its lock is gone (the other
// replica finished or died), or with ctx's error.
func (s *Server) awaitOther(ctx context.Context, m placement.ModelVersion) error {
	tick := time.NewTicker(s.cfg.LockPoll)
	defer tick.Stop()
	for {
		changed := s.view.Changed()
		if _, ok := s.readyNow(m); ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		case <-tick.C:
			if held, err := s.locks.Held(ctx, m); err == nil && !held {
				return nil
			}
		}
	}
}

// load calls Load on the best candidate, and on the next one once if the first had no
// room. With a lock, it keeps the lock alive while loading and releases it when done. A
// replica that takes the lock right after, its snapshot not yet showing the new replica,
// ranks the same worker first (the ranking is the same everywhere) and its Load there is
// answered at once: releasing at once costs at most a confirmation, never a second load.
func (s *Server) load(ctx context.Context, log *slog.Logger, d Decision, lock *Lock, after *[]func()) (residency.Worker, error) {
	cands := d.Candidates
	if snap := s.snapshot(); snap != nil {
		cands = s.candidates(snap, d.Target)
	}
	if len(cands) == 0 {
		return residency.Worker{}, errorf(ErrNoWorker, "no live worker %s can hold model %s", d.Target.describeRuntime(), d.Model)
	}
	if lock != nil {
		// Released once the flight's requests are answered (fly runs after); kept alive
		// until the load ends, here.
		*after = append(*after, func() {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			defer cancel()
			if _, err := lock.Release(rctx); err != nil {
				log.WarnContext(ctx, "release load lock", "error", err)
			}
		})
		stop := lock.KeepAlive(ctx, s.log)
		defer stop()
	}
	var lastErr error
	tried := 0 // candidates tried that answered: the worker gone does not count
	for _, w := range cands {
		if tried == 2 || (tried == 1 && !errors.Is(lastErr, ErrNoRoom)) {
			break
		}
		start := time.Now()
		done := s.pending.start(w.ID)
		err := s.loadOn(ctx, w, d.Target)
		done()
		if !errors.Is(err, ErrWorkerGone) {
			tried++
		}
		switch {
		case err == nil:
			s.metrics.loads.WithLabelValues("ok").Inc()
			log.InfoContext(ctx, "model loaded", "worker", w.ID, "seconds", time.Since(start).Seconds())
			return w, nil
		case errors.Is(err, ErrWorkerGone):
			s.metrics.loads.WithLabelValues("unreachable").Inc()
			s.suspect(ctx, w)
		case errors.Is(err, ErrNoRoom):
			s.metrics.loads.WithLabelValues("no_room").Inc()
		case errors.Is(err, ErrModelFiles):
			s.metrics.loads.WithLabelValues("model_files").Inc()
		default:
			s.metrics.loads.WithLabelValues("error").Inc()
		}
		log.WarnContext(ctx, "load on worker failed", "worker", w.ID, "error", err)
		lastErr = err
		if ctx.Err() != nil {
			break
		}
	}
	if ctx.Err() != nil {
		return residency.Worker{}, ctx.Err()
	}
	kind := ErrLoadFailed
	if errors.Is(lastErr, ErrModelFiles) {
		kind = ErrModelFiles
	}
	return residency.Worker{}, errorf(kind, "load model %s: %v", d.Model, lastErr)
}

// Close cancels every load under way (their requests get a 503) and waits for the
// goroutines running them. Later requests for cold models are refused.
func (s *Server) Close() {
	s.mu.Lock()
	s.closed = true
	for _, f := range s.flights {
		f.cancel()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// isNoop reports whether tp is OpenTelemetry's no-op provider, whose spans record nothing.
func isNoop(tp trace.TracerProvider) bool {
	_, ok := tp.(noop.TracerProvider)
	return ok
}
