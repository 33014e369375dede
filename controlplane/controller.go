package controlplane

import (
	"context"
	"errors"
	"log/slog"
	"maps"
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
	// Models, if not nil, adds models to the registry file's (KServe InferenceServices,
	// package kserve), before Traffic applies.
	Models Source
	// Traffic, if not nil, replaces models' traffic rules in the registry before it is
	// translated and published (Istio VirtualServices, package istio).
	Traffic Source
	// Status, if not nil, is shown the registry in force and the residency after each push
	// (kserve.Source writes InferenceServices' statuses from them).
	Status Observer
}

// Source changes the registry in force: it adds models or replaces traffic rules.
type Source interface {
	// Run watches the source until ctx ends, calling changed once it is first known and
	// after each change.
	Run(ctx context.Context, changed func()) error
	// Apply returns the registry in force for reg. Safe concurrently with Run.
	Apply(reg *registry.Registry) *registry.Registry
}

// Observer is shown each pushed state; Observe must not block.
type Observer interface {
	Observe(inForce *registry.Registry, snap residency.Snapshot)
}

// Seeder is a Traffic that can start from the rules the mesh last published to Redis (by
// this replica or another, in an earlier run) rather than from none, so that a replica that
// restarts keeps in force what the others do. Run calls Seed once, with the published
// registry, before it runs the Traffic; not at all when none was published or Redis could
// not be read.
type Seeder interface {
	Seed(published *registry.Registry)
}

// Pusher serves configurations to the gateways; *xds.Server is the implementation. Push
// makes res the served configuration and blocks until the gateways acknowledged it or a
// timeout of the Pusher's passed; it returns an error wrapping xds.ErrNotAcknowledged when
// res is served but some gateway did not acknowledge it. The controller calls Push from
// one goroutine only.
type Pusher interface {
	Push(ctx context.Context, res translate.Resources) error
}

var _ Pusher = (*xds.Server)(nil)

// Controller reconciles state into configuration. Run owns all its goroutines.
type Controller struct {
	cfg     Config
	rdb     redis.UniversalClient
	keys    residency.Keys
	xds     Pusher
	log     *slog.Logger
	metrics *metrics
	routed  *routedSets
	// retained is the loop's memory of clusters whose last replica went.
	retained *retention
	// ready is set once a configuration was pushed.
	ready atomic.Bool
}

// Ready reports whether the controller has pushed a configuration: until then a gateway
// connecting here would get none (the traffic rules or the residency may not be known yet).
func (c *Controller) Ready() bool { return c.ready.Load() }

