package residency

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/modelmesh/mesh/internal/placement"
)

// State is what a worker holds, as the reporter writes it.
type State struct {
	Worker   Worker
	Replicas map[string]Replica
	// Measured maps "name:version" to the footprint measured at load, for the sizes hash.
	Measured map[string]placement.Footprint
}

// ReporterConfig times the reporter.
type ReporterConfig struct {
	// Heartbeat is how often the full state is written; the lease lasts 3 heartbeats.
	Heartbeat time.Duration
}

// Reporter keeps a worker's records in Redis equal to its state: it rewrites them whole on
// every change and every heartbeat (so after Redis loses its data they are back within one
// heartbeat), publishes an Event per change, and removes them when Run ends.
type Reporter struct {
	rdb  redis.UniversalClient
	keys Keys
	cfg  ReporterConfig
	log  *slog.Logger
	seq  uint64
}

// NewReporter returns a reporter writing through rdb.
func NewReporter(rdb redis.UniversalClient, keys Keys, cfg ReporterConfig, log *slog.Logger) *Reporter {
	return &Reporter{rdb: rdb, keys: keys, cfg: cfg, log: log}
}

// Run writes snapshot() now, after each value on changed and at every heartbeat, until ctx
// ends; then it removes the worker's records (bounded by a few seconds) and returns nil.
// Redis errors are logged and retried at the next heartbeat, never returned.
func (r *Reporter) Run(ctx context.Context, changed <-chan struct{}, snapshot func() State) error {
	tick := time.NewTicker(r.cfg.Heartbeat)
	defer tick.Stop()
	var published map[string]Replica
	healthy := true
	var last State
	for {
		st := snapshot()
		last = st
		joined, err := r.writeState(ctx, st)
		if err != nil {
			if healthy && ctx.Err() == nil {
				r.log.WarnContext(ctx, "write worker state to redis", "error", err)
			}
			healthy = false
		} else {
			if !healthy {
				r.log.InfoContext(ctx, "worker state written to redis again", "replicas", len(st.Replicas))
				r.publish(ctx, st.Worker, Event{Kind: "worker", State: "ready"})
			}
			if joined && published != nil && healthy {
				// The lease was ended while this worker lived (ext_proc found it unreachable,
				// EndLease): readers learn at once that it is back.
				r.log.InfoContext(ctx, "worker lease restored after it was ended")
				r.publish(ctx, st.Worker, Event{Kind: "worker", State: "ready"})
			}
			healthy = true
			r.publishChanges(ctx, st.Worker, published, st.Replicas)
			published = st.Replicas
		}
		select {
		case <-ctx.Done():
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Second)
			defer cancel()
			if err := r.remove(cctx, last.Worker); err != nil {
				r.log.WarnContext(cctx, "remove worker records from redis", "error", err)
			}
			return nil
		case <-tick.C:
		case <-changed:
		}
	}
}

func (r *Reporter) lease() time.Duration { return 3 * r.cfg.Heartbeat }

func (r *Reporter) write(ctx context.Context, st State) error {
	_, err := r.writeState(ctx, st)
	return err
}

// writeState writes st whole; joined reports that the worker was not in the workers set
// before (its first write, or its lease had been ended or had run out).
func (r *Reporter) writeState(ctx context.Context, st State) (joined bool, err error) {
	now := time.Now()
	id := st.Worker.ID
	var added *redis.IntCmd
	_, err = r.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, r.keys.Worker(id), st.Worker.fields(now.UnixMilli()))
		p.PExpire(ctx, r.keys.Worker(id), r.lease())
		p.Del(ctx, r.keys.Replicas(id))
		if len(st.Replicas) > 0 {
			fields := make(map[string]any, len(st.Replicas))
			for k, v := range st.Replicas {
				b, _ := json.Marshal(v) // plain struct, always marshals
				fields[k] = string(b)
			}
			p.HSet(ctx, r.keys.Replicas(id), fields)
			p.PExpire(ctx, r.keys.Replicas(id), r.lease())
		}
		added = p.ZAdd(ctx, r.keys.Workers(), redis.Z{Score: float64(now.Add(r.lease()).UnixMilli()), Member: id})
		if len(st.Measured) > 0 {
			sizes := make(map[string]any, len(st.Measured))
			for k, v := range st.Measured {
				b, _ := json.Marshal(v) // plain struct, always marshals
				sizes[k] = string(b)
			}
			p.HSet(ctx, r.keys.Sizes(), sizes)
		}
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("write worker %s: %w", id, err)
	}
	return added.Val() == 1, nil
}

// EndLease removes worker id from the live workers at once, as if its lease had run out,
// and announces it: readers (ext_proc, the control plane) stop placing on it and routing to
// it with their next snapshot. A worker that is in fact alive writes itself back at its
// next heartbeat and announces that.
func EndLease(ctx context.Context, rdb redis.UniversalClient, keys Keys, id string) error {
	if err := rdb.ZRem(ctx, keys.Workers(), id).Err(); err != nil {
		return fmt.Errorf("end lease of worker %s: %w", id, err)
	}
	b, _ := json.Marshal(Event{Worker: id, Kind: "worker", State: "unreachable"}) // plain struct
	if err := rdb.Publish(ctx, keys.Events(), b).Err(); err != nil {
		return fmt.Errorf("announce end of lease of worker %s: %w", id, err)
	}
	return nil
}

func (r *Reporter) publishChanges(ctx context.Context, w Worker, before, after map[string]Replica) {
	if before == nil {
		r.publish(ctx, w, Event{Kind: "worker", State: "ready"})
	}
	for k, v := range after {
		if old, ok := before[k]; !ok || old.State != v.State {
			r.publish(ctx, w, Event{Kind: "replica", Model: k, State: v.State.String()})
		}
	}
	for k := range before {
		if _, ok := after[k]; !ok {
			r.publish(ctx, w, Event{Kind: "replica", Model: k})
		}
	}
}

func (r *Reporter) publish(ctx context.Context, w Worker, e Event) {
	r.seq++
	e.Worker, e.Epoch, e.Seq = w.ID, w.StartedUnixMs, r.seq
	b, _ := json.Marshal(e) // plain struct, always marshals
	if err := r.rdb.Publish(ctx, r.keys.Events(), b).Err(); err != nil && ctx.Err() == nil {
		r.log.WarnContext(ctx, "publish residency event", "error", err)
	}
}

func (r *Reporter) remove(ctx context.Context, w Worker) error {
	_, err := r.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Del(ctx, r.keys.Worker(w.ID), r.keys.Replicas(w.ID))
		p.ZRem(ctx, r.keys.Workers(), w.ID)
		return nil
	})
	if err != nil {
		return err
	}
	r.publish(ctx, w, Event{Kind: "worker"})
	return nil
}
