//go:build e2e

package e2e

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/procfs"

	"github.com/modelmesh/mesh/internal/proctest"
)

// The gateway's HTTP filters as the control plane writes them (controlplane/translate),
// in Envoy's YAML, for static Envoys that add them one at a time.
const (
	wasmFilterYAML = `
                  - name: envoy.filters.http.wasm
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
                      config:
                        name: modelid
                        root_id: modelid
                        vm_config:
                          vm_id: modelid
                          runtime: envoy.wasm.runtime.v8
                          code: {local: {filename: %q}}
                        configuration: {"@type": type.googleapis.com/google.protobuf.StringValue, value: '{"max_models": 1000}'}
                        allow_on_headers_stop_iteration: true`
	faultFilterYAML = `
                  - name: envoy.filters.http.fault
                    typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault}`
	extProcFilterYAML = `
                  - name: envoy.filters.http.ext_proc
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
                      grpc_service: {envoy_grpc: {cluster_name: extproc}}
                      processing_mode: {request_header_mode: SEND, response_header_mode: SKIP, request_trailer_mode: SKIP, response_trailer_mode: SKIP}
                      message_timeout: 1s`
	// The hot routes' per-route configuration: ext_proc disabled, as on every route to a
	// model that has a ready replica.
	extProcOffYAML = `
                      typed_per_filter_config:
                        envoy.filters.http.ext_proc: {"@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute, disabled: true}`
)

// filteredEnvoy runs an Envoy with one static route to addr behind the given HTTP filters
// (YAML list entries, before the router; none: the same proxy as the gateway without the
// mesh) and per-route filter configuration, with a cluster extproc at extproc (when not
// empty) for an ext_proc filter's gRPC service. It returns the listener's address and the
// process.
func filteredEnvoy(b *testing.B, addr, extproc, filters, perRoute string) (string, *proctest.Process) {
	b.Helper()
	listen, admin := freePort(b), freePort(b)
	lh, lp, _ := net.SplitHostPort(listen)
	_, ap, _ := net.SplitHostPort(admin)
	wh, wp, _ := net.SplitHostPort(addr)
	extprocCluster := ""
	if extproc != "" {
		eh, ep, _ := net.SplitHostPort(extproc)
		extprocCluster = fmt.Sprintf(`
    - name: extproc
      type: STATIC
      connect_timeout: 1s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config: {http2_protocol_options: {}}
      load_assignment:
        cluster_name: extproc
        endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: %s, port_value: %s}}}}]}]`, eh, ep)
	}
	cfg := fmt.Sprintf(`
admin: {address: {socket_address: {address: 127.0.0.1, port_value: %s}}}
static_resources:
  listeners:
    - address: {socket_address: {address: %s, port_value: %s}}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: attribution
                codec_type: AUTO
                route_config:
                  virtual_hosts:
                    - name: all
                      domains: ["*"]
                      routes:
                        - match: {prefix: /}
                          route: {cluster: worker}%s
                http_filters:%s
                  - name: envoy.filters.http.router
                    typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
    - name: worker
      type: STATIC
      connect_timeout: 1s
      load_assignment:
        cluster_name: worker
        endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: %s, port_value: %s}}}}]}]%s
`, ap, lh, lp, perRoute, filters, wh, wp, extprocCluster)
	path := filepath.Join(b.TempDir(), "attribution.yaml")
	must(b, os.WriteFile(path, []byte(cfg), 0o644))
	p := startProcess(b, "envoy (attribution)", envoyPath(b), []string{"-c", path, "--concurrency", "2", "--disable-hot-restart", "--use-dynamic-base-id", "--log-level", "warn"},
		proctest.HTTPOK("http://"+admin+"/ready"))
	return listen, p
}

// cpuSeconds is the CPU time process p has used so far, user and system.
func cpuSeconds(b *testing.B, p *proctest.Process) float64 {
	b.Helper()
	proc, err := procfs.NewProc(p.Cmd.Process.Pid)
	must(b, err)
	st, err := proc.Stat()
	must(b, err)
	return st.CPUTime()
}

// BenchmarkMeshHotPathAttribution says where the gateway's hot-path cost goes: in one run,
// iris through a static Envoy (one route, the router only), the same Envoy with each of the
// gateway's filters in turn (the model-id wasm filter; the fault filter, which acts only on
// routes with a fault; ext_proc, disabled on the route as on every hot route), with all
// three, and through the mesh gateway itself (the same filters, routes on the model headers,
// a per-model cluster). Each at a fixed open-loop rate, then its highest rate, as ratios to
// the static Envoy; and the Envoy's own CPU time per request at the fixed rate, which the
// two cores shared with the load generator and the worker disturb far less than latency.
func BenchmarkMeshHotPathAttribution(b *testing.B) {
	m := startMesh(b, meshOptions{})
	if code, out := inferREST(b, m.Gateway, "iris", irisSetosa, nil); code != 200 {
		b.Fatalf("warm iris: %d %v", code, out)
	}
	m.waitHot(b, "iris", "1")
	worker, extproc := m.workers[0].DataAddr, m.extprocArgs[1]
	wasm := fmt.Sprintf(wasmFilterYAML, wasmModule(b))
	type target struct {
		name, addr string
		proc       *proctest.Process
	}
	envoy := func(name, filters, perRoute string) target {
		addr, p := filteredEnvoy(b, worker, extproc, filters, perRoute)
		return target{name, addr, p}
	}
	targets := []target{
		envoy("static envoy", "", ""),
		envoy("+ wasm", wasm, ""),
		envoy("+ fault", faultFilterYAML, ""),
		envoy("+ ext_proc (off)", extProcFilterYAML, extProcOffYAML),
		envoy("+ all three", wasm+faultFilterYAML+extProcFilterYAML, extProcOffYAML),
		{"mesh gateway", m.Gateway, m.envoy},
	}
	type row struct{ p50, p99, max, cpu float64 }
	rows := map[string]row{}
	const rate, d = 500, 5 * time.Second
	for range b.N {
		for _, tg := range targets {
			url := "http://" + tg.addr + "/v2/models/iris/infer"
			before := cpuSeconds(b, tg.proc)
			p50, p99, got := load(b, url, rate, d)
			cpu := (cpuSeconds(b, tg.proc) - before) / (got * d.Seconds())
			_, _, max := load(b, url, -1, d)
			rows[tg.name] = row{p50, p99, max, cpu}
		}
	}
	base := rows["static envoy"]
	var sb strings.Builder
	fmt.Fprintf(&sb, "\nhot path attribution, iris over REST to one worker, fortio open loop at %d req/s for %v (8 connections), then max rate for %v\n", rate, d, d)
	fmt.Fprintf(&sb, "%-17s %9s %9s %9s %10s %10s %10s %10s %10s\n", "target", "p50", "p99", "max req/s", "CPU/req", "p50 ratio", "p99 ratio", "max ratio", "CPU ratio")
	for _, tg := range targets {
		r := rows[tg.name]
		fmt.Fprintf(&sb, "%-17s %8.0fµs %8.0fµs %9.0f %8.0fµs %9.2fx %9.2fx %9.2fx %9.2fx\n", tg.name, r.p50*1e6, r.p99*1e6, r.max, r.cpu*1e6,
			r.p50/base.p50, r.p99/base.p99, r.max/base.max, r.cpu/base.cpu)
	}
	fmt.Print(sb.String())
}
