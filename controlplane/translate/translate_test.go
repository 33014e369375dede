package translate

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/internal/registry"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/out, removing those whose input is gone")

var cfg = Config{
	ListenerAddress: "0.0.0.0", ListenerPort: 8080, ExtProcAddress: "127.0.0.1:9002",
	WasmPath: "/etc/mesh/modelid.wasm", WasmMaxModels: 1000, RouteTimeout: 60 * time.Second, HotTryTimeout: 20 * time.Second,
	ExtProcMessageTimeout: 200 * time.Millisecond, MaxMessageTimeout: 120 * time.Second,
}

func mv(n, v string) placement.ModelVersion { return placement.ModelVersion{Name: n, Version: v} }

// loadRegistry parses testdata/registries/<name>.
func loadRegistry(t *testing.T, name string) *registry.Registry {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "registries", name))
	if err != nil {
		t.Fatal(err)
	}
	r, err := registry.Parse(b)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return r
}

// goldenInput is one golden case, testdata/in/<case>.yaml: a State and, for cases with
// tracing on, the gateway's tracing.
type goldenInput struct {
	// Registry names a file under testdata/registries; empty: no registry.
	Registry string              `json:"registry"`
	Workers  []string            `json:"workers"`
	Ready    map[string][]string `json:"ready"` // "name:version" -> data addresses
	GRPC     map[string]string   `json:"grpc"`
	Retained map[string]bool     `json:"retained"` // "name:version" -> had a gRPC twin
	Tracing  *Tracing            `json:"tracing"`
}

// readInput reads a golden case's input as the Config and State to translate.
func readInput(t *testing.T, path string) (Config, State) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var in goldenInput
	if err := yaml.UnmarshalStrict(b, &in); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	st := State{Workers: in.Workers, GRPC: in.GRPC}
	if in.Registry != "" {
		st.Registry = loadRegistry(t, in.Registry)
	}
	for k, addrs := range in.Ready {
		m, err := placement.ParseModelVersion(k)
		if err != nil {
			t.Fatalf("%s: ready: %v", path, err)
		}
		if st.Ready == nil {
			st.Ready = map[placement.ModelVersion][]string{}
		}
		st.Ready[m] = addrs
	}
	for k, grpc := range in.Retained {
		m, err := placement.ParseModelVersion(k)
		if err != nil {
			t.Fatalf("%s: retained: %v", path, err)
		}
		if st.Retained == nil {
			st.Retained = map[placement.ModelVersion]bool{}
		}
		st.Retained[m] = grpc
	}
	c := cfg
	c.Tracing = in.Tracing
	return c, st
}

// TestTranslateGolden translates each testdata/in/<case>.yaml, checks that Envoy would
// accept the resources and compares them with testdata/out/<case>.yaml.
func TestTranslateGolden(t *testing.T) {
	inputs, err := filepath.Glob(filepath.Join("testdata", "in", "*.yaml"))
	if err != nil || len(inputs) == 0 {
		t.Fatalf("no golden inputs under testdata/in (%v)", err)
	}
	cases := map[string]bool{}
	for _, path := range inputs {
		name := strings.TrimSuffix(filepath.Base(path), ".yaml")
		cases[name] = true
		t.Run(name, func(t *testing.T) {
			c, st := readInput(t, path)
			res, err := Translate(c, st)
			if err != nil {
				t.Fatal(err)
			}
			acceptable(t, res)
			golden(t, name, res)
		})
	}
	if !*update {
		return
	}
	outputs, err := filepath.Glob(filepath.Join("testdata", "out", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range outputs {
		if !cases[strings.TrimSuffix(filepath.Base(path), ".yaml")] {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
			t.Logf("removed %s: its input is gone", path)
		}
	}
}

// golden compares res with testdata/out/<name>.yaml (rewritten with -update).
func golden(t *testing.T, name string, res Resources) {
	t.Helper()
	got := render(t, res)
	path := filepath.Join("testdata", "out", name+".yaml")
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./controlplane/translate -update)", err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Fatalf("resources differ from %s (-want +got):\n%s", path, diff)
	}
}

