package translate

import (
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/internal/registry"
	"github.com/modelmesh/mesh/internal/wire"
)

// Pooled routing (Config.Pooled): every registered version has its routes whether or not a
// replica is ready, and they all name one cluster, PoolCluster, whose hosts are the workers,
// each carrying in its metadata the versions it holds ready. Envoy's subset load balancer
// sends a route's requests to the hosts whose list names the route's version; the fallback
// listener, at priority 1, names every registered version, so a version with no ready
// replica (or whose replicas are all ejected) takes the cold path, as a model cluster's
// last host does. A load or an eviction then changes one cluster's endpoints and nothing
// else: no route configuration, no cluster, one push phase.
const (
	PoolCluster = "models"
	// subsetKey is the endpoint metadata key (namespace envoy.lb) listing a host's versions.
	subsetKey = "mv"
)

// subsetMatch is a route's metadata_match selecting the hosts that hold m.
func subsetMatch(m placement.ModelVersion) *corev3.Metadata {
	return &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{wire.MetadataNamespace: {
		Fields: map[string]*structpb.Value{subsetKey: structpb.NewStringValue(m.String())}}}}
}

// poolCluster is PoolCluster: a model cluster (outlier detection and retry budget as
// modelCluster's, over every worker) with the subset load balancer keyed on subsetKey.
func poolCluster(workers int, protocol map[string]*anypb.Any) *clusterv3.Cluster {
	c := modelCluster(PoolCluster, workers, protocol)
	c.LbSubsetConfig = &clusterv3.Cluster_LbSubsetConfig{
		FallbackPolicy:  clusterv3.Cluster_LbSubsetConfig_NO_FALLBACK,
		SubsetSelectors: []*clusterv3.Cluster_LbSubsetConfig_LbSubsetSelector{{Keys: []string{subsetKey}}},
		ListAsAny:       true,
	}
	return c
}

// poolAssignment is PoolCluster's endpoints: each worker with a ready replica, listing the
// registered versions it holds, then the fallback listener listing every registered version.
func poolAssignment(reg *registry.Registry, ready map[placement.ModelVersion][]string) *endpointv3.ClusterLoadAssignment {
	held := map[string][]any{}
	var all []any
	if reg != nil {
		for _, m := range reg.Models {
			for _, v := range m.Versions {
				mv := placement.ModelVersion{Name: m.Name, Version: v.Version}
				all = append(all, mv.String())
				for _, a := range ready[mv] {
					held[a] = append(held[a], mv.String())
				}
			}
		}
	}
	var eps []*endpointv3.LbEndpoint
	for _, a := range sortedKeys(held) {
		host, port, err := splitHostPort(a)
		if err != nil {
			continue // as assignment: a bad residency record is skipped
		}
		ep := lbEndpoint(host, port)
		ep.Metadata = hostVersions(held[a])
		eps = append(eps, ep)
	}
	fallback := fallbackEndpoint()
	fallback.Metadata = hostVersions(all)
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: PoolCluster,
		Policy: &endpointv3.ClusterLoadAssignment_Policy{OverprovisioningFactor: wrapperspb.UInt32(fallbackOverprovisioning)}}
	if len(eps) > 0 {
		cla.Endpoints = append(cla.Endpoints, &endpointv3.LocalityLbEndpoints{LbEndpoints: eps})
	}
	cla.Endpoints = append(cla.Endpoints, &endpointv3.LocalityLbEndpoints{Priority: uint32(len(cla.Endpoints)), LbEndpoints: []*endpointv3.LbEndpoint{fallback}})
	return cla
}

func hostVersions(versions []any) *corev3.Metadata {
	list, _ := structpb.NewList(versions) // strings only: never fails
	return &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{wire.MetadataNamespace: {
		Fields: map[string]*structpb.Value{subsetKey: structpb.NewListValue(list)}}}}
}
