package residency

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/modelmesh/mesh/internal/placement"
)

// Routes answers, for one worker, whether any gateway still routes a model version to it,
// from the routed sets every control plane writes after each acknowledged push.
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

// WaitUnrouted blocks until m is in no control plane's routed set for the worker, or ctx
// ends. A control plane's sets count until its keep time ends (RenewControlPlane): one that
// stopped renewing may still be serving gateways that cannot reach Redis, or whose
// configuration it can no longer change, so its last word stands for that long. Redis errors
// are retried until ctx ends: unknown is not the same as unrouted.
func (r *Routes) WaitUnrouted(ctx context.Context, m placement.ModelVersion) error {
	tick := time.NewTicker(r.Poll)
	defer tick.Stop()
	var lastErr error
	for {
		routed, err := r.routed(ctx, m)
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

func (r *Routes) routed(ctx context.Context, m placement.ModelVersion) (bool, error) {
	live, err := r.rdb.ZRangeByScore(ctx, r.keys.ControlPlanes(), &redis.ZRangeBy{
		Min: "(" + strconv.FormatInt(time.Now().UnixMilli(), 10), Max: "+inf"}).Result()
	if err != nil {
		return false, err
	}
	if len(live) == 0 {
		return false, nil // no control plane whose word stands: nothing routes anywhere
	}
	cmds := make([]*redis.BoolCmd, len(live))
	_, err = r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, cp := range live {
			cmds[i] = p.SIsMember(ctx, r.keys.Routed(r.worker, cp), m.String())
		}
		return nil
	})
	if err != nil {
		return false, err
	}
	for _, c := range cmds {
		if c.Val() {
			return true, nil
		}
	}
	return false, nil
}

// WriteRouted replaces control plane cp's routed sets of the given workers (worker id to
// model versions), each expiring after ttl unless renewed (RenewControlPlane; give the same
// keep time), and deletes its sets of the workers in gone. Each set is replaced atomically.
func WriteRouted(ctx context.Context, rdb redis.UniversalClient, keys Keys, cp string, routed map[string][]string, gone []string, ttl time.Duration) error {
	_, err := rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		for _, id := range gone {
			p.Del(ctx, keys.Routed(id, cp))
		}
		for id, models := range routed {
			p.Del(ctx, keys.Routed(id, cp))
			if len(models) > 0 {
				members := make([]any, len(models))
				for i, m := range models {
					members[i] = m
				}
				p.SAdd(ctx, keys.Routed(id, cp), members...)
				p.PExpire(ctx, keys.Routed(id, cp), ttl)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("write routed sets: %w", err)
	}
	return nil
}

// RenewControlPlane makes control plane cp's routed sets of the given workers count for keep
// from now, and forgets the control planes whose keep time ended (their sets expire on their
// own).
func RenewControlPlane(ctx context.Context, rdb redis.UniversalClient, keys Keys, cp string, workers []string, keep time.Duration) error {
	now := time.Now()
	_, err := rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.ZAdd(ctx, keys.ControlPlanes(), redis.Z{Score: float64(now.Add(keep).UnixMilli()), Member: cp})
		p.ZRemRangeByScore(ctx, keys.ControlPlanes(), "-inf", strconv.FormatInt(now.UnixMilli(), 10))
		for _, id := range workers {
			p.PExpire(ctx, keys.Routed(id, cp), keep)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("renew control plane %s: %w", cp, err)
	}
	return nil
}

// ReadRouted reads control plane cp's routed sets of the given workers.
func ReadRouted(ctx context.Context, rdb redis.UniversalClient, keys Keys, cp string, workers []string) (map[string][]string, error) {
	cmds := make([]*redis.StringSliceCmd, len(workers))
	_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, id := range workers {
			cmds[i] = p.SMembers(ctx, keys.Routed(id, cp))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read routed sets: %w", err)
	}
	out := make(map[string][]string, len(workers))
	for i, id := range workers {
		if models := cmds[i].Val(); len(models) > 0 {
			slices.Sort(models)
			out[id] = models
		}
	}
	return out, nil
}
