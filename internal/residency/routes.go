package residency

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/modelmesh/mesh/internal/placement"
)

// Routes answers, for one worker, whether the gateway still routes a model version to it,
// from the routed sets the control plane writes after each acknowledged push.
type Routes struct {
	rdb    redis.UniversalClient
	keys   Keys
	worker string
	// Poll is the interval between checks.
	Poll time.Duration
}

// NewRoutes returns the routes of worker id.
func NewRoutes(rdb redis.UniversalClient, keys Keys, id string) *Routes {
	return &Routes{rdb: rdb, keys: keys, worker: id, Poll: 25 * time.Millisecond}
}

// WaitUnrouted blocks until m is not in the worker's routed set, or ctx ends. Redis errors
// are retried until ctx ends: unknown is not the same as unrouted.
func (r *Routes) WaitUnrouted(ctx context.Context, m placement.ModelVersion) error {
	tick := time.NewTicker(r.Poll)
	defer tick.Stop()
	var lastErr error
	for {
		routed, err := r.rdb.SIsMember(ctx, r.keys.Routed(r.worker), m.String()).Result()
		if err == nil && !routed {
			return nil
		}
		lastErr = err
		select {
		case <-ctx.Done():
			if lastErr != nil {
				return fmt.Errorf("%w (last redis error: %v)", ctx.Err(), lastErr)
			}
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// WriteRouted replaces the routed sets of the given workers (worker id to model versions)
// and deletes the sets of workers in gone. Each worker's set is replaced atomically.
func WriteRouted(ctx context.Context, rdb redis.UniversalClient, keys Keys, routed map[string][]string, gone []string) error {
	_, err := rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		for _, id := range gone {
			p.Del(ctx, keys.Routed(id))
		}
		for id, models := range routed {
			p.Del(ctx, keys.Routed(id))
			if len(models) > 0 {
				members := make([]any, len(models))
				for i, m := range models {
					members[i] = m
				}
				p.SAdd(ctx, keys.Routed(id), members...)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("write routed sets: %w", err)
	}
	return nil
}
