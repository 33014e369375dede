package translate

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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

func mv(n, v string) placement.ModelVersion { return placement.ModelVersion{Name: n, Version: v} }

func TestTranslateGolden(t *testing.T) {
	r, err := registry.Parse([]byte(reg))
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
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := Translate(cfg, tt.give)
			if err != nil {
				t.Fatal(err)
			}
			got := render(t, res)
			path := filepath.Join("testdata", tt.name+".yaml")
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
