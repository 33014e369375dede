//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"fortio.org/fortio/periodic"
	"github.com/prometheus/procfs"
	"google.golang.org/grpc/metadata"

	"github.com/modelmesh/mesh/internal/proctest"
	"github.com/modelmesh/mesh/internal/wire"
	"github.com/modelmesh/mesh/proto/inference"
	"github.com/modelmesh/mesh/runtime-worker/tensor"
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
	stripFilterYAML = `
                  - name: envoy.filters.http.header_mutation
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation
                      mutations:
                        request_mutations:
                          - remove: x-gateway-destination-endpoint
                          - remove_on_match: {key_matcher: {prefix: x-mesh-}}`
	// The per-route configuration of a hot route that the wasm filter's headers select:
	// ext_proc disabled by its own per-route configuration, once the filter ran.
	extProcOffYAML = `
                      typed_per_filter_config:
                        envoy.filters.http.ext_proc: {"@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute, disabled: true}`
	// A native route's (controlplane/translate/native.go): wasm and ext_proc left out of the
	// request's filter chain.
	nativeOffYAML = `
                      typed_per_filter_config:
                        envoy.filters.http.wasm: {"@type": type.googleapis.com/envoy.config.route.v3.FilterConfig, disabled: true}
                        envoy.filters.http.ext_proc: {"@type": type.googleapis.com/envoy.config.route.v3.FilterConfig, disabled: true}`
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
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          use_downstream_protocol_config: {http_protocol_options: {}, http2_protocol_options: {}}
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
// gateway's filters in turn (the internal-header strip; the model-id wasm filter; the fault
// filter, which acts only on routes with a fault; ext_proc, disabled on the route as on
// every hot route the filter's headers select), with all four, with all four on a route
// that leaves wasm and ext_proc out of the chain (a native route), and through the mesh
// gateway itself. Each at a fixed open-loop rate, then its highest rate, as ratios to the
// static Envoy; and the Envoy's own CPU time per request at the fixed rate, which the two
// cores shared with the load generator and the worker disturb far less than latency. Then
// the same over gRPC: the static Envoy, and the gateway with the model named by the
// x-model-id header (a native route) and by the body alone (the filter reads it).
func BenchmarkMeshHotPathAttribution(b *testing.B) {
	m := startMesh(b, meshOptions{})
	if code, out := inferREST(b, m.Gateway, "iris", irisSetosa, nil); code != 200 {
		b.Fatalf("warm iris: %d %v", code, out)
	}
	m.waitHot(b, "iris", "1")
	worker, extproc := m.workers[0].DataAddr, m.extprocArgs[1]
	wasm := fmt.Sprintf(wasmFilterYAML, wasmModule(b))
	all := stripFilterYAML + wasm + faultFilterYAML + extProcFilterYAML
	type target struct {
		name, addr string
		proc       *proctest.Process
	}
	envoy := func(name, filters, perRoute string) target {
		addr, p := filteredEnvoy(b, worker, extproc, filters, perRoute)
		return target{name, addr, p}
	}
	static := envoy("static envoy", "", "")
	targets := []target{
		static,
		envoy("+ strip", stripFilterYAML, ""),
		envoy("+ wasm", wasm, ""),
		envoy("+ fault", faultFilterYAML, ""),
		envoy("+ ext_proc (off)", extProcFilterYAML, extProcOffYAML),
		envoy("+ all four", all, extProcOffYAML),
		envoy("+ all four, native route", all, nativeOffYAML),
		{"mesh gateway", m.Gateway, m.envoy},
	}
	type row struct{ p50, p99, max, cpu float64 }
	rows := map[string]row{}
	const rate, d = 500, 5 * time.Second
	measure := func(tg target, run func(qps float64) (p50, p99, got float64)) row {
		before := cpuSeconds(b, tg.proc)
		p50, p99, got := run(rate)
		cpu := (cpuSeconds(b, tg.proc) - before) / (got * d.Seconds())
		_, _, max := run(-1)
		return row{p50, p99, max, cpu}
	}
	grpcTargets := []struct {
		target
		header bool
	}{{static, false}, {target{"mesh, x-model-id", m.Gateway, m.envoy}, true}, {target{"mesh, body only", m.Gateway, m.envoy}, false}}
	for range b.N {
		for _, tg := range targets {
			url := "http://" + tg.addr + "/v2/models/iris/infer"
			rows[tg.name] = measure(tg, func(qps float64) (float64, float64, float64) { return load(b, url, qps, d) })
		}
		for _, tg := range grpcTargets {
			rows["grpc "+tg.name] = measure(tg.target, func(qps float64) (float64, float64, float64) {
				return grpcLoad(b, tg.addr, tg.header, qps, d)
			})
		}
	}
	var sb strings.Builder
	table := func(title string, names []string) {
		base := rows[names[0]]
		fmt.Fprintf(&sb, "\n%s, fortio open loop at %d req/s for %v (8 connections), then max rate for %v\n", title, rate, d, d)
		fmt.Fprintf(&sb, "%-26s %9s %9s %9s %10s %10s %10s %10s %10s\n", "target", "p50", "p99", "max req/s", "CPU/req", "p50 ratio", "p99 ratio", "max ratio", "CPU ratio")
		for _, name := range names {
			r := rows[name]
			fmt.Fprintf(&sb, "%-26s %8.0fµs %8.0fµs %9.0f %8.0fµs %9.2fx %9.2fx %9.2fx %9.2fx\n", name, r.p50*1e6, r.p99*1e6, r.max, r.cpu*1e6,
				r.p50/base.p50, r.p99/base.p99, r.max/base.max, r.cpu/base.cpu)
		}
	}
	var names, grpcNames []string
	for _, tg := range targets {
		names = append(names, tg.name)
	}
	for _, tg := range grpcTargets {
		grpcNames = append(grpcNames, "grpc "+tg.name)
	}
	table("hot path attribution, iris over REST to one worker", names)
	table("hot path over gRPC, iris ModelInfer to one worker", grpcNames)
	fmt.Print(sb.String())
}

