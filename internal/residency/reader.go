package residency

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/internal/registry"
)

// Snapshot is the whole residency state at one moment: live workers, what each holds, the
// measured model sizes and the published registry (nil when none was published).
type Snapshot struct {
	Workers  map[string]Worker
	Replicas map[string]map[placement.ModelVersion]Replica
	Sizes    map[placement.ModelVersion]placement.Footprint
	// Failures are the model versions' last failed cold loads (Keys.Failures).
	Failures map[placement.ModelVersion]Failure
	Registry *registry.Registry
}

// Ready lists the workers holding m ready, sorted by id.
func (s Snapshot) Ready(m placement.ModelVersion) []string {
	var out []string
	for id, reps := range s.Replicas {
		if r, ok := reps[m]; ok && r.State == placement.StateReady {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}

// Nodes are the snapshot's workers as placement sees them, sorted by id.
func (s Snapshot) Nodes() []placement.Node {
	out := make([]placement.Node, 0, len(s.Workers))
	for id, w := range s.Workers {
		reps := make(map[placement.ModelVersion]placement.State, len(s.Replicas[id]))
		for m, r := range s.Replicas[id] {
			reps[m] = r.State
		}
		out = append(out, placement.Node{ID: id, Runtime: w.Runtime, Caps: w.Caps, Capacity: w.Capacity, Used: w.Used,
			Replicas: reps, Serves: w.DataAddr != "", Loads: w.DataAddr != "" && w.MgmtAddr != ""})
	}
	slices.SortFunc(out, func(a, b placement.Node) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Reader reads residency from Redis. Safe for concurrent use.
type Reader struct {
	rdb  redis.UniversalClient
	keys Keys
	log  *slog.Logger

	mu sync.Mutex
	// raw and decoded are the registry as last read and decoded: a snapshot whose registry
	// is unchanged (every one but after an edit) shares it rather than decoding it again,
	// which takes about 24 ms at 10,000 models.
	raw     []byte
	decoded *registry.Registry
}

// NewReader returns a reader over rdb.
func NewReader(rdb redis.UniversalClient, keys Keys, log *slog.Logger) *Reader {
	return &Reader{rdb: rdb, keys: keys, log: log}
}

// Read takes a full snapshot: workers whose lease has not ended, their replicas, the sizes
// hash and the registry. A worker whose lease key is gone is left out even if the workers
// set still names it.
func (r *Reader) Read(ctx context.Context) (Snapshot, error) {
	now := strconv.FormatInt(time.Now().UnixMilli(), 10)
	ids, err := r.rdb.ZRangeByScore(ctx, r.keys.Workers(), &redis.ZRangeBy{Min: now, Max: "+inf"}).Result()
	if err != nil {
		return Snapshot{}, fmt.Errorf("read workers: %w", err)
	}
	pipe := r.rdb.Pipeline()
	workers := make([]*redis.MapStringStringCmd, len(ids))
	replicas := make([]*redis.MapStringStringCmd, len(ids))
	for i, id := range ids {
		workers[i] = pipe.HGetAll(ctx, r.keys.Worker(id))
		replicas[i] = pipe.HGetAll(ctx, r.keys.Replicas(id))
	}
	sizes := pipe.HGetAll(ctx, r.keys.Sizes())
	failures := pipe.HGetAll(ctx, r.keys.Failures())
	reg := pipe.Get(ctx, r.keys.Registry())
	if _, err := pipe.Exec(ctx); err != nil && err != redis.Nil {
		return Snapshot{}, fmt.Errorf("read residency: %w", err)
	}
	snap := Snapshot{Workers: map[string]Worker{}, Replicas: map[string]map[placement.ModelVersion]Replica{}, Sizes: map[placement.ModelVersion]placement.Footprint{}}
	for i, id := range ids {
		h := workers[i].Val()
		if len(h) == 0 {
			continue // lease ended between the two reads
		}
		snap.Workers[id] = ParseWorker(h)
		reps := map[placement.ModelVersion]Replica{}
		for field, raw := range replicas[i].Val() {
			m, err := placement.ParseModelVersion(field)
			var rep Replica
			if err == nil {
				err = json.Unmarshal([]byte(raw), &rep)
			}
			if err != nil {
				r.log.WarnContext(ctx, "skip malformed replica record", "worker", id, "field", field, "error", err)
				continue
			}
			reps[m] = rep
		}
		snap.Replicas[id] = reps
	}
	snap.Failures = map[placement.ModelVersion]Failure{}
	for field, raw := range failures.Val() {
		m, err := placement.ParseModelVersion(field)
		var f Failure
		if err == nil && json.Unmarshal([]byte(raw), &f) == nil {
			snap.Failures[m] = f
		}
	}
	for field, raw := range sizes.Val() {
		m, err := placement.ParseModelVersion(field)
		f, ok := parseFootprint(raw)
		if err == nil && ok {
			snap.Sizes[m] = f
		}
	}
	if raw, err := reg.Bytes(); err == nil {
		parsed, err := r.decode(raw)
		if err != nil {
			return Snapshot{}, fmt.Errorf("read registry: %w", err)
		}
		snap.Registry = parsed
	}
	return snap, nil
}

// decode is registry.Decode of raw, or the registry decoded last when raw is the same: the
// registry is read-only once decoded, so snapshots may share it.
func (r *Reader) decode(raw []byte) (*registry.Registry, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.decoded != nil && bytes.Equal(raw, r.raw) {
		return r.decoded, nil
	}
	parsed, err := registry.Decode(raw)
	if err != nil {
		return nil, err
	}
	r.raw, r.decoded = raw, parsed
	return parsed, nil
}

// WatchConfig times Watch.
type WatchConfig struct {
	// Batch is the least time between two reads that events cause: an event after a quiet
	// Batch is read at once, and the events that follow within Batch of that read are
	// gathered into one read when it has passed. A lone change waits for no batch; a burst
	// costs two reads. Reads at start and at resyncs do not count.
	Batch time.Duration
	// Resync is the interval of full reads without events: the backstop for missed events,
	// lost subscriptions and expired leases, which publish nothing.
	Resync time.Duration
}

// Watch calls onSnapshot with a fresh snapshot at start, after events (at most once per
// Batch) and at every resync, until ctx ends. A failed read is logged and retried at the
// next trigger; onSnapshot is then not called, so callers keep the last good state. Returns
// nil when ctx ends.
func (r *Reader) Watch(ctx context.Context, cfg WatchConfig, onSnapshot func(Snapshot)) error {
	sub := r.rdb.Subscribe(ctx, r.keys.Events())
	defer sub.Close()
	events := sub.Channel()
	resync := time.NewTicker(cfg.Resync)
	defer resync.Stop()
	healthy := true
	read := func() {
		snap, err := r.Read(ctx)
		if err != nil {
			if healthy && ctx.Err() == nil {
				r.log.WarnContext(ctx, "read residency from redis; keeping the last state", "error", err)
			}
			healthy = false
			return
		}
		if !healthy {
			r.log.InfoContext(ctx, "residency readable again")
		}
		healthy = true
		onSnapshot(snap)
	}
	read()
	var eventRead time.Time // when events last caused a read
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-resync.C:
			read()
		case <-events:
			if wait := time.Until(eventRead.Add(cfg.Batch)); wait > 0 {
				timer := time.NewTimer(wait)
			gather:
				for {
					select {
					case <-events:
					case <-timer.C:
						break gather
					case <-ctx.Done():
						timer.Stop()
						return nil
					}
				}
			}
			eventRead = time.Now()
			read()
		}
	}
}

// PublishRegistry stores the registry and announces it on the events channel.
func PublishRegistry(ctx context.Context, rdb redis.UniversalClient, keys Keys, reg *registry.Registry) error {
	if err := rdb.Set(ctx, keys.Registry(), reg.Encode(), 0).Err(); err != nil {
		return fmt.Errorf("publish registry: %w", err)
	}
	b, _ := json.Marshal(Event{Kind: "registry", State: reg.Digest()}) // plain struct
	if err := rdb.Publish(ctx, keys.Events(), b).Err(); err != nil {
		return fmt.Errorf("announce registry: %w", err)
	}
	return nil
}

// PublishedRegistry reads the registry PublishRegistry last stored; nil and no error when
// none was.
func PublishedRegistry(ctx context.Context, rdb redis.UniversalClient, keys Keys) (*registry.Registry, error) {
	raw, err := rdb.Get(ctx, keys.Registry()).Bytes()
	if err == redis.Nil {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read registry: %w", err)
	}
	reg, err := registry.Decode(raw)
	if err != nil {
		return nil, fmt.Errorf("read registry: %w", err)
	}
	return reg, nil
}

// parseFootprint reads a sizes hash value: a JSON footprint, or a plain byte count written
// before memory had dimensions (host memory).
func parseFootprint(raw string) (placement.Footprint, bool) {
	if n, err := strconv.ParseInt(raw, 10, 64); err == nil {
		return placement.Footprint{Host: n}, n > 0
	}
	var f placement.Footprint
	if err := json.Unmarshal([]byte(raw), &f); err != nil || f.Host < 0 || f.GPU < 0 {
		return placement.Footprint{}, false
	}
	return f, f.Total() > 0
}
