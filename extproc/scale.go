package extproc

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/internal/registry"
	"github.com/modelmesh/mesh/internal/residency"
)

// ScaleConfig sets the replica scaler.
type ScaleConfig struct {
	// Interval is how often demand is read and the policy applied.
	Interval time.Duration
	Policy   placement.ScalePolicy
	// MaxReplicas bounds the replicas of a version whose model sets no maxReplicas.
	MaxReplicas int
	// Deadline bounds one load or drain the scaler asks for.
	Deadline time.Duration
}

// Fleet is what the scaler asks of workers: a load (an extra replica, or making one an
// ordinary replica) and a drain. GRPCLoader is one.
type Fleet interface {
	Loader
	Drain(ctx context.Context, w residency.Worker, m placement.ModelVersion) error
}

// Scaler makes each served model version's replica count follow its demand, as its workers
// measure it (placement.Demand in their replica records): every interval it reads the
// residency state from Redis, asks the policy for a count per version within the model's
// [minReplicas, maxReplicas], and adds an extra replica on a worker with free room, or drains
// one (extra ones first), one replica per version per step. Each change runs under the
// version's fleet-wide lock, so ext_proc replicas acting on the same figures do not both act.
type Scaler struct {
	cfg     ScaleConfig
	read    func(context.Context) (residency.Snapshot, error)
	fleet   Fleet
	locks   *Locks
	log     *slog.Logger
	metrics *Metrics
	// states is each version's hysteresis; only Run's goroutine touches it.
	states map[placement.ModelVersion]placement.ScaleState
}

// NewScaler returns a scaler reading the state through read (residency.Reader.Read) and
// acting through fleet; locks may be nil (one ext_proc replica).
func NewScaler(cfg ScaleConfig, read func(context.Context) (residency.Snapshot, error), fleet Fleet, locks *Locks, log *slog.Logger, metrics *Metrics) *Scaler {
	return &Scaler{cfg: cfg, read: read, fleet: fleet, locks: locks, log: log, metrics: metrics,
		states: map[placement.ModelVersion]placement.ScaleState{}}
}

// Run applies the policy every interval until ctx ends; it returns nil then. A failed read
// is logged and tried again at the next interval.
func (s *Scaler) Run(ctx context.Context) error {
	tick := time.NewTicker(s.cfg.Interval)
	defer tick.Stop()
	healthy := true
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		snap, err := s.read(ctx)
		if err != nil {
			if healthy && ctx.Err() == nil {
				s.log.WarnContext(ctx, "scaler: read residency", "error", err)
			}
			healthy = false
			continue
		}
		healthy = true
		s.apply(ctx, s.Plan(snap, time.Now()))
	}
}

// ScaleStep is one change the scaler makes.
type ScaleStep struct {
	Target Target
	// Direction is +1 to add an extra replica (on the first of Workers that takes it), -1 to
	// drain the replica on Workers[0], 0 to make the extra replica on Workers[0] an ordinary
	// one (every replica of the version is extra).
	Direction int
	Workers   []residency.Worker
	// Unregistered marks the drain of a replica whose version the registry no longer has.
	Unregistered bool
	// Demand is the version's total requests in flight, Replicas its replicas ready or
	// loading, Want what the policy asked for: for the log.
	Demand         float64
	Replicas, Want int
}

// Plan is the steps the policy asks for at now, given snap; it advances the hysteresis.
func (s *Scaler) Plan(snap residency.Snapshot, now time.Time) []ScaleStep {
	if snap.Registry == nil {
		return nil
	}
	seen := map[placement.ModelVersion]bool{}
	var steps []ScaleStep
	for _, model := range snap.Registry.Models {
		hi := model.MaxReplicas
		if hi == 0 {
			hi = s.cfg.MaxReplicas
		}
		for _, version := range model.ServedVersions() {
			v, ok := model.Version(version)
			if !ok {
				continue
			}
			t := targetOf(&snap, model, v)
			seen[t.Model] = true
			if step, ok := s.planVersion(snap, model, t, max(model.MinReplicas, 1), hi, now); ok {
				steps = append(steps, step)
			}
		}
	}
	for m := range s.states {
		if !seen[m] {
			delete(s.states, m) // unregistered or no longer served
		}
	}
	return append(steps, unregistered(snap)...)
}

// unregistered drains every ready replica of a version the registry no longer has (its
// InferenceService deleted, its registry entry removed): nothing routes it any more, so it
// only holds memory.
func unregistered(snap residency.Snapshot) []ScaleStep {
	var steps []ScaleStep
	for _, id := range slices.Sorted(maps.Keys(snap.Replicas)) {
		w, live := snap.Workers[id]
		if !live {
			continue
		}
		for _, m := range slices.SortedFunc(maps.Keys(snap.Replicas[id]), func(a, b placement.ModelVersion) int { return strings.Compare(a.String(), b.String()) }) {
			if snap.Replicas[id][m].State != placement.StateReady {
				continue
			}
			if model, ok := snap.Registry.Model(m.Name); ok {
				if _, ok := model.Version(m.Version); ok {
					continue
				}
			}
			steps = append(steps, ScaleStep{Target: Target{Model: m}, Direction: -1, Workers: []residency.Worker{w}, Unregistered: true})
		}
	}
	return steps
}

