package wire

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/modelmesh/mesh/internal/placement"
)

func TestClusterNames(t *testing.T) {
	t.Parallel()
	type parsed struct {
		M    placement.ModelVersion
		GRPC bool
		OK   bool
	}
	mv := func(n, v string) placement.ModelVersion { return placement.ModelVersion{Name: n, Version: v} }
	tests := []struct {
		name string
		give string
		want parsed
	}{
		{"plain", "model|iris|1", parsed{mv("iris", "1"), false, true}},
		{"grpc", "model|iris|1|grpc", parsed{mv("iris", "1"), true, true}},
		{"dots and dashes", "model|a.b-c_d|1.0", parsed{mv("a.b-c_d", "1.0"), false, true}},
		{"version named grpc", "model|x|grpc", parsed{mv("x", "grpc"), false, true}},
		{"version named grpc, grpc twin", "model|x|grpc|grpc", parsed{mv("x", "grpc"), true, true}},
		{"workers pool", "workers", parsed{}},
		{"ext_proc", "extproc", parsed{}},
		{"no version", "model|iris", parsed{}},
		{"empty version", "model|iris|", parsed{}},
		{"empty name", "model||1", parsed{}},
		{"fourth field", "model|iris|1|rest", parsed{}},
		{"five fields", "model|iris|1|grpc|grpc", parsed{}},
		{"name outside the grammar", "model|ir:is|1", parsed{}},
		{"prefix only", "model|", parsed{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var got parsed
			got.M, got.GRPC, got.OK = ParseClusterName(tt.give)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Fatalf("ParseClusterName(%q) (-want +got):\n%s", tt.give, diff)
			}
			if !got.OK {
				return
			}
			build := ClusterName
			if got.GRPC {
				build = GRPCClusterName
			}
			if back := build(got.M); back != tt.give {
				t.Fatalf("%q parsed and built back is %q", tt.give, back)
			}
		})
	}
}

func TestIsInternalHeader(t *testing.T) {
	t.Parallel()
	for name, want := range map[string]bool{
		"x-gateway-destination-endpoint":   true,
		"x-mesh-foo":                       true,
		"x-mesh-":                          true,
		"x-gateway-destination-endpoint-x": false,
		"x-meshfoo":                        false,
		"x-model-id":                       false,
		"mesh-x":                           false,
	} {
		if got := IsInternalHeader(name); got != want {
			t.Errorf("IsInternalHeader(%q) = %v, want %v", name, got, want)
		}
	}
}
