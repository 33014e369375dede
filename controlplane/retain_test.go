package controlplane

import (
	"testing"
	"time"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/google/go-cmp/cmp"

	"github.com/modelmesh/mesh/controlplane/translate"
	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/internal/registry"
	"github.com/modelmesh/mesh/internal/residency"
)

func TestRetentionKeepsAGoneClusterForTheRouteTimeout(t *testing.T) {
	t.Parallel()
	iris, fraud := placement.ModelVersion{Name: "iris", Version: "1"}, placement.ModelVersion{Name: "fraud", Version: "1"}
	state := func(ready ...placement.ModelVersion) translate.State {
		st := translate.State{Ready: map[placement.ModelVersion][]string{}, GRPC: map[string]string{"10.0.0.3:8000": "10.0.0.3:8001"}}
		for _, m := range ready {
			addr := "10.0.0.1:8000"
			if m == fraud {
				addr = "10.0.0.3:8000" // a worker with a gRPC port of its own: a twin cluster
			}
			st.Ready[m] = []string{addr}
		}
		return st
	}
	r := newRetention(time.Minute)
	t0 := time.Unix(1000, 0)
	steps := []struct {
		at    time.Duration
		state translate.State
		want  map[placement.ModelVersion]bool
	}{
		{0, state(iris, fraud), map[placement.ModelVersion]bool{}},
		{time.Second, state(), map[placement.ModelVersion]bool{iris: false, fraud: true}},
		{30 * time.Second, state(iris), map[placement.ModelVersion]bool{fraud: true}}, // iris back: routed, not retained
		{61 * time.Second, state(iris), map[placement.ModelVersion]bool{}},            // fraud's minute is up
		{62 * time.Second, state(), map[placement.ModelVersion]bool{iris: false}},
	}
	for _, s := range steps {
		if got := r.update(s.state, t0.Add(s.at)); !cmp.Equal(got, s.want) {
			t.Errorf("at %v: retained %v, want %v", s.at, got, s.want)
		}
	}
}

// TestLoadingVersionsHaveAClusterAndNoRoute: a version loading on a worker, and ready on
// none, has its cluster (and, on a worker with a gRPC port of its own, its gRPC twin) with
// the fallback alone, and no route; one also ready elsewhere is routed as any ready one.
func TestLoadingVersionsHaveAClusterAndNoRoute(t *testing.T) {
	t.Parallel()
	iris, digits := placement.ModelVersion{Name: "iris", Version: "1"}, placement.ModelVersion{Name: "digits", Version: "1"}
	reg, err := registry.Parse([]byte("models:\n  - {name: iris, versions: [{version: \"1\", storageUri: \"file:///m/iris\"}]}\n" +
		"  - {name: digits, versions: [{version: \"1\", storageUri: \"file:///m/digits\"}]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	snap := residency.Snapshot{
		Workers: map[string]residency.Worker{
			"triton": {ID: "triton", DataAddr: "10.0.0.1:8000", GRPCAddr: "10.0.0.1:8001"},
			"onnx":   {ID: "onnx", DataAddr: "10.0.0.2:8000"},
		},
		Replicas: map[string]map[placement.ModelVersion]residency.Replica{
			"triton": {iris: {State: placement.StateLoading}, digits: {State: placement.StateLoading}},
			"onnx":   {digits: {State: placement.StateReady}},
		},
	}
	st := stateOf(reg, snap)
	st.Retained = withLoading(map[placement.ModelVersion]bool{}, st, snap)
	res, err := translate.Translate(translate.Config{ListenerAddress: "127.0.0.1", ListenerPort: 8080, ExtProcAddress: "127.0.0.1:9002",
		WasmPath: "/m.wasm", WasmMaxModels: 10, RouteTimeout: time.Second, ExtProcMessageTimeout: time.Second, MaxMessageTimeout: time.Minute}, st)
	if err != nil {
		t.Fatal(err)
	}
	endpoints := map[string]int{}
	for _, r := range res.Endpoints {
		cla := r.(*endpointv3.ClusterLoadAssignment)
		for _, l := range cla.GetEndpoints() {
			endpoints[cla.GetClusterName()] += len(l.GetLbEndpoints())
		}
	}
	// A model cluster's hosts: its ready replicas and the fallback.
	want := map[string]int{"model|iris|1": 1, "model|iris|1|grpc": 1, "model|digits|1": 2}
	for name, n := range want {
		if endpoints[name] != n {
			t.Errorf("cluster %s: %d hosts, want %d (the fallback and the ready replicas); all: %v", name, endpoints[name], n, endpoints)
		}
	}
	routed := map[string]bool{}
	for _, r := range res.Routes[0].(*routev3.RouteConfiguration).GetVirtualHosts()[0].GetRoutes() {
		routed[r.GetRoute().GetCluster()] = true
	}
	if routed["model|iris|1"] || routed["model|iris|1|grpc"] || !routed["model|digits|1"] {
		t.Fatalf("routed clusters %v: want digits', not loading iris'", routed)
	}
}