func (s *Scaler) planVersion(snap residency.Snapshot, model registry.Model, t Target, lo, hi int, now time.Time) (ScaleStep, bool) {
	type held struct {
		w   residency.Worker
		rep residency.Replica
	}
	var ready []held
	loading, allExtra := 0, true
	for id, reps := range snap.Replicas {
		w, live := snap.Workers[id]
		rep, ok := reps[t.Model]
		if !live || !ok {
			continue
		}
		switch rep.State {
		case placement.StateReady:
			ready = append(ready, held{w, rep})
		case placement.StateLoading:
			loading++
		default:
			continue
		}
		allExtra = allExtra && rep.Extra
	}
	current := len(ready) + loading
	if current == 0 {
		delete(s.states, t.Model) // cold: loads on demand are not the scaler's
		return ScaleStep{}, false
	}
	// Busiest first: the one to keep when making a replica ordinary, the last to drain.
	slices.SortFunc(ready, func(a, b held) int {
		if c := cmp.Compare(b.rep.Demand.InFlight, a.rep.Demand.InFlight); c != 0 {
			return c
		}
		return cmp.Compare(a.w.ID, b.w.ID)
	})
	demands := make([]placement.Demand, len(ready))
	total := 0.0
	for i, h := range ready {
		demands[i] = h.rep.Demand
		total += h.rep.Demand.InFlight
	}
	want := s.cfg.Policy.Want(demands, current, lo, hi)
	st, dir := s.cfg.Policy.Step(s.states[t.Model], now, current, want)
	s.states[t.Model] = st
	step := ScaleStep{Target: t, Direction: dir, Demand: total, Replicas: current, Want: want}
	switch {
	case dir > 0:
		step.Target.Extra = true
		step.Workers = placesFor(snap, step.Target)
		return step, len(step.Workers) > 0
	case dir < 0 && loading == 0 && len(ready) > 1:
		// The least busy extra replica goes first, then the least busy of any.
		victim := ready[len(ready)-1]
		for i := len(ready) - 1; i >= 0; i-- {
			if ready[i].rep.Extra {
				victim = ready[i]
				break
			}
		}
		step.Workers = []residency.Worker{victim.w}
		return step, true
	case allExtra && len(ready) > 0:
		// The model's other replicas went (evicted, or their worker left): the busiest copy
		// left becomes an ordinary replica, no longer the first to go.
		step.Direction = 0
		step.Workers = []residency.Worker{ready[0].w}
		return step, true
	}
	return ScaleStep{}, false
}

// placesFor lists the workers that may take an extra replica of t, best first
// (placement.Candidates): of its runtime, not holding the version in any state, with free
// room for its known size.
func placesFor(snap residency.Snapshot, t Target) []residency.Worker {
	var out []residency.Worker
	l := t.load()
	for _, n := range placement.Candidates(snap.Nodes(), l) {
		if _, holds := n.Replicas[t.Model]; holds {
			continue
		}
		if _, fits, _ := placement.Place(l.Footprint(n), n.Capacity, n.Used); l.Size.Known() && !fits {
			continue
		}
		out = append(out, snap.Workers[n.ID])
	}
	return out
}

// apply runs the steps at once, each under its version's lock, and waits for them.
func (s *Scaler) apply(ctx context.Context, steps []ScaleStep) {
	var wg sync.WaitGroup
	for _, step := range steps {
		wg.Go(func() { s.run(ctx, step) })
	}
	wg.Wait()
}

func (s *Scaler) run(ctx context.Context, step ScaleStep) {
	if s.locks != nil {
		lock, err := s.locks.Acquire(ctx, step.Target.Model)
		if err != nil || lock == nil {
			return // Redis away, or another replica is changing it: next round
		}
		stop := lock.KeepAlive(ctx, s.log)
		defer func() {
			stop()
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			lock.Release(rctx)
			cancel()
		}()
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Deadline)
	defer cancel()
	log := s.log.With("model", step.Target.Model.String(), "demand_in_flight", step.Demand, "replicas", step.Replicas, "want", step.Want)
	switch step.Direction {
	case 1:
		for _, w := range step.Workers {
			err := s.fleet.Load(ctx, w, step.Target)
			if errors.Is(err, ErrNoRoom) {
				s.metrics.scale.WithLabelValues("up", "no_room").Inc()
				log.InfoContext(ctx, "scaler: no room for an extra replica", "worker", w.ID, "error", err)
				continue
			}
			if err != nil {
				s.metrics.scale.WithLabelValues("up", "error").Inc()
				log.WarnContext(ctx, "scaler: extra replica failed", "worker", w.ID, "error", err)
				return
			}
			s.metrics.scale.WithLabelValues("up", "ok").Inc()
			log.InfoContext(ctx, "scaler: extra replica added for demand", "worker", w.ID)
			return
		}
	case -1:
		w := step.Workers[0]
		if err := s.fleet.Drain(ctx, w, step.Target.Model); err != nil {
			s.metrics.scale.WithLabelValues("down", "error").Inc()
			log.WarnContext(ctx, "scaler: drain of a replica failed", "worker", w.ID, "error", err)
			return
		}
		s.metrics.scale.WithLabelValues("down", "ok").Inc()
		if step.Unregistered {
			log.InfoContext(ctx, "scaler: replica of an unregistered model drained", "worker", w.ID)
			return
		}
		log.InfoContext(ctx, "scaler: replica drained, demand fell", "worker", w.ID)
	default:
		w := step.Workers[0]
		if err := s.fleet.Load(ctx, w, step.Target); err != nil {
			log.WarnContext(ctx, "scaler: could not make the last extra replica an ordinary one", "worker", w.ID, "error", err)
			return
		}
		log.InfoContext(ctx, "scaler: extra replica is the model's ordinary replica now", "worker", w.ID)
	}
}
