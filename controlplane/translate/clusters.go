package translate

import (
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	overridehostv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/override_host/v3"
	roundrobinv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/round_robin/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	metadatav3 "github.com/envoyproxy/go-control-plane/envoy/type/metadata/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/internal/wire"
)

// buildClusters gives the clusters and their endpoints, each sorted by name: one EDS cluster
// per ready version of a registered model (and its gRPC twin for the versions in split), the
// workers pool, ext_proc and, with tracing on, the collector.
func buildClusters(cfg Config, st State, ready map[placement.ModelVersion][]string, split map[placement.ModelVersion]bool) (clusterList, endpointList []types.Resource, err error) {
	var clusters []*clusterv3.Cluster
	var endpoints []*endpointv3.ClusterLoadAssignment
	protocol, err := followDownstream()
	if err != nil {
		return nil, nil, err
	}
	for _, m := range sortedModels(ready) {
		if st.Registry == nil {
			break
		}
		if _, ok := st.Registry.Model(m.Name); !ok {
			continue // resident but no longer registered: not routed
		}
		c := modelCluster(wire.ClusterName(m), len(ready[m]), protocol)
		clusters = append(clusters, c)
		endpoints = append(endpoints, withFallback(assignment(wire.ClusterName(m), ready[m])))
		if split[m] {
			name := wire.GRPCClusterName(m)
			gc := modelCluster(name, len(ready[m]), protocol)
			var addrs []string
			for _, a := range ready[m] {
				addrs = append(addrs, grpcAddr(st.GRPC, a))
			}
			clusters = append(clusters, gc)
			endpoints = append(endpoints, withFallback(assignment(name, sortedUnique(addrs))))
		}
	}
	for _, m := range sortedModels(st.Retained) {
		if _, routed := ready[m]; routed || st.Registry == nil {
			continue
		}
		if _, ok := st.Registry.Model(m.Name); !ok {
			continue
		}
		names := []string{wire.ClusterName(m)}
		if st.Retained[m] {
			names = append(names, wire.GRPCClusterName(m))
		}
		for _, name := range names {
			// Configured with no replica (nothing may be ejected), unlike the cluster with
			// replicas, so that Envoy replaces the cluster when its model's replicas come
			// back. Kept as it was, the cluster took the replica but then went on sending
			// a hung replica's retries to it after ejecting it, instead of to the fallback
			// (TestMeshRichTrafficRules, "back from cold"). Requests in flight when it is
			// replaced finish, and retry, in the cluster of the same name.
			c := modelCluster(name, 0, protocol)
			clusters = append(clusters, c)
			endpoints = append(endpoints, fallbackOnly(name))
		}
	}
	pool, err := workersCluster(protocol)
	if err != nil {
		return nil, nil, err
	}
	clusters = append(clusters, pool)
	pooled := slices.Clone(st.Workers)
	for _, w := range st.Workers {
		pooled = append(pooled, grpcAddr(st.GRPC, w)) // ext_proc sends gRPC to a worker's gRPC address
	}
	endpoints = append(endpoints, assignment(WorkersCluster, sortedUnique(pooled)))
	ext, err := extProcCluster(cfg.ExtProcAddress)
	if err != nil {
		return nil, nil, err
	}
	clusters = append(clusters, ext)
	if cfg.Tracing != nil {
		tc, err := tracingCluster(cfg.Tracing.CollectorAddress)
		if err != nil {
			return nil, nil, err
		}
		clusters = append(clusters, tc)
	}
	slices.SortFunc(clusters, func(a, b *clusterv3.Cluster) int { return strings.Compare(a.Name, b.Name) })
	slices.SortFunc(endpoints, func(a, b *endpointv3.ClusterLoadAssignment) int { return strings.Compare(a.ClusterName, b.ClusterName) })
	for _, c := range clusters {
		clusterList = append(clusterList, c)
	}
	for _, e := range endpoints {
		endpointList = append(endpointList, e)
	}
	return clusterList, endpointList, nil
}

func grpcAddr(m map[string]string, data string) string {
	if g, ok := m[data]; ok && g != "" {
		return g
	}
	return data
}

// followDownstream makes a cluster speak to the worker in the client's protocol: HTTP/1.1
// for REST, HTTP/2 for gRPC (the worker splits its port by the connection's first bytes).
func followDownstream() (map[string]*anypb.Any, error) {
	opts, err := anypb.New(&httpv3.HttpProtocolOptions{UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_UseDownstreamProtocolConfig{
		UseDownstreamProtocolConfig: &httpv3.HttpProtocolOptions_UseDownstreamHttpConfig{
			HttpProtocolOptions: &corev3.Http1ProtocolOptions{}, Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}}}})
	if err != nil {
		return nil, err
	}
	return map[string]*anypb.Any{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": opts}, nil
}

