package controlplane

import (
	"context"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/modelmesh/mesh/internal/residency"
)

// routedSets keeps this control plane's routed sets in Redis: per worker, the model versions
// its gateways may route there (docs/redis.md). The reconcile loop records what they should
// hold; a renewal rewrites them whole every resync, so that a Redis that lost them gets them
// back, and keeps them counting.
type routedSets struct {
	rdb  redis.UniversalClient
	keys residency.Keys
	id   string
	// keep is how long the sets count after a renewal; retire how long after this control
	// plane stops (its gateways reconnect to another replica meanwhile).
	keep, retire time.Duration
	log          *slog.Logger

	mu     sync.Mutex
	sets   map[string][]string // what Redis should hold, by worker
	loaded bool
}

// current is what the sets should hold now.
func (r *routedSets) current() map[string][]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.sets
}

// load reads, once, the sets a previous run under the same id left for the given workers:
// until its gateways acknowledge this run's first push, they may route by them.
func (r *routedSets) load(ctx context.Context, workers []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.loaded {
		return
	}
	sets, err := residency.ReadRouted(ctx, r.rdb, r.keys, r.id, workers)
	if err != nil {
		r.log.WarnContext(ctx, "read the routed sets of a previous run; they will be replaced", "error", err)
		return
	}
	r.sets, r.loaded = sets, true
}

// record makes the sets hold next, writing those that changed. On a Redis error it keeps
// what was recorded before, for the next call to compare against.
func (r *routedSets) record(ctx context.Context, next map[string][]string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	changed := map[string][]string{}
	for id, models := range next {
		if !slices.Equal(models, r.sets[id]) {
			changed[id] = models
		}
	}
	var gone []string
	for id := range r.sets {
		if _, ok := next[id]; !ok {
			gone = append(gone, id)
		}
	}
	if len(changed) == 0 && len(gone) == 0 {
		return
	}
	if err := residency.WriteRouted(ctx, r.rdb, r.keys, r.id, changed, gone, r.keep); err != nil {
		r.log.WarnContext(ctx, "record routed replicas; draining workers will wait", "error", err)
		return
	}
	r.sets = next
}

// renew rewrites every set whole and makes them count for keep from now, every period until
// ctx ends; then it makes them count only for retire.
func (r *routedSets) renew(ctx context.Context, period time.Duration) error {
	tick := time.NewTicker(period)
	defer tick.Stop()
	for {
		r.write(ctx, r.keep)
		select {
		case <-ctx.Done():
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			defer cancel()
			r.write(rctx, r.retire)
			return nil
		case <-tick.C:
		}
	}
}

func (r *routedSets) write(ctx context.Context, keep time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	err := residency.WriteRouted(ctx, r.rdb, r.keys, r.id, r.sets, nil, keep)
	if err == nil {
		err = residency.RenewControlPlane(ctx, r.rdb, r.keys, r.id, slices.Collect(maps.Keys(r.sets)), keep)
	}
	if err != nil && ctx.Err() == nil {
		r.log.WarnContext(ctx, "renew the control plane's routed sets; they lapse after "+keep.String(), "error", err)
	}
}

// unionRouted is, per worker of b, the model versions of a and of b, sorted: before a push,
// the replicas of both configurations. Workers gone from b are left out: none routes there.
func unionRouted(a, b map[string][]string) map[string][]string {
	out := make(map[string][]string, len(b))
	for id, models := range b {
		out[id] = slices.Compact(slices.Sorted(slices.Values(append(slices.Clone(models), a[id]...))))
	}
	return out
}
