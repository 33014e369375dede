package controlplane

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"

	"github.com/modelmesh/mesh/controlplane/translate"
	"github.com/modelmesh/mesh/controlplane/xds"
	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/internal/registry"
	"github.com/modelmesh/mesh/internal/residency"
)

// Config configures the controller.
type Config struct {
	// ID names this control plane among its replicas: its routed sets in Redis are its own.
	ID           string
	RegistryPath string
	Translate    translate.Config
	Watch        residency.WatchConfig
	// Traffic, if not nil, replaces models' traffic rules in the registry before it is
	// translated and published (Istio VirtualServices, package istio).
	Traffic Traffic
}

// Traffic is a source of traffic rules that take precedence over the registry file's.
type Traffic interface {
	// Run watches the rules' sources until ctx ends, calling changed once they are first
	// known and after each change.
	Run(ctx context.Context, changed func()) error
	// Apply returns the registry in force for the registry file's reg. Safe concurrently
	// with Run.
	Apply(reg *registry.Registry) *registry.Registry
}

// Controller reconciles state into configuration. Run owns all its goroutines.
type Controller struct {
	cfg     Config
	rdb     redis.UniversalClient
	keys    residency.Keys
	xds     *xds.Server
	log     *slog.Logger
	metrics *metrics
	// workers holds the ids of the workers this control plane has routed sets for, for the
	// renewal, which runs beside the reconcile loop.
	workers atomic.Pointer[[]string]
	// ready is set once a configuration was pushed.
	ready atomic.Bool
}

// Ready reports whether the controller has pushed a configuration: until then a gateway
// connecting here would get none (the traffic rules or the residency may not be known yet).
func (c *Controller) Ready() bool { return c.ready.Load() }

// New returns a controller pushing through srv.
func New(cfg Config, rdb redis.UniversalClient, keys residency.Keys, srv *xds.Server, log *slog.Logger, reg prometheus.Registerer) *Controller {
	return &Controller{cfg: cfg, rdb: rdb, keys: keys, xds: srv, log: log, metrics: newMetrics(reg)}
}

// event is one input of the reconcile loop: a new registry or a new residency snapshot;
// neither means that the traffic rules changed.
type event struct {
	registry *registry.Registry
	snapshot *residency.Snapshot
}

// Run loads the registry (an invalid file at start is an error), then reconciles until ctx
// ends. Redis being unreachable never stops it: Envoy keeps the last configuration.
func (c *Controller) Run(ctx context.Context) error {
	reg, err := LoadRegistry(c.cfg.RegistryPath)
	if err != nil {
		return err
	}
	c.log.InfoContext(ctx, "registry loaded", "models", len(reg.Models), "digest", reg.Digest())
	events := make(chan event, 16)
	send := func(e event) {
		select {
		case events <- e:
		case <-ctx.Done():
		}
	}
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return c.renewRouted(ctx) })
	// Watched from the start, so that no edit made while the traffic rules load is missed;
	// its events wait in the channel for the loop.
	g.Go(func() error {
		return WatchRegistry(ctx, c.cfg.RegistryPath, c.log, func(r *registry.Registry) { send(event{registry: r}) }, func(err error) {
			c.metrics.registryRejected.Inc()
			c.log.ErrorContext(ctx, "registry file rejected; the last good registry stays in force", "error", err)
		})
	})
	if t := c.cfg.Traffic; t != nil {
		// Nothing is published or pushed before the traffic rules are known, so that a
		// restart does not briefly put the file's rules back in force.
		known := make(chan struct{})
		var once sync.Once
		g.Go(func() error {
			return t.Run(ctx, func() {
				once.Do(func() { close(known) })
				send(event{})
			})
		})
		select {
		case <-known:
		case <-ctx.Done():
			return g.Wait()
		}
	}
	g.Go(func() error {
		return residency.NewReader(c.rdb, c.keys, c.log).Watch(ctx, c.cfg.Watch, func(s residency.Snapshot) { send(event{snapshot: &s}) })
	})
	g.Go(func() error { return c.loop(ctx, reg, events) })
	return g.Wait()
}

// loop is the only place that pushes: it folds bursts of events into one push.
func (c *Controller) loop(ctx context.Context, file *registry.Registry, events <-chan event) error {
	reg := c.inForce(file)
	var snap *residency.Snapshot
	var routed map[string][]string
	published := ""
	republish := time.NewTicker(c.cfg.Watch.Resync)
	defer republish.Stop()
	// publish writes the registry when it changed; with verify, also when Redis lost it (a
	// restart that came back empty), which only the periodic check needs to ask Redis about.
	publish := func(verify bool) {
		if published == reg.Digest() && (!verify || c.rdb.Exists(ctx, c.keys.Registry()).Val() == 1) {
			return
		}
		if err := residency.PublishRegistry(ctx, c.rdb, c.keys, reg); err != nil {
			c.log.WarnContext(ctx, "publish registry to redis; will retry", "error", err)
			return
		}
		published = reg.Digest()
		c.log.InfoContext(ctx, "registry published", "models", len(reg.Models), "digest", published)
	}
	publish(false)
	for {
		var e event
		select {
		case <-ctx.Done():
			return nil
		case <-republish.C:
			publish(true)
			continue
		case e = <-events:
		}
		for drained := false; !drained; {
			if e.registry != nil {
				file = e.registry
			}
			if e.snapshot != nil {
				snap = e.snapshot
			}
			select {
			case e = <-events:
			default:
				drained = true
			}
		}
		reg = c.inForce(file)
		publish(false)
		if snap == nil {
			continue // no residency read yet: nothing is known to be routable
		}
		start := time.Now()
		res, err := translate.Translate(c.cfg.Translate, stateOf(reg, *snap))
		c.metrics.buildDuration.Observe(time.Since(start).Seconds())
		if err != nil {
			c.log.ErrorContext(ctx, "translate state", "error", err)
			continue
		}
		// The routed sets lead the push for replicas it adds (a gateway that acknowledges
		// early routes to them before the others do) and lag it for replicas it removes:
		// before the push they hold both, after it what every gateway acknowledged. A push
		// some gateway did not acknowledge leaves both in place.
		next := routedOf(reg, *snap)
		routed = c.writeRouted(ctx, unionRouted(routed, next), routed)
		err = c.xds.Push(ctx, res)
		if err == nil || errors.Is(err, xds.ErrNotAcknowledged) {
			c.ready.Store(true) // served, even if some gateway was slow or refused it
		}
		if err != nil {
			if ctx.Err() == nil {
				c.log.ErrorContext(ctx, "push configuration; the routed sets keep the replicas of both configurations", "error", err)
			}
			continue
		}
		routed = c.writeRouted(ctx, next, routed)
	}
}

