package agent

import (
	"context"
	"slices"
	"time"

	"github.com/modelmesh/mesh/internal/placement"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

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
	cands, _ := a.candidates(nil)
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