// grpcLoad runs iris ModelInfer calls at addr, open loop at qps (negative: as fast as they
// go) for d over 8 connections, naming the model in the x-model-id header too when header
// is set, and returns the latency's p50 and p99 in seconds and the rate achieved. Every call
// must succeed.
func grpcLoad(b *testing.B, addr string, header bool, qps float64, d time.Duration) (p50, p99, rate float64) {
	b.Helper()
	raw, err := tensor.EncodeRaw(tensor.Tensor{Datatype: tensor.FP32, Data: []float32{5.1, 3.5, 1.4, 0.2}})
	must(b, err)
	req := &inference.ModelInferRequest{ModelName: "iris",
		Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: "input", Datatype: "FP32", Shape: []int64{1, 4}}},
		RawInputContents: [][]byte{raw}}
	ctx := context.Background()
	if header {
		ctx = metadata.AppendToOutgoingContext(ctx, wire.HeaderModel, "iris")
	}
	const conns = 8
	o := periodic.RunnerOptions{QPS: qps, Duration: d, NumThreads: conns, Percentiles: []float64{50, 99}, Out: io.Discard}
	var failed atomic.Int64
	var runners []periodic.Runnable
	for range conns {
		client := inference.NewGRPCInferenceServiceClient(dial(b, addr))
		runners = append(runners, grpcInfer(func() bool {
			_, err := client.ModelInfer(ctx, req)
			if err != nil {
				failed.Add(1)
			}
			return err == nil
		}))
	}
	r := periodic.NewPeriodicRunner(&o) // which clears o's runners: they are its own from here
	r.Options().Runners = runners
	res := r.Run()
	if n := failed.Load(); n > 0 {
		b.Fatalf("gRPC load on %s: %d of %d calls failed", addr, n, res.DurationHistogram.Count)
	}
	p50, p99 = medianAndP99(res.DurationHistogram)
	return p50, p99, res.ActualQPS
}

// grpcInfer is one connection's call as a fortio Runnable.
type grpcInfer func() bool

func (f grpcInfer) Run(context.Context, periodic.ThreadID) (bool, string) { return f(), "" }