// edsCluster is a cluster of name whose endpoints come by EDS, speaking protocol
// (followDownstream: built once per translation, shared by every cluster).
func edsCluster(name string, policy *clusterv3.LoadBalancingPolicy, protocol map[string]*anypb.Any) *clusterv3.Cluster {
	c := &clusterv3.Cluster{
		Name:                          name,
		ClusterDiscoveryType:          &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:              &clusterv3.Cluster_EdsClusterConfig{EdsConfig: ads()},
		ConnectTimeout:                durationpb.New(time.Second),
		TypedExtensionProtocolOptions: protocol,
	}
	if policy != nil {
		c.LoadBalancingPolicy = policy
	} else {
		c.LbPolicy = clusterv3.Cluster_LEAST_REQUEST
	}
	return c
}

// modelCluster is a model version's cluster: its ready replicas, then the fallback
// listener (withFallback). A replica is ejected at its first connection failure or timeout
// (a dead or hung worker; split_external_local_origin_errors keeps the model's own 5xx
// answers out of it), so that the request's retry, and the requests after it, go to the
// other replicas, or to the cold path once none is left, instead of to the dead worker until
// its lease runs out. The control plane removes the worker in its next push (ext_proc ends
// its lease when its management port refuses) or when the lease runs out. At most the
// replicas are ejected, never the fallback as well: Envoy ejects a host only while the share
// already ejected is below MaxEjectionPercent, so replicas/(replicas+1) lets every replica
// go and keeps the last host. When a worker dies or hangs, every request in flight on it
// retries at about the same moment; the retry budget lets each of them retry once at once
// (Envoy's default allows 3 retries in flight per cluster, and fails the rest).
func modelCluster(name string, replicas int, protocol map[string]*anypb.Any) *clusterv3.Cluster {
	c := edsCluster(name, nil, protocol)
	c.OutlierDetection = &clusterv3.OutlierDetection{
		SplitExternalLocalOriginErrors:         true,
		ConsecutiveLocalOriginFailure:          wrapperspb.UInt32(1),
		EnforcingConsecutiveLocalOriginFailure: wrapperspb.UInt32(100),
		EnforcingConsecutive_5Xx:               wrapperspb.UInt32(0),
		EnforcingConsecutiveGatewayFailure:     wrapperspb.UInt32(0),
		EnforcingSuccessRate:                   wrapperspb.UInt32(0),
		EnforcingLocalOriginSuccessRate:        wrapperspb.UInt32(0),
		BaseEjectionTime:                       durationpb.New(10 * time.Second),
		MaxEjectionPercent:                     wrapperspb.UInt32(uint32(100 * replicas / (replicas + 1))),
	}
	c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
		RetryBudget: &clusterv3.CircuitBreakers_Thresholds_RetryBudget{
			BudgetPercent: &typev3.Percent{Value: 100}, MinRetryConcurrency: wrapperspb.UInt32(16)},
	}}}
	return c
}

// withFallback adds the fallback listener to a model cluster's endpoints at priority 1:
// Envoy sends a request there only when no replica at priority 0 is healthy (all ejected).
// The overprovisioning factor keeps every request on the replicas while any one of them
// is healthy (Envoy's default, 1.4, would shift a share to the cold path as soon as one
// of several replicas fails).
func withFallback(cla *endpointv3.ClusterLoadAssignment) *endpointv3.ClusterLoadAssignment {
	cla.Endpoints = append(cla.Endpoints, &endpointv3.LocalityLbEndpoints{Priority: 1, LbEndpoints: []*endpointv3.LbEndpoint{fallbackEndpoint()}})
	cla.Policy = &endpointv3.ClusterLoadAssignment_Policy{OverprovisioningFactor: wrapperspb.UInt32(fallbackOverprovisioning)}
	return cla
}

// fallbackOnly is the endpoints of a retained cluster: the fallback listener alone, at
// priority 0 (Envoy's priorities run from 0 without a gap).
func fallbackOnly(cluster string) *endpointv3.ClusterLoadAssignment {
	return &endpointv3.ClusterLoadAssignment{ClusterName: cluster, Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{fallbackEndpoint()}}}}
}

