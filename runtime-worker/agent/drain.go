package agent

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/modelmesh/mesh/internal/placement"
)

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
