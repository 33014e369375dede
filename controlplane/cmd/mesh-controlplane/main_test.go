package main

import (
	"io"
	"strings"
	"testing"

	"github.com/modelmesh/mesh/internal/cli"
)

// TestIstioFlags: the Istio flags, and their environment variables, as the manifests use them.
func TestIstioFlags(t *testing.T) {
	required := []string{"--registry", "r.yaml", "--redis-addr", "127.0.0.1:6379", "--wasm-path", "/m.wasm"}
	t.Setenv("MESH_CONTROLPLANE_ISTIO_NAMESPACE", "models")
	var cfg Config
	if err := cli.Parse("mesh-controlplane", envPrefix, &cfg, append(required, "--istio-kube", "--kubeconfig", "/k"), io.Discard); err != nil {
		t.Fatal(err)
	}
	if !cfg.IstioKube || cfg.Kubeconfig != "/k" || cfg.IstioNamespace != "models" || cfg.IstioSelector != "modelmesh.io/model-traffic=true" {
		t.Fatalf("parsed %+v", cfg)
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--istio-dir", "/etc/istio", "--istio-kube"}, "--istio-dir and --istio-kube exclude each other"},
		{[]string{"--kubeconfig", "/k"}, "--kubeconfig needs --istio-kube"},
		{[]string{"--istio-kube", "--istio-selector", "a in ("}, "--istio-selector"},
	} {
		var cfg Config
		err := cli.Parse("mesh-controlplane", envPrefix, &cfg, append(required, tt.args...), io.Discard)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v: err = %v, want %q", tt.args, err, tt.want)
		}
	}
}

// TestLogFlags: --log-format and --log-level, from the command line or the environment, and
// checked.
func TestLogFlags(t *testing.T) {
	required := []string{"--registry", "r.yaml", "--redis-addr", "127.0.0.1:6379", "--wasm-path", "/m.wasm"}
	t.Setenv("MESH_CONTROLPLANE_LOG_FORMAT", "text")
	var cfg Config
	if err := cli.Parse("mesh-controlplane", envPrefix, &cfg, append(required, "--log-level", "debug"), io.Discard); err != nil {
		t.Fatal(err)
	}
	if cfg.Log != (cli.Log{Format: "text", Level: "debug"}) {
		t.Fatalf("log settings %+v", cfg.Log)
	}
	err := cli.Parse("mesh-controlplane", envPrefix, &Config{}, append(required, "--log-level", "loud"), io.Discard)
	if err == nil || !strings.Contains(err.Error(), "--log-level") {
		t.Fatalf("--log-level loud: %v, want an error naming --log-level", err)
	}
}

func TestTrafficRulesOnlyWhenAsked(t *testing.T) {
	log := cli.Log{Format: "text", Level: "error"}.Logger(io.Discard)
	none, err := (&Config{}).trafficRules(log, nil)
	if err != nil || none != nil {
		t.Fatalf("no Istio flag gave %v, %v; want no traffic rules", none, err)
	}
	dir, err := (&Config{IstioDir: t.TempDir()}).trafficRules(log, nil)
	if err != nil || dir == nil {
		t.Fatalf("--istio-dir gave %v, %v", dir, err)
	}
	if _, err := (&Config{IstioKube: true, Kubeconfig: "/does/not/exist"}).trafficRules(log, nil); err == nil {
		t.Fatal("a kubeconfig that does not exist was accepted")
	}
}