// acceptable fails t for resources Envoy would refuse: a resource that breaks its proto's
// rules (ValidateAll, also of every message packed in an Any, which ValidateAll does not
// open: filter, load-balancing policy and protocol configurations), or a snapshot that is
// not consistent (a route configuration a listener names, or the endpoints of an EDS
// cluster, missing; or more of them than are named).
func acceptable(t *testing.T, res Resources) {
	t.Helper()
	for _, list := range [][]types.Resource{res.Listeners, res.Routes, res.Clusters, res.Endpoints} {
		for _, r := range list {
			if err := validateAll(r); err != nil {
				t.Errorf("%s %q is invalid: %v", r.ProtoReflect().Descriptor().Name(), cachev3.GetResourceName(r), err)
			}
		}
	}
	snap, err := cachev3.NewSnapshot("golden", map[resourcev3.Type][]types.Resource{
		resourcev3.ListenerType: res.Listeners, resourcev3.RouteType: res.Routes,
		resourcev3.ClusterType: res.Clusters, resourcev3.EndpointType: res.Endpoints,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := snap.Consistent(); err != nil {
		t.Errorf("snapshot is not consistent: %v", err)
	}
}

// validateAll runs m's generated ValidateAll and that of each message in an Any within m.
func validateAll(m proto.Message) error {
	var errs []error
	if v, ok := m.(interface{ ValidateAll() error }); ok {
		errs = append(errs, v.ValidateAll())
	}
	var walk func(protoreflect.Message)
	walk = func(msg protoreflect.Message) {
		if a, ok := msg.Interface().(*anypb.Any); ok {
			inner, err := a.UnmarshalNew()
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", a.GetTypeUrl(), err))
				return
			}
			if err := validateAll(inner); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", a.GetTypeUrl(), err))
			}
			return
		}
		msg.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			switch {
			case fd.IsMap():
				if fd.MapValue().Message() != nil {
					v.Map().Range(func(_ protoreflect.MapKey, e protoreflect.Value) bool { walk(e.Message()); return true })
				}
			case fd.IsList():
				if fd.Message() != nil {
					for i := range v.List().Len() {
						walk(v.List().Get(i).Message())
					}
				}
			case fd.Message() != nil:
				walk(v.Message())
			}
			return true
		})
	}
	walk(m.ProtoReflect())
	return errors.Join(errs...)
}

// TestTranslateRejectsBadCollectorAddress: with tracing on, a collector address without a
// port is refused.
func TestTranslateRejectsBadCollectorAddress(t *testing.T) {
	on := cfg
	on.Tracing = &Tracing{CollectorAddress: "no-port", SamplePercent: 1}
	if _, err := Translate(on, State{}); err == nil || !strings.Contains(err.Error(), "tracing collector address") {
		t.Fatalf("bad collector address: error %v", err)
	}
}

