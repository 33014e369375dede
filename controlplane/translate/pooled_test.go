package translate

import (
	"slices"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/internal/wire"
)

// pooledHosts maps each host of the pool's assignment (address, or "fallback") to the
// versions its metadata lists.
func pooledHosts(t *testing.T, res Resources) map[string][]string {
	t.Helper()
	hosts := map[string][]string{}
	for _, r := range res.Endpoints {
		cla := r.(*endpointv3.ClusterLoadAssignment)
		if cla.ClusterName != PoolCluster {
			continue
		}
		for _, loc := range cla.Endpoints {
			for _, ep := range loc.LbEndpoints {
				name := "fallback"
				if sa := ep.GetEndpoint().GetAddress().GetSocketAddress(); sa != nil {
					name = sa.Address
				}
				for _, v := range ep.Metadata.FilterMetadata[wire.MetadataNamespace].Fields[subsetKey].GetListValue().GetValues() {
					hosts[name] = append(hosts[name], v.GetStringValue())
				}
			}
		}
	}
	return hosts
}

func TestPooledRoutesEveryVersionAndListsHeldVersionsPerHost(t *testing.T) {
	pooled := cfg
	pooled.Pooled = true
	st := State{Registry: loadRegistry(t, "two-models.yaml"), Workers: []string{"10.0.0.1:8000", "10.0.0.2:8000"}, Ready: map[placement.ModelVersion][]string{
		mv("fraud", "1"): {"10.0.0.1:8000", "10.0.0.2:8000"}, mv("iris", "1"): {"10.0.0.1:8000"}}}
	res, err := Translate(pooled, st)
	if err != nil {
		t.Fatal(err)
	}
	hosts := pooledHosts(t, res)
	if got := hosts["10.0.0.1"]; !slices.Equal(got, []string{"fraud:1", "iris:1"}) {
		t.Errorf("10.0.0.1 lists %v, want fraud:1 iris:1", got)
	}
	if got := hosts["10.0.0.2"]; !slices.Equal(got, []string{"fraud:1"}) {
		t.Errorf("10.0.0.2 lists %v, want fraud:1", got)
	}
	if got := hosts["fallback"]; len(got) != 3 { // fraud:1, fraud:2, iris:1: every registered version
		t.Errorf("the fallback lists %v, want every registered version", got)
	}
	for _, r := range res.Clusters {
		if name := r.(*clusterv3.Cluster).Name; name == wire.ClusterName(mv("fraud", "1")) || name == wire.ClusterName(mv("iris", "1")) {
			t.Errorf("pooled, a cluster of its own for %s", name)
		}
	}
	// fraud:2 has no replica, yet it has a route: to the pool's subset that only the
	// fallback holds, so that a load changes endpoints and nothing else.
	var subsets []string
	for _, r := range res.Routes {
		for _, vh := range r.(*routev3.RouteConfiguration).VirtualHosts {
			for _, rt := range vh.Routes {
				if a := rt.GetRoute(); a.GetCluster() == PoolCluster {
					subsets = append(subsets, a.MetadataMatch.FilterMetadata[wire.MetadataNamespace].Fields[subsetKey].GetStringValue())
				}
			}
		}
	}
	if !slices.Contains(subsets, "fraud:2") {
		t.Errorf("routes to the pool select %v: none for fraud:2, registered without a replica", subsets)
	}
	// Loading fraud:2 changes the pool's endpoints only.
	st.Ready[mv("fraud", "2")] = []string{"10.0.0.2:8000"}
	again, err := Translate(pooled, st)
	if err != nil {
		t.Fatal(err)
	}
	if string(render(t, Resources{Routes: res.Routes, Clusters: res.Clusters})) != string(render(t, Resources{Routes: again.Routes, Clusters: again.Clusters})) {
		t.Error("a load changed routes or clusters")
	}
	if got := pooledHosts(t, again)["10.0.0.2"]; !slices.Equal(got, []string{"fraud:1", "fraud:2"}) {
		t.Errorf("after the load 10.0.0.2 lists %v", got)
	}
}
