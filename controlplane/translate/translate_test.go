package translate

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/internal/registry"
)

var update = flag.Bool("update", false, "rewrite the golden files")

var cfg = Config{
	ListenerAddress: "0.0.0.0", ListenerPort: 8080, ExtProcAddress: "127.0.0.1:9002",
	WasmPath: "/etc/mesh/modelid.wasm", WasmMaxModels: 1000, RouteTimeout: 60 * time.Second,
	ExtProcMessageTimeout: 200 * time.Millisecond, MaxMessageTimeout: 120 * time.Second,
}

const reg = `
models:
  - name: iris
    versions: [{version: "1", storageUri: "file:///m/iris/1"}]
  - name: fraud
    versions:
      - {version: "1", storageUri: "file:///m/fraud/1"}
      - {version: "2", storageUri: "file:///m/fraud/2"}
    traffic:
      - match: {x-canary: "yes"}
        split: [{version: "2", weight: 100}]
      - split: [{version: "1", weight: 90}, {version: "2", weight: 10}]
        mirror: {version: "2", percent: 5}
`

// richReg uses every field of a traffic rule.
const richReg = `
models:
  - name: fraud
    versions:
      - {version: "1", storageUri: "file:///m/fraud/1"}
      - {version: "2", storageUri: "file:///m/fraud/2"}
    traffic:
      - source: VirtualService risk/fraud http[0]
        when:
          - headers: {x-user: {prefix: beta-}}
          - uri: {regex: "/v2/models/fraud/versions/[0-9]+/explain"}
            headers: {x-tenant: {exact: acme}, x-region: {regex: "eu-[a-z]+"}}
        split: [{version: "2", weight: 100}]
        timeout: 2.5s
        retries: {attempts: 3, perTryTimeout: 500ms, retryOn: "5xx,connect-failure"}
        requestHeaders: {set: {x-route: canary}, add: {x-trace: "on"}, remove: [x-debug]}
        responseHeaders: {set: {x-served-by: "100%"}, remove: [server]}
      - match: {x-chaos: "on"}
        fault: {delayPercent: 12.3456, delay: 250ms, abortPercent: 100, abortStatus: 503}
        split: [{version: "1", weight: 1}]
      - when: [{uri: {exact: /v2/models/fraud/infer}}, {uri: {prefix: /v2/models/fraud/versions/}}]
        retries: {attempts: 0}
        split: [{version: "1", weight: 90}, {version: "2", weight: 10}]
`

func mv(n, v string) placement.ModelVersion { return placement.ModelVersion{Name: n, Version: v} }

func TestTranslateGolden(t *testing.T) {
	r, err := registry.Parse([]byte(reg))
	if err != nil {
		t.Fatal(err)
	}
	rich, err := registry.Parse([]byte(richReg))
	if err != nil {
		t.Fatal(err)
	}
	workers := []string{"10.0.0.2:8000", "10.0.0.1:8000"}
	tests := []struct {
		name string
		give State
	}{
		{"empty", State{}},
		{"all-cold", State{Registry: r, Workers: workers}},
		{"iris-hot", State{Registry: r, Workers: workers, Ready: map[placement.ModelVersion][]string{
			mv("iris", "1"): {"10.0.0.2:8000", "10.0.0.1:8000", "10.0.0.2:8000"}}}},
		{"split-half-ready", State{Registry: r, Workers: workers, Ready: map[placement.ModelVersion][]string{
			mv("fraud", "1"): {"10.0.0.1:8000"}}}},
		{"triton-grpc-port", State{Registry: r, Workers: []string{"10.0.0.3:8000"}, GRPC: map[string]string{"10.0.0.3:8000": "10.0.0.3:8001"},
			Ready: map[placement.ModelVersion][]string{mv("iris", "1"): {"10.0.0.3:8000"}}}},
		{"split-ready", State{Registry: r, Workers: workers, Ready: map[placement.ModelVersion][]string{
			mv("fraud", "1"): {"10.0.0.1:8000"}, mv("fraud", "2"): {"10.0.0.2:8000"},
			mv("unregistered", "1"): {"10.0.0.2:8000"}}}},
		{"rich-cold", State{Registry: rich, Workers: workers}},
		{"rich-hot", State{Registry: rich, Workers: []string{"10.0.0.1:8000", "10.0.0.3:8000"}, GRPC: map[string]string{"10.0.0.3:8000": "10.0.0.3:8001"},
			Ready: map[placement.ModelVersion][]string{mv("fraud", "1"): {"10.0.0.1:8000"}, mv("fraud", "2"): {"10.0.0.3:8000"}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := Translate(cfg, tt.give)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, tt.name, res)
		})
	}
}