// inForce is the registry that is translated and published: the file's, with c.cfg.Traffic's
// rules when there are any.
func (c *Controller) inForce(file *registry.Registry) *registry.Registry {
	if c.cfg.Traffic == nil {
		return file
	}
	return c.cfg.Traffic.Apply(file)
}

// writeRouted records, per worker, the model versions the acknowledged configuration routes
// to it, so that a draining worker knows when it may unload (drain before unload). Only the
// sets that changed since last are written; it returns what is now recorded.
func (c *Controller) writeRouted(ctx context.Context, now, last map[string][]string) map[string][]string {
	changed := map[string][]string{}
	for id, models := range now {
		if !slices.Equal(models, last[id]) {
			changed[id] = models
		}
	}
	var gone []string
	for id := range last {
		if _, ok := now[id]; !ok {
			gone = append(gone, id)
		}
	}
	if len(changed) == 0 && len(gone) == 0 {
		return last
	}
	if err := residency.WriteRouted(ctx, c.rdb, c.keys, c.cfg.ID, changed, gone, c.keep()); err != nil {
		c.log.WarnContext(ctx, "record routed replicas; draining workers will wait", "error", err)
		return last
	}
	workers := make([]string, 0, len(now))
	for id := range now {
		workers = append(workers, id)
	}
	c.workers.Store(&workers)
	return now
}

// keepAfterSilence is how long the routed sets of a control plane that stopped renewing
// them still count: it may be serving gateways while it cannot reach Redis.
const keepAfterSilence = 2 * time.Minute

// keep is how long this control plane's routed sets count after a renewal: three resyncs,
// then keepAfterSilence.
func (c *Controller) keep() time.Duration { return 3*c.cfg.Watch.Resync + keepAfterSilence }

// renewRouted renews this control plane's routed sets every resync until ctx ends, beside
// the reconcile loop, so that slow pushes never let them lapse.
func (c *Controller) renewRouted(ctx context.Context) error {
	tick := time.NewTicker(c.cfg.Watch.Resync)
	defer tick.Stop()
	for {
		var workers []string
		if w := c.workers.Load(); w != nil {
			workers = *w
		}
		if err := residency.RenewControlPlane(ctx, c.rdb, c.keys, c.cfg.ID, workers, c.keep()); err != nil && ctx.Err() == nil {
			c.log.WarnContext(ctx, "renew the control plane's routed sets; they lapse after "+c.keep().String(), "error", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// unionRouted is, per worker, the model versions of a and of b, sorted.
func unionRouted(a, b map[string][]string) map[string][]string {
	out := make(map[string][]string, len(a)+len(b))
	for _, m := range []map[string][]string{a, b} {
		for id, models := range m {
			out[id] = append(out[id], models...)
		}
	}
	for id, models := range out {
		slices.Sort(models)
		out[id] = slices.Compact(models)
	}
	return out
}

// routedOf lists, per live worker, the registered model versions it holds ready: exactly
// the replicas the translated configuration routes to.
func routedOf(reg *registry.Registry, snap residency.Snapshot) map[string][]string {
	out := map[string][]string{}
	for id := range snap.Workers {
		var models []string
		for m, r := range snap.Replicas[id] {
			if _, ok := reg.Model(m.Name); ok && r.State == placement.StateReady.String() {
				models = append(models, m.String())
			}
		}
		slices.Sort(models)
		out[id] = models
	}
	return out
}

// stateOf turns a residency snapshot into the translator's input. Only ready replicas route.
func stateOf(reg *registry.Registry, snap residency.Snapshot) translate.State {
	st := translate.State{Registry: reg, Ready: map[placement.ModelVersion][]string{}, GRPC: map[string]string{}}
	for id, w := range snap.Workers {
		st.Workers = append(st.Workers, w.DataAddr)
		if w.GRPCAddr != "" && w.GRPCAddr != w.DataAddr {
			st.GRPC[w.DataAddr] = w.GRPCAddr
		}
		for m, r := range snap.Replicas[id] {
			if r.State == placement.StateReady.String() {
				st.Ready[m] = append(st.Ready[m], w.DataAddr)
			}
		}
	}
	return st
}

type metrics struct {
	buildDuration    prometheus.Histogram
	registryRejected prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		buildDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "mesh_controlplane_build_duration_seconds",
			Help: "Time to translate the state into xDS resources.", Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)}),
		registryRejected: prometheus.NewCounter(prometheus.CounterOpts{Name: "mesh_controlplane_registry_rejected_total",
			Help: "Registry file changes rejected as invalid."}),
	}
	if reg != nil {
		reg.MustRegister(m.buildDuration, m.registryRejected)
	}
	return m
}
