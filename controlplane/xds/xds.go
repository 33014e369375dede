// Package xds serves the gateway Envoy's configuration over ADS (state-of-the-world and
// delta) with go-control-plane, and pushes each new configuration make-before-break: new
// clusters and endpoints first, routes once every Envoy has acknowledged them, removals last.
package xds

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/modelmesh/mesh/controlplane/translate"
)

// nodeGroup is the one cache key: every gateway Envoy gets the same configuration.
const nodeGroup = "gateway"

type groupHash struct{}

func (groupHash) ID(*corev3.Node) string { return nodeGroup }

// Config times the pushes.
type Config struct {
	// AckTimeout bounds the wait for every connected Envoy to acknowledge a phase.
	AckTimeout time.Duration
}

// Server holds the configuration, serves it and tracks what each Envoy acknowledged.
// Push must not be called concurrently with itself; everything else is safe concurrently.
type Server struct {
	cfg     Config
	cache   cachev3.SnapshotCache
	acks    *acks
	log     *slog.Logger
	metrics *Metrics

	current translate.Resources
	// currentVersions are current's versions (versions), kept so that a push hashes only
	// what it changes.
	currentVersions map[resourcev3.Type]string
}

// New returns a server with an empty configuration.
func New(cfg Config, log *slog.Logger, metrics *Metrics) *Server {
	if metrics == nil {
		metrics = NewMetrics(nil)
	}
	return &Server{cfg: cfg, cache: cachev3.NewSnapshotCache(true, groupHash{}, nil), acks: newAcks(log, metrics), log: log, metrics: metrics}
}

// Register adds the ADS service (both protocols) to gs. ctx bounds go-control-plane's
// server and should live as long as gs serves.
func (s *Server) Register(ctx context.Context, gs *grpc.Server) {
	srv := serverv3.NewServer(ctx, s.cache, s.acks.callbacks())
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, srv)
}

// ErrNotAcknowledged: Push served the whole configuration, but some Envoy did not acknowledge
// a phase within AckTimeout (it was slow, or rejected it): what that Envoy routes is not
// known.
var ErrNotAcknowledged = errors.New("not every envoy acknowledged the configuration")

