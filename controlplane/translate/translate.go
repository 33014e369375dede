// Package translate turns the mesh's state (registry and residency) into the gateway Envoy's
// xDS resources. It is a pure function of its input, so equal states give byte-equal
// resources, and a restarted control plane pushes no change. One file per resource:
// listener.go (the gateway listener and its filters), routes.go (the route configuration),
// clusters.go (clusters and their endpoints), tracing.go (the gateway's tracer).
package translate

import (
	"slices"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/internal/registry"
)

// Names shared with the other parts of the mesh. The headers, the metadata key and the
// model clusters' names are the mesh's wire contract (package wire).
const (
	ListenerName = "gateway"
	// FallbackListener is the internal listener of the cold path behind the model clusters.
	FallbackListener = "fallback"
	RouteConfigName  = "models"
	// WorkersCluster holds every live worker; ext_proc picks the host.
	WorkersCluster = "workers"
	// ExtProcCluster is the ext_proc service.
	ExtProcCluster = "extproc"
	extProcFilter  = "envoy.filters.http.ext_proc"
	faultFilter    = "envoy.filters.http.fault"
	wasmFilter     = "envoy.filters.http.wasm"
	stripFilter    = "envoy.filters.http.header_mutation"
)

// Config is the part of the gateway's configuration that does not come from state.
type Config struct {
	// ListenerAddress and ListenerPort are where the gateway accepts requests.
	ListenerAddress string
	ListenerPort    uint32
	// ExtProcAddress is the ext_proc service, "host:port".
	ExtProcAddress string
	// WasmPath is the modelid.wasm file on the Envoy host.
	WasmPath string
	// WasmMaxModels bounds the filter's per-model stats.
	WasmMaxModels int
	// RouteTimeout bounds an upstream request (not the wait for a cold load, which ext_proc
	// holds before routing).
	RouteTimeout time.Duration
	// HotTryTimeout bounds one try of a request on the hot path, after which it is retried
	// on another replica or the cold path (routes.go); 0: no bound but RouteTimeout. A
	// rule's perTryTimeout replaces it.
	HotTryTimeout time.Duration
	// ExtProcMessageTimeout is Envoy's wait for an ext_proc answer; MaxMessageTimeout is the
	// most ext_proc may extend it to while a load runs.
	ExtProcMessageTimeout time.Duration
	MaxMessageTimeout     time.Duration
	// Tracing, when set, has the gateway trace requests (tracing.go); nil: no tracing.
	Tracing *Tracing
}

// State is the proto-free input: the registry, the live workers and which replicas are ready.
type State struct {
	Registry *registry.Registry
	// Workers are the live workers' data addresses ("ip:port").
	Workers []string
	// Ready maps a model version to the data addresses of its ready replicas.
	Ready map[placement.ModelVersion][]string
	// GRPC maps a worker's data address to its gRPC address, for workers that serve gRPC on
	// another port (Triton). Models with replicas on such workers get a gRPC cluster and
	// gRPC routes of their own.
	GRPC map[string]string
	// Retained are model versions whose last ready replica went recently (the value: they
	// had a gRPC twin cluster). Their clusters stay, with the fallback listener as the only
	// endpoint, while their routes take the cold path: a request still in flight on one of
	// them (on a worker that hung, its try not yet timed out) must find its cluster to
	// retry in, on the cold path, rather than none.
	Retained map[placement.ModelVersion]bool
}

// Resources are the xDS resources of one state, each list sorted by name.
type Resources struct {
	Listeners []types.Resource
	Routes    []types.Resource
	Clusters  []types.Resource
	Endpoints []types.Resource
}

// Translate builds the gateway's resources for st. Models whose routed versions all have a
// ready replica get routes straight to per-version clusters with ext_proc disabled; all other
// requests take the catch-all route through ext_proc to the workers pool.
func Translate(cfg Config, st State) (Resources, error) {
	var res Resources
	listener, err := buildListener(cfg)
	if err != nil {
		return res, err
	}
	fallback, err := buildFallback(cfg)
	if err != nil {
		return res, err
	}
	res.Listeners = []types.Resource{fallback, listener} // sorted by name

	ready := map[placement.ModelVersion][]string{}
	for m, addrs := range st.Ready {
		if len(addrs) > 0 {
			ready[m] = sortedUnique(addrs)
		}
	}
	split := grpcSplit(ready, st.GRPC)
	routes, err := buildRoutes(cfg, st.Registry, ready, split)
	if err != nil {
		return res, err
	}
	res.Routes = []types.Resource{routes}
	res.Clusters, res.Endpoints, err = buildClusters(cfg, st, ready, split)
	return res, err
}

// GRPCTwins lists the model versions st routes (those with a ready replica), each with
// whether it gets a gRPC twin cluster (grpcSplit).
func GRPCTwins(st State) map[placement.ModelVersion]bool {
	ready := map[placement.ModelVersion][]string{}
	for m, addrs := range st.Ready {
		if len(addrs) > 0 {
			ready[m] = addrs
		}
	}
	split := grpcSplit(ready, st.GRPC)
	out := make(map[placement.ModelVersion]bool, len(ready))
	for m := range ready {
		out[m] = split[m]
	}
	return out
}

// grpcSplit gives the ready model versions with a replica on a worker that serves gRPC at
// an address of its own (Triton): their gRPC traffic goes to a twin cluster of their own.
func grpcSplit(ready map[placement.ModelVersion][]string, grpc map[string]string) map[placement.ModelVersion]bool {
	split := map[placement.ModelVersion]bool{}
	for m, addrs := range ready {
		for _, a := range addrs {
			if g, ok := grpc[a]; ok && g != a {
				split[m] = true
			}
		}
	}
	return split
}

// ads is the config source of the resources the gateway discovers: the ADS stream itself.
func ads() *corev3.ConfigSource {
	return &corev3.ConfigSource{ResourceApiVersion: corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}
}

func socketAddress(host string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}
}

func sortedUnique(s []string) []string {
	out := slices.Clone(s)
	slices.Sort(out)
	return slices.Compact(out)
}