// TestRuleRoutes: every condition of a rule is a route with the rule's actions, hot or cold.
func TestRuleRoutes(t *testing.T) {
	rich := loadRegistry(t, "rich.yaml")
	type summary struct {
		Cluster  string
		Timeout  string
		Retries  int // the route's own retry policy, else the virtual host's
		Previous bool
		Fault    bool
		ExtProc  bool
		Headers  []string // request headers set, added or removed
	}
	tests := []struct {
		name  string
		ready map[placement.ModelVersion][]string
		want  map[string]summary
		// twins are the native twins (native.go), in route order: of the versions' routes
		// and of the rules' up to the first rule with a URI condition (fraud#0.1).
		twins []string
	}{
		{"cold", nil, map[string]summary{
			"fraud#0.0": {Cluster: WorkersCluster, Timeout: "2.5s", Retries: 3, ExtProc: true, Headers: []string{"x-route", "x-trace", "-x-debug"}},
			"fraud#0.1": {Cluster: WorkersCluster, Timeout: "2.5s", Retries: 3, ExtProc: true, Headers: []string{"x-route", "x-trace", "-x-debug"}},
			"fraud#1":   {Cluster: WorkersCluster, Timeout: "1m0s", Retries: 0, Fault: true, ExtProc: true},
			"fraud#2.0": {Cluster: WorkersCluster, Timeout: "1m0s", Retries: 0, ExtProc: true},
			"fraud#2.1": {Cluster: WorkersCluster, Timeout: "1m0s", Retries: 0, ExtProc: true},
			"fraud#3":   {Cluster: WorkersCluster, Timeout: "1m0s", Retries: 0, ExtProc: true}, // the default version
		}, nil},
		{"hot", map[placement.ModelVersion][]string{mv("fraud", "1"): {"10.0.0.1:8000"}, mv("fraud", "2"): {"10.0.0.2:8000"}}, map[string]summary{
			"fraud@1":   {Cluster: "model|fraud|1", Timeout: "1m0s", Retries: 3, Previous: true},
			"fraud@2":   {Cluster: "model|fraud|2", Timeout: "1m0s", Retries: 3, Previous: true},
			"fraud#0.0": {Cluster: "model|fraud|2", Timeout: "2.5s", Retries: 3, Previous: true, Headers: []string{"x-model-version", "x-route", "x-trace", "-x-debug"}},
			"fraud#0.1": {Cluster: "model|fraud|2", Timeout: "2.5s", Retries: 3, Previous: true, Headers: []string{"x-model-version", "x-route", "x-trace", "-x-debug"}},
			"fraud#1":   {Cluster: "model|fraud|1", Timeout: "1m0s", Retries: 3, Previous: true, Fault: true, Headers: []string{"x-model-version"}},
			"fraud#2.0": {Timeout: "1m0s", Retries: 0},
			"fraud#2.1": {Timeout: "1m0s", Retries: 0},
			"fraud#3":   {Cluster: "model|fraud|2", Timeout: "1m0s", Retries: 3, Previous: true, Headers: []string{"x-model-version"}},
		}, []string{"fraud@1~p", "fraud@2~p", "fraud#0.0~p"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := Translate(cfg, State{Registry: rich, Workers: []string{"10.0.0.1:8000"}, Ready: tt.ready})
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]summary{}
			var twins []string
			vhost := res.Routes[0].(*routev3.RouteConfiguration).GetVirtualHosts()[0]
			for _, r := range vhost.GetRoutes() {
				if r.GetName() == "cold" {
					continue
				}
				if r.GetTypedPerFilterConfig()[wasmFilter] != nil {
					twins = append(twins, r.GetName())
					continue
				}
				a := r.GetRoute()
				retry := a.GetRetryPolicy()
				if retry == nil {
					retry = vhost.GetRetryPolicy()
				}
				extProc := r.GetTypedPerFilterConfig()[extProcFilter]
				if extProc == nil {
					extProc = vhost.GetTypedPerFilterConfig()[extProcFilter]
				}
				var perRoute extprocv3.ExtProcPerRoute
				if err := extProc.UnmarshalTo(&perRoute); err != nil {
					t.Fatalf("route %s: ext_proc's configuration: %v", r.GetName(), err)
				}
				s := summary{Cluster: a.GetCluster(), Timeout: a.GetTimeout().AsDuration().String(), Retries: int(retry.GetNumRetries().GetValue()),
					Previous: len(retry.GetRetryHostPredicate()) > 0,
					Fault:    r.GetTypedPerFilterConfig()[faultFilter] != nil, ExtProc: !perRoute.GetDisabled()}
				for _, h := range r.GetRequestHeadersToAdd() {
					s.Headers = append(s.Headers, h.GetHeader().GetKey())
				}
				for _, h := range r.GetRequestHeadersToRemove() {
					s.Headers = append(s.Headers, "-"+h)
				}
				got[r.GetName()] = s
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Fatalf("routes (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.twins, twins); diff != "" {
				t.Fatalf("native twins (-want +got):\n%s", diff)
			}
		})
	}
}

