package agent

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/runtime-worker/tensor"
)

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
	r, release, err := a.acquire(m)
	if err != nil {
		return m, tensor.Metadata{}, nil, err
	}
	return r.model, r.meta, release, nil
}

func (a *Agent) acquire(m placement.ModelVersion) (*replica, func(), error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	r := a.resolve(m, func(r *replica) bool {
		return !r.closing && (r.state == placement.StateReady || r.state == placement.StateDraining)
	})
	if r == nil {
		return nil, nil, fmt.Errorf("%s: %w", display(m), ErrNotFound)
	}
	now := a.now()
	r.inFlight++
	r.busy = r.busy.Step(now, 1, a.cfg.DemandWindow)
	r.arrivals = r.arrivals.Add(now, placement.RateHalfLife(a.cfg.DemandWindow))
	r.lastUsed, r.clock = now, a.clock
	r.handout = r.handout.arrive(r.lastUsed)
	r.requests = r.requests.Add(r.lastUsed, a.cfg.HalfLife)
	var once sync.Once
	release := func() {
		once.Do(func() {
			a.mu.Lock()
			defer a.mu.Unlock()
			r.inFlight--
			r.busy = r.busy.Step(a.now(), -1, a.cfg.DemandWindow)
			if r.inFlight == 0 && r.idle != nil {
				close(r.idle)
				r.idle = nil
			}
		})
	}
	return r, release, nil
}

// Infer runs one request on a resident model, counting it in flight for eviction and drain.
// With Config.Concurrency set it first waits, within ctx, for one of the replica's slots.
func (a *Agent) Infer(ctx context.Context, req *tensor.Request) (*tensor.Response, error) {
	r, release, err := a.acquire(req.Model)
	if err != nil {
		return nil, err
	}
	defer release()
	if err := r.meta.Check(req); err != nil {
		return nil, err
	}
	free, err := a.slot(ctx, r)
	if err != nil {
		return nil, fmt.Errorf("infer %s: waiting for one of its %d slots: %w", r.model, a.cfg.Concurrency, err)
	}
	defer free()
	resp, err := a.backend.Infer(ctx, r.model, req)
	if err != nil {
		return nil, fmt.Errorf("infer %s: %w", r.model, err)
	}
	resp.Model, resp.ID = r.model, req.ID
	return resp, nil
}

// slot takes one of r's slots, waiting in its queue (counted in its demand) while all are
// taken; free gives it back.
func (a *Agent) slot(ctx context.Context, r *replica) (free func(), err error) {
	if r.slots == nil {
		return func() {}, nil
	}
	free = func() { <-r.slots }
	select {
	case r.slots <- struct{}{}:
		a.metrics.queueWait.Observe(0)
		return free, nil
	default:
	}
	start := a.now()
	a.mu.Lock()
	r.queued = r.queued.Step(start, 1, a.cfg.DemandWindow)
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		r.queued = r.queued.Step(a.now(), -1, a.cfg.DemandWindow)
		a.mu.Unlock()
	}()
	select {
	case r.slots <- struct{}{}:
		a.metrics.queueWait.Observe(a.now().Sub(start).Seconds())
		return free, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
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

func display(m placement.ModelVersion) string {
	if m.Version == "" {
		return m.Name
	}
	return m.String()
}
