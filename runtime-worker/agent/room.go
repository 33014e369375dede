package agent

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/modelmesh/mesh/internal/placement"
)

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
		var keep placement.Memory // what an extra replica leaves free
		if r.extra {
			keep = a.cfg.FreeWatermark
		}
		if c, ok := a.takeable(choices, promise, keep); ok {
			a.breakPromise(promise) // kept: the promised room turns into used
			r.mem, r.gpu = r.mem.Plus(c.mem), c.gpu
			a.used = a.used.Plus(c.mem)
			a.updateGauges()
			a.mu.Unlock()
			a.notify()
			a.squeezed()
			return evicted, nil
		}
		if r.extra {
			free := a.cfg.Capacity.Minus(a.outlook())
			a.mu.Unlock()
			return nil, fmt.Errorf("%w: an extra replica takes only free memory and evicts nothing: needs %s, %s free, %s kept free",
				ErrNoCapacity, choices[0].mem, free, keep)
		}
		if promise == nil && !a.drainsWillFree(choices) {
			victims, best, possible := a.chooseVictims(r, choices)
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
// what is promised to others and keep free, on the device with the most free memory. Caller
// holds a.mu.
func (a *Agent) takeable(choices []choice, promise *choice, keep placement.Memory) (choice, bool) {
	if promise != nil {
		return *promise, a.used.Plus(promise.mem).Within(a.cfg.Capacity)
	}
	best := -1
	for i, c := range choices {
		if a.used.Plus(c.mem).Within(a.cfg.Capacity) && a.outlook().Plus(c.mem).Plus(keep).Within(a.cfg.Capacity) &&
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
// unpinned model, those other loads are loading included (they are ready or gone when their
// load ends), would make room for one of them. Caller holds a.mu.
func (a *Agent) chooseVictims(r *replica, choices []choice) (victims []placement.Candidate, best int, possible bool) {
	cands, reclaimable := a.candidates(r)
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
// that of unpinned replicas ready, or loading other than for (nil: none), which will be
// ready or gone when their load ends (draining ones already count as freed). Caller holds
// a.mu.
func (a *Agent) candidates(forLoad *replica) ([]placement.Candidate, placement.Memory) {
	now := a.now()
	cands := make([]placement.Candidate, 0, len(a.replicas))
	var reclaimable placement.Memory
	for _, o := range a.replicas {
		if o.closing {
			continue
		}
		cands = append(cands, placement.Candidate{Model: o.model, State: o.state, Memory: o.mem,
			LastUsed: o.lastUsed, InFlight: o.inFlight, Pinned: o.pinned, Extra: o.extra, Recent: !o.extra && o.handout.protects(now, a.cfg.MinIdle),
			Requests: o.requests.At(now, a.cfg.HalfLife), LoadTime: o.loadTime, Clock: o.clock})
		if !o.pinned && (o.state == placement.StateReady || o.state == placement.StateLoading && o != forLoad) {
			reclaimable = reclaimable.Plus(o.mem)
		}
	}
	return cands, reclaimable
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