func TestTranslateIsDeterministic(t *testing.T) {
	st := State{Registry: loadRegistry(t, "two-models.yaml"), Workers: []string{"10.0.0.2:8000", "10.0.0.1:8000"}, Ready: map[placement.ModelVersion][]string{
		mv("fraud", "1"): {"10.0.0.1:8000"}, mv("fraud", "2"): {"10.0.0.2:8000"}, mv("iris", "1"): {"10.0.0.1:8000"}}}
	first, _ := Translate(cfg, st)
	for range 20 {
		again, _ := Translate(cfg, st)
		if string(render(t, first)) != string(render(t, again)) {
			t.Fatal("the same state translated to different resources")
		}
	}
}

func TestTranslateRejectsBadExtProcAddress(t *testing.T) {
	bad := cfg
	bad.ExtProcAddress = "no-port"
	if _, err := Translate(bad, State{}); err == nil || !strings.Contains(err.Error(), "ext_proc address") {
		t.Fatalf("error %v", err)
	}
}

// render turns resources into YAML: protojson, whose whitespace is deliberately unstable,
// normalised through a YAML round trip.
func render(t *testing.T, res Resources) []byte {
	t.Helper()
	var b strings.Builder
	for _, part := range []struct {
		kind string
		list []types.Resource
	}{{"listeners", res.Listeners}, {"routes", res.Routes}, {"clusters", res.Clusters}, {"endpoints", res.Endpoints}} {
		b.WriteString("# " + part.kind + "\n")
		for _, r := range part.list {
			js, err := protojson.Marshal(r)
			if err != nil {
				t.Fatal(err)
			}
			y, err := yaml.JSONToYAML(js)
			if err != nil {
				t.Fatal(err)
			}
			b.WriteString("---\n")
			b.Write(y)
		}
	}
	return []byte(b.String())
}

// TestNativeTwinKeepsItsRoutesFields: a native twin is its route with only the match, the
// name, the route stats, the per-filter configuration and the added headers changed; every
// other field (the action, header removals, response headers, and any a later change adds
// to routes) is the route's own.
func TestNativeTwinKeepsItsRoutesFields(t *testing.T) {
	res, err := Translate(cfg, State{Registry: loadRegistry(t, "rich.yaml"), Workers: []string{"10.0.0.1:8000"},
		Ready: map[placement.ModelVersion][]string{mv("fraud", "1"): {"10.0.0.1:8000"}, mv("fraud", "2"): {"10.0.0.2:8000"}}})
	if err != nil {
		t.Fatal(err)
	}
	routes := map[string]*routev3.Route{}
	for _, r := range res.Routes[0].(*routev3.RouteConfiguration).GetVirtualHosts()[0].GetRoutes() {
		routes[r.GetName()] = r
	}
	changed := map[protoreflect.Name]bool{"name": true, "match": true, "stat_prefix": true, "typed_per_filter_config": true, "request_headers_to_add": true}
	twins := 0
	for name, twin := range routes {
		origin, ok := strings.CutSuffix(name, "~p")
		if !ok {
			continue
		}
		twins++
		r := routes[origin]
		if r == nil {
			t.Fatalf("twin %s without its route", name)
		}
		fields := r.ProtoReflect().Descriptor().Fields()
		for i := range fields.Len() {
			fd := fields.Get(i)
			if changed[fd.Name()] {
				continue
			}
			if a, b := r.ProtoReflect().Get(fd), twin.ProtoReflect().Get(fd); !a.Equal(b) {
				t.Errorf("twin %s: field %s is %v, its route's %v", name, fd.Name(), b, a)
			}
		}
	}
	if twins == 0 {
		t.Fatal("no native twins to check")
	}
}