// golden compares res with testdata/<name>.yaml (rewritten with -update).
func golden(t *testing.T, name string, res Resources) {
	t.Helper()
	got := render(t, res)
	path := filepath.Join("testdata", name+".yaml")
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

// TestTracingGolden: with tracing on, the connection manager gets Envoy's OpenTelemetry
// tracer and the collector a cluster; everything else is as without (iris-hot.yaml).
func TestTracingGolden(t *testing.T) {
	r, err := registry.Parse([]byte(reg))
	if err != nil {
		t.Fatal(err)
	}
	on := cfg
	on.Tracing = &Tracing{CollectorAddress: "otel-collector.observability:4317", SamplePercent: 1}
	res, err := Translate(on, State{Registry: r, Workers: []string{"10.0.0.1:8000"}, Ready: map[placement.ModelVersion][]string{
		mv("iris", "1"): {"10.0.0.1:8000"}}})
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "tracing", res)

	on.Tracing.CollectorAddress = "no-port"
	if _, err := Translate(on, State{}); err == nil || !strings.Contains(err.Error(), "tracing collector address") {
		t.Fatalf("bad collector address: error %v", err)
	}
}

// TestRuleRoutes: every condition of a rule is a route with the rule's actions, hot or cold.
func TestRuleRoutes(t *testing.T) {
	rich, err := registry.Parse([]byte(richReg))
	if err != nil {
		t.Fatal(err)
	}
	type summary struct {
		Cluster  string
		Timeout  string
		Retries  int // -1: no retry policy
		Previous bool
		Fault    bool
		ExtProc  bool
		Headers  []string // request headers set, added or removed
	}
	tests := []struct {
		name  string
		ready map[placement.ModelVersion][]string
		want  map[string]summary
	}{
		{"cold", nil, map[string]summary{
			"fraud#0.0": {Cluster: WorkersCluster, Timeout: "2.5s", Retries: 3, ExtProc: true, Headers: []string{"x-route", "x-trace", "-x-debug"}},
			"fraud#0.1": {Cluster: WorkersCluster, Timeout: "2.5s", Retries: 3, ExtProc: true, Headers: []string{"x-route", "x-trace", "-x-debug"}},
			"fraud#1":   {Cluster: WorkersCluster, Timeout: "1m0s", Retries: -1, Fault: true, ExtProc: true},
			"fraud#2.0": {Cluster: WorkersCluster, Timeout: "1m0s", Retries: -1, ExtProc: true},
			"fraud#2.1": {Cluster: WorkersCluster, Timeout: "1m0s", Retries: -1, ExtProc: true},
			"fraud#3":   {Cluster: WorkersCluster, Timeout: "1m0s", Retries: -1, ExtProc: true}, // the default version
		}},
		{"hot", map[placement.ModelVersion][]string{mv("fraud", "1"): {"10.0.0.1:8000"}, mv("fraud", "2"): {"10.0.0.2:8000"}}, map[string]summary{
			"fraud@1":   {Cluster: "model|fraud|1", Timeout: "1m0s", Retries: 2, Previous: true},
			"fraud@2":   {Cluster: "model|fraud|2", Timeout: "1m0s", Retries: 2, Previous: true},
			"fraud#0.0": {Cluster: "model|fraud|2", Timeout: "2.5s", Retries: 3, Previous: true, Headers: []string{"x-model-version", "x-route", "x-trace", "-x-debug"}},
			"fraud#0.1": {Cluster: "model|fraud|2", Timeout: "2.5s", Retries: 3, Previous: true, Headers: []string{"x-model-version", "x-route", "x-trace", "-x-debug"}},
			"fraud#1":   {Cluster: "model|fraud|1", Timeout: "1m0s", Retries: 2, Previous: true, Fault: true, Headers: []string{"x-model-version"}},
			"fraud#2.0": {Timeout: "1m0s", Retries: -1},
			"fraud#2.1": {Timeout: "1m0s", Retries: -1},
			"fraud#3":   {Cluster: "model|fraud|2", Timeout: "1m0s", Retries: 2, Previous: true, Headers: []string{"x-model-version"}},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := Translate(cfg, State{Registry: rich, Workers: []string{"10.0.0.1:8000"}, Ready: tt.ready})
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]summary{}
			for _, r := range res.Routes[0].(*routev3.RouteConfiguration).GetVirtualHosts()[0].GetRoutes() {
				if r.GetName() == "cold" {
					continue
				}
				a := r.GetRoute()
				s := summary{Cluster: a.GetCluster(), Timeout: a.GetTimeout().AsDuration().String(), Retries: -1,
					Previous: len(a.GetRetryPolicy().GetRetryHostPredicate()) > 0,
					Fault:    r.GetTypedPerFilterConfig()[faultFilter] != nil, ExtProc: r.GetTypedPerFilterConfig()[extProcFilter] == nil}
				if p := a.GetRetryPolicy(); p != nil {
					s.Retries = int(p.GetNumRetries().GetValue())
				}
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
		})
	}
}

func TestTranslateIsDeterministic(t *testing.T) {
	r, _ := registry.Parse([]byte(reg))
	st := State{Registry: r, Workers: []string{"10.0.0.2:8000", "10.0.0.1:8000"}, Ready: map[placement.ModelVersion][]string{
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