// Push makes next the served configuration, in three phases so that no route ever names a
// cluster an Envoy does not have: (1) clusters and endpoints of next added to the current
// ones, routes unchanged; (2) routes of next; (3) clusters and endpoints only of next. When
// next has no cluster the current configuration lacks, (1) and (2) are one phase. Each
// phase but the last waits (up to AckTimeout) for every connected Envoy to acknowledge
// it; one that is not acknowledged in time is gone on from, and Push then returns
// ErrNotAcknowledged. Resource versions are content hashes, so pushing an unchanged
// configuration, or the same one from a restarted control plane, sends Envoy nothing.
func (s *Server) Push(ctx context.Context, next translate.Resources) error {
	start := time.Now()
	prev := s.current
	union := translate.Resources{
		Listeners: next.Listeners,
		Clusters:  merge(prev.Clusters, next.Clusters),
		Endpoints: merge(prev.Endpoints, next.Endpoints),
	}
	// Each resource set is hashed once: hashing a type marshals every one of its resources
	// (about 30 ms for the whole configuration at 10,000 models), and the phases share sets.
	// The union is next's set when next removes nothing (it holds every name of prev).
	prevRoutes := s.currentVersions[resourcev3.RouteType]
	if s.currentVersions == nil {
		prevRoutes = hashOf(prev.Routes)
	}
	nextV := map[resourcev3.Type]string{resourcev3.ListenerType: hashOf(next.Listeners), resourcev3.RouteType: hashOf(next.Routes)}
	unionV := map[resourcev3.Type]string{resourcev3.ListenerType: nextV[resourcev3.ListenerType]}
	for typ, sets := range map[resourcev3.Type][2][]types.Resource{
		resourcev3.ClusterType: {union.Clusters, next.Clusters}, resourcev3.EndpointType: {union.Endpoints, next.Endpoints},
	} {
		unionV[typ] = hashOf(sets[0])
		nextV[typ] = unionV[typ]
		if len(sets[0]) != len(sets[1]) {
			nextV[typ] = hashOf(sets[1])
		}
	}
	with := func(base map[resourcev3.Type]string, routes string) map[resourcev3.Type]string {
		out := maps.Clone(base)
		out[resourcev3.RouteType] = routes
		return out
	}
	type phase struct {
		name, metric string // as logged; as the phase label
		res          translate.Resources
		versions     map[resourcev3.Type]string
		wait         []resourcev3.Type
	}
	var phases []phase
	if len(union.Clusters) > len(prev.Clusters) {
		// New clusters must be in every Envoy before a route names them. Without new ones
		// (a replica added to a cluster kept for its model, recently cold; a rule edited) the
		// routes go with the endpoints in one phase: a route that arrives before its
		// endpoints sends its requests to the cluster's fallback, the cold path.
		phases = append(phases, phase{"add clusters", "add_clusters", translate.Resources{Listeners: union.Listeners, Clusters: union.Clusters, Endpoints: union.Endpoints, Routes: prev.Routes},
			with(unionV, prevRoutes), []resourcev3.Type{resourcev3.ClusterType, resourcev3.EndpointType}})
	}
	phases = append(phases,
		phase{"switch routes", "switch_routes", translate.Resources{Listeners: union.Listeners, Clusters: union.Clusters, Endpoints: union.Endpoints, Routes: next.Routes},
			with(unionV, nextV[resourcev3.RouteType]), []resourcev3.Type{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.RouteType, resourcev3.ListenerType}},
		phase{"remove clusters", "remove_clusters", next, nextV, nil})
	last := versions(translate.Resources{})
	acked := true
	for _, p := range phases {
		v := p.versions
		if err := s.set(ctx, p.res, v); err != nil {
			return fmt.Errorf("push phase %q: %w", p.name, err)
		}
		for _, typ := range p.wait {
			if v[typ] == last[typ] {
				continue // unchanged since the previous phase: already acknowledged
			}
			wctx, cancel := context.WithTimeout(ctx, s.cfg.AckTimeout)
			waited := time.Now()
			err := s.acks.wait(wctx, typ, v[typ], p.metric)
			cancel()
			if ctx.Err() != nil {
				// Shutting down: pushing the next phase without its acknowledgement would
				// break make-before-break.
				return fmt.Errorf("push phase %q: %w", p.name, ctx.Err())
			}
			s.log.DebugContext(ctx, "phase acknowledged", "phase", p.name, "type", shortType(typ), "wait_ms", time.Since(waited).Milliseconds(), "error", err)
			if err != nil {
				acked = false
				s.metrics.ackTimeouts.Inc()
				s.log.WarnContext(ctx, "envoy did not acknowledge in time; going on", "phase", p.name, "type", typ, "version", v[typ], "error", err)
			}
		}
		last = v
	}
	s.current, s.currentVersions = next, nextV
	s.metrics.pushDuration.Observe(time.Since(start).Seconds())
	s.log.DebugContext(ctx, "configuration pushed", "duration_ms", time.Since(start).Milliseconds(),
		"clusters", len(next.Clusters), "routes_version", last[resourcev3.RouteType])
	for typ, n := range map[string]int{"listener": len(next.Listeners), "route": len(next.Routes), "cluster": len(next.Clusters), "endpoint": len(next.Endpoints)} {
		s.metrics.resources.WithLabelValues(typ).Set(float64(n))
	}
	if !acked {
		return ErrNotAcknowledged
	}
	return nil
}

func (s *Server) set(ctx context.Context, res translate.Resources, v map[resourcev3.Type]string) error {
	snap := &cachev3.Snapshot{}
	for typ, items := range map[resourcev3.Type][]types.Resource{
		resourcev3.ListenerType: res.Listeners, resourcev3.RouteType: res.Routes,
		resourcev3.ClusterType: res.Clusters, resourcev3.EndpointType: res.Endpoints,
	} {
		snap.Resources[cachev3.GetResponseType(typ)] = cachev3.NewResources(v[typ], items)
	}
	return s.cache.SetSnapshot(ctx, nodeGroup, snap)
}

// versions hashes each type's resources (hashOf).
func versions(res translate.Resources) map[resourcev3.Type]string {
	return map[resourcev3.Type]string{
		resourcev3.ListenerType: hashOf(res.Listeners), resourcev3.RouteType: hashOf(res.Routes),
		resourcev3.ClusterType: hashOf(res.Clusters), resourcev3.EndpointType: hashOf(res.Endpoints),
	}
}