// fallbackEndpoint is the fallback listener as a cluster's endpoint.
func fallbackEndpoint() *endpointv3.LbEndpoint {
	return &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: internalAddress()}}}
}

// fallbackOverprovisioning is 10000 times Envoy's unit (100): one healthy replica in ten
// thousand still takes all the traffic of its priority.
const fallbackOverprovisioning = 1_000_000

// workersCluster is the pool of every live worker; the override_host policy sends each
// request to the worker ext_proc chose (header or envoy.lb metadata). A chosen host that is
// not in the pool is never used, so a forged value cannot send traffic anywhere else.
func workersCluster(protocol map[string]*anypb.Any) (*clusterv3.Cluster, error) {
	rr, err := anypb.New(&roundrobinv3.RoundRobin{})
	if err != nil {
		return nil, err
	}
	override, err := anypb.New(&overridehostv3.OverrideHost{
		OverrideHostSources: []*overridehostv3.OverrideHost_OverrideHostSource{
			{Header: wire.HeaderDestination},
			{Metadata: &metadatav3.MetadataKey{Key: wire.MetadataNamespace, Path: []*metadatav3.MetadataKey_PathSegment{{
				Segment: &metadatav3.MetadataKey_PathSegment_Key{Key: wire.HeaderDestination}}}}},
		},
		FallbackPolicy: &clusterv3.LoadBalancingPolicy{Policies: []*clusterv3.LoadBalancingPolicy_Policy{{
			TypedExtensionConfig: &corev3.TypedExtensionConfig{Name: "envoy.load_balancing_policies.round_robin", TypedConfig: rr}}}},
	})
	if err != nil {
		return nil, err
	}
	return edsCluster(WorkersCluster, &clusterv3.LoadBalancingPolicy{Policies: []*clusterv3.LoadBalancingPolicy_Policy{{
		TypedExtensionConfig: &corev3.TypedExtensionConfig{Name: "envoy.load_balancing_policies.override_host", TypedConfig: override}}}}, protocol), nil
}

func extProcCluster(addr string) (*clusterv3.Cluster, error) {
	c, err := staticH2Cluster(ExtProcCluster, addr)
	if err != nil {
		return nil, fmt.Errorf("ext_proc address: %w", err)
	}
	return c, nil
}

// staticH2Cluster is a gRPC service at addr ("host:port"; a host name is resolved by DNS).
func staticH2Cluster(name, addr string) (*clusterv3.Cluster, error) {
	host, port, err := splitHostPort(addr)
	if err != nil {
		return nil, err
	}
	h2, err := anypb.New(&httpv3.HttpProtocolOptions{UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{
		ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{
			Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}}}}})
	if err != nil {
		return nil, err
	}
	kind := clusterv3.Cluster_STRICT_DNS
	if net.ParseIP(host) != nil {
		kind = clusterv3.Cluster_STATIC
	}
	return &clusterv3.Cluster{
		Name:                          name,
		ClusterDiscoveryType:          &clusterv3.Cluster_Type{Type: kind},
		ConnectTimeout:                durationpb.New(time.Second),
		TypedExtensionProtocolOptions: map[string]*anypb.Any{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": h2},
		LoadAssignment: &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{
			LbEndpoints: []*endpointv3.LbEndpoint{lbEndpoint(host, port)}}}},
	}, nil
}

func assignment(cluster string, addrs []string) *endpointv3.ClusterLoadAssignment {
	var eps []*endpointv3.LbEndpoint
	for _, a := range addrs {
		host, port, err := splitHostPort(a)
		if err != nil {
			continue // residency records are written by workers; a bad one is skipped, not fatal
		}
		eps = append(eps, lbEndpoint(host, port))
	}
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: cluster}
	if len(eps) > 0 {
		cla.Endpoints = []*endpointv3.LocalityLbEndpoints{{LbEndpoints: eps}}
	}
	return cla
}

func lbEndpoint(host string, port uint32) *endpointv3.LbEndpoint {
	return &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{
		Endpoint: &endpointv3.Endpoint{Address: socketAddress(host, port)}}}
}

func splitHostPort(addr string) (string, uint32, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.ParseUint(p, 10, 16)
	if err != nil || port == 0 {
		return "", 0, fmt.Errorf("%q: bad port", addr)
	}
	return host, uint32(port), nil
}

func sortedModels[V any](m map[placement.ModelVersion]V) []placement.ModelVersion {
	out := make([]placement.ModelVersion, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.SortFunc(out, func(a, b placement.ModelVersion) int { return strings.Compare(a.String(), b.String()) })
	return out
}