// New returns a controller pushing through p.
func New(cfg Config, rdb redis.UniversalClient, keys residency.Keys, p Pusher, log *slog.Logger, reg prometheus.Registerer) *Controller {
	routed := &routedSets{rdb: rdb, keys: keys, id: cfg.ID, log: log,
		// Three resyncs, then keepAfterSilence; a replica that stops counts three resyncs,
		// time for its gateways to reconnect to another and take its configuration.
		keep: 3*cfg.Watch.Resync + keepAfterSilence, retire: 3 * cfg.Watch.Resync}
	return &Controller{cfg: cfg, rdb: rdb, keys: keys, xds: p, log: log, metrics: newMetrics(reg), routed: routed,
		retained: newRetention(cfg.Translate.RouteTimeout)}
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
	if s, ok := c.cfg.Traffic.(Seeder); ok {
		// The rules in force when this replica (or another) last published: the last
		// accepted versions of VirtualServices rejected since stay in force here too.
		if published, err := residency.PublishedRegistry(ctx, c.rdb, c.keys); err == nil && published != nil {
			s.Seed(published)
		}
	}
	g.Go(func() error { return c.routed.renew(ctx, c.cfg.Watch.Resync) })
	// Watched from the start, so that no edit made while the traffic rules load is missed;
	// its events wait in the channel for the loop.
	g.Go(func() error {
		return WatchRegistry(ctx, c.cfg.RegistryPath, c.log, func(r *registry.Registry) { send(event{registry: r}) }, func(err error) {
			c.metrics.registryRejected.Inc()
			c.log.ErrorContext(ctx, "registry file rejected; the last good registry stays in force", "error", err)
		})
	})
	for _, src := range []Source{c.cfg.Models, c.cfg.Traffic} {
		if src == nil {
			continue
		}
		// Nothing is published or pushed before every source is known, so that a restart
		// does not briefly drop their models or put the file's rules back in force.
		known := make(chan struct{})
		var once sync.Once
		g.Go(func() error {
			return src.Run(ctx, func() {
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
	published := ""
	republish := time.NewTicker(c.cfg.Watch.Resync)
	defer republish.Stop()
	digest := reg.Digest() // reg's, computed once per change of reg (it encodes the registry)
	// publish writes the registry when it changed; with verify, also when Redis lost it (a
	// restart that came back empty), which only the periodic check needs to ask Redis about.
	publish := func(verify bool) {
		if published == digest && (!verify || c.rdb.Exists(ctx, c.keys.Registry()).Val() == 1) {
			return
		}
		if err := residency.PublishRegistry(ctx, c.rdb, c.keys, reg); err != nil {
			c.log.WarnContext(ctx, "publish registry to redis; will retry", "error", err)
			return
		}
		published = digest
		c.log.InfoContext(ctx, "registry published", "models", len(reg.Models), "digest", published)
	}
	publish(false)
	// pushed is the input of the last push every gateway acknowledged, with its registry's
	// digest: a resync that finds the same state translates and pushes nothing.
	var pushed *translate.State
	pushedDigest := ""
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
		if next := c.inForce(file); next != reg {
			reg, digest = next, next.Digest()
		}
		publish(false)
		if snap == nil {
			continue // no residency read yet: nothing is known to be routable
		}
		start := time.Now()
		st := stateOf(reg, *snap)
		st.Retained = c.retained.update(st, start)
		if pushed == nil || pushedDigest != digest || !sameRouting(*pushed, st) {
			pushed = nil
			acked, err := c.push(ctx, reg, *snap, st, start)
			if err != nil {
				c.log.ErrorContext(ctx, "translate state", "error", err)
				continue
			}
			if acked {
				pushed, pushedDigest = &st, digest
			}
		}
		if c.cfg.Status != nil {
			c.cfg.Status.Observe(reg, *snap)
		}
	}
}

// push translates st (of reg and snap; started at start, for the build time) and pushes it
// with the routed sets around it. It returns whether every gateway acknowledged it, and an
// error only when st did not translate; a failed push is logged here.
func (c *Controller) push(ctx context.Context, reg *registry.Registry, snap residency.Snapshot, st translate.State, start time.Time) (bool, error) {
	res, err := translate.Translate(c.cfg.Translate, st)
	c.metrics.buildDuration.Observe(time.Since(start).Seconds())
	if err != nil {
		return false, err
	}
	c.routed.load(ctx, slices.Collect(maps.Keys(snap.Workers)))
	err = c.pushRouted(ctx, res, routedOf(reg, snap))
	if err == nil || errors.Is(err, xds.ErrNotAcknowledged) {
		c.ready.Store(true) // served, even if some gateway was slow or refused it
	}
	if err != nil && ctx.Err() == nil {
		c.log.ErrorContext(ctx, "push configuration; the routed sets keep the replicas of both configurations", "error", err)
	}
	return err == nil, nil
}

// sameRouting reports whether a and b, of the same registry, translate alike: the same
// workers, ready replicas, gRPC addresses and retained versions, whatever their order.
func sameRouting(a, b translate.State) bool {
	sameSet := func(x, y []string) bool {
		return len(x) == len(y) && slices.Equal(slices.Sorted(slices.Values(x)), slices.Sorted(slices.Values(y)))
	}
	if !sameSet(a.Workers, b.Workers) || !maps.Equal(a.GRPC, b.GRPC) || !maps.Equal(a.Retained, b.Retained) || len(a.Ready) != len(b.Ready) {
		return false
	}
	for m, addrs := range a.Ready {
		if other, ok := b.Ready[m]; !ok || !sameSet(addrs, other) {
			return false
		}
	}
	return true
}

// pushRouted pushes res with the routed sets around it. They lead the push for replicas it
// adds (a gateway that acknowledges early routes to them before the others do) and lag it
// for replicas it removes: before the push they hold both, after it next, what every gateway
// acknowledged. A push some gateway did not acknowledge leaves both in place.
func (c *Controller) pushRouted(ctx context.Context, res translate.Resources, next map[string][]string) error {
	c.routed.record(ctx, unionRouted(c.routed.current(), next))
	if err := c.xds.Push(ctx, res); err != nil {
		return err
	}
	c.routed.record(ctx, next)
	return nil
}

// inForce is the registry that is translated and published: the file's, with c.cfg.Models'
// models and c.cfg.Traffic's rules when there are any.
func (c *Controller) inForce(file *registry.Registry) *registry.Registry {
	reg := file
	for _, src := range []Source{c.cfg.Models, c.cfg.Traffic} {
		if src != nil {
			reg = src.Apply(reg)
		}
	}
	return reg
}

// keepAfterSilence is how long the routed sets of a control plane that stopped renewing
// them still count: it may be serving gateways while it cannot reach Redis.
const keepAfterSilence = 2 * time.Minute

// routedOf lists, per live worker, the registered model versions it holds ready: exactly
// the replicas the translated configuration routes to.
func routedOf(reg *registry.Registry, snap residency.Snapshot) map[string][]string {
	out := map[string][]string{}
	for id := range snap.Workers {
		var models []string
		for m, r := range snap.Replicas[id] {
			if _, ok := reg.Model(m.Name); ok && r.State == placement.StateReady {
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
			if r.State == placement.StateReady {
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