// hashOf is the version of a resource list; deterministic marshalling makes equal lists hash
// equal in every process.
func hashOf(items []types.Resource) string {
	h := sha256.New()
	for _, r := range items {
		b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(r) // generated messages always marshal
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}

// merge gives the union of two resource lists by name, b's version winning, sorted by name.
func merge(a, b []types.Resource) []types.Resource {
	byName := map[string]types.Resource{}
	var names []string
	for _, list := range [][]types.Resource{a, b} {
		for _, r := range list {
			n := cachev3.GetResourceName(r)
			if _, ok := byName[n]; !ok {
				names = append(names, n)
			}
			byName[n] = r
		}
	}
	slices.Sort(names)
	out := make([]types.Resource, len(names))
	for i, n := range names {
		out[i] = byName[n]
	}
	return out
}

// acks tracks, per xDS stream, the version of each resource type the Envoy on it last
// acknowledged, for both protocols.
type acks struct {
	log     *slog.Logger
	metrics *Metrics

	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every change
	streams map[int64]map[string]string
	nodes   map[int64]string
	// nonces maps a delta response nonce to its type and version.
	nonces map[string][2]string
}

func newAcks(log *slog.Logger, m *Metrics) *acks {
	return &acks{log: log, metrics: m, changed: make(chan struct{}), streams: map[int64]map[string]string{},
		nodes: map[int64]string{}, nonces: map[string][2]string{}}
}

func (a *acks) bump() {
	close(a.changed)
	a.changed = make(chan struct{})
}

func (a *acks) callbacks() serverv3.Callbacks {
	return serverv3.CallbackFuncs{
		StreamOpenFunc:      func(context.Context, int64, string) error { a.metrics.streams.Inc(); return nil },
		DeltaStreamOpenFunc: func(context.Context, int64, string) error { a.metrics.streams.Inc(); return nil },
		StreamClosedFunc:    func(id int64, _ *corev3.Node) { a.closed(id) },
		DeltaStreamClosedFunc: func(id int64, _ *corev3.Node) {
			a.closed(id)
		},
		StreamRequestFunc: func(id int64, r *discoveryv3.DiscoveryRequest) error {
			a.request(id, r.GetNode(), r.GetTypeUrl(), r.GetResponseNonce(), r.GetVersionInfo(), r.GetErrorDetail().GetMessage(), r.GetErrorDetail() != nil)
			return nil
		},
		StreamDeltaResponseFunc: func(_ int64, _ *discoveryv3.DeltaDiscoveryRequest, resp *discoveryv3.DeltaDiscoveryResponse) {
			a.mu.Lock()
			a.nonces[resp.GetNonce()] = [2]string{resp.GetTypeUrl(), resp.GetSystemVersionInfo()}
			a.mu.Unlock()
		},
		StreamDeltaRequestFunc: func(id int64, r *discoveryv3.DeltaDiscoveryRequest) error {
			a.mu.Lock()
			sent, ok := a.nonces[r.GetResponseNonce()]
			delete(a.nonces, r.GetResponseNonce())
			a.mu.Unlock()
			version := ""
			if ok {
				version = sent[1]
			}
			a.request(id, r.GetNode(), r.GetTypeUrl(), r.GetResponseNonce(), version, r.GetErrorDetail().GetMessage(), r.GetErrorDetail() != nil)
			return nil
		},
	}
}

// request records a subscription, an ACK (a request answering a nonce without error) or a
// NACK (with error: logged and counted, the Envoy keeps its previous version).
func (a *acks) request(stream int64, node *corev3.Node, typeURL, nonce, version, errMsg string, nack bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if node.GetId() != "" {
		a.nodes[stream] = node.GetId()
	}
	st := a.streams[stream]
	if st == nil {
		st = map[string]string{}
		a.streams[stream] = st
	}
	if _, ok := st[typeURL]; !ok {
		st[typeURL] = "" // subscribed, nothing acknowledged yet
	}
	switch {
	case nack:
		a.metrics.nacks.WithLabelValues(shortType(typeURL)).Inc()
		a.log.Error("envoy rejected configuration (NACK)", "node", a.nodes[stream], "type", shortType(typeURL), "error", errMsg)
	case nonce != "" && version != "":
		st[typeURL] = version
	}
	a.bump()
}

func (a *acks) closed(stream int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.streams, stream)
	delete(a.nodes, stream)
	a.metrics.streams.Dec()
	a.bump()
}

// wait blocks until every stream subscribed to typ has acknowledged version, or ctx ends,
// and records how long that took for phase. With no Envoy connected it returns at once.
func (a *acks) wait(ctx context.Context, typ, version, phase string) error {
	start := time.Now()
	for {
		a.mu.Lock()
		done := true
		for _, st := range a.streams {
			if v, ok := st[typ]; ok && v != version {
				done = false
			}
		}
		changed := a.changed
		a.mu.Unlock()
		if done {
			a.metrics.ackLatency.WithLabelValues(phase, shortType(typ)).Observe(time.Since(start).Seconds())
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func shortType(typeURL string) string {
	switch typeURL {
	case resourcev3.ClusterType:
		return "cluster"
	case resourcev3.EndpointType:
		return "endpoint"
	case resourcev3.RouteType:
		return "route"
	case resourcev3.ListenerType:
		return "listener"
	}
	return "other"
}

// subscribed reports whether some stream has asked for typ.
func (a *acks) subscribed(typ string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, st := range a.streams {
		if _, ok := st[typ]; ok {
			return true
		}
	}
	return false
}
