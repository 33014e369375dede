//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/modelmesh/mesh/proto/inference"
)

// TestWasmModelIDInEnvoy runs modelid.wasm in a real Envoy (V8) in front of a REST and a
// gRPC upstream that record the headers they receive.
func TestWasmModelIDInEnvoy(t *testing.T) {
	rest := &wasmRESTRecorder{}
	restAddr := freePort(t)
	restSrv := &http.Server{Addr: restAddr, Handler: rest, Protocols: new(http.Protocols)}
	restSrv.Protocols.SetHTTP1(true)
	restSrv.Protocols.SetUnencryptedHTTP2(true)
	ln, err := net.Listen("tcp", restAddr)
	must(t, err)
	go restSrv.Serve(ln)
	t.Cleanup(func() { restSrv.Close() })

	infer := &wasmGRPCRecorder{}
	grpcAddr := freePort(t)
	gln, err := net.Listen("tcp", grpcAddr)
	must(t, err)
	gs := grpc.NewServer()
	inference.RegisterGRPCInferenceServiceServer(gs, infer)
	go gs.Serve(gln)
	t.Cleanup(gs.Stop)

	e := startWasmEnvoy(t, restAddr, grpcAddr)

	get := func(path string, headers map[string]string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest("POST", "http://"+e.addr+path, strings.NewReader(`{"inputs":[]}`))
		req.Header.Set("Content-Type", "application/json")
		for k, v := range headers {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		must(t, err)
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}

	t.Run("REST path sets the canonical headers and the route is chosen again", func(t *testing.T) {
		code, _ := get("/v2/models/iris/versions/1/infer?x=y", nil)
		h := rest.last()
		if code != 200 || h.Get("x-model-id") != "iris" || h.Get("x-model-version") != "1" {
			t.Fatalf("status %d, upstream saw x-model-id %q x-model-version %q", code, h.Get("x-model-id"), h.Get("x-model-version"))
		}
		// Only the route matching x-model-id: iris adds x-route; it was chosen on the
		// header the filter set, so the route cache was cleared.
		if got := h.Get("x-route"); got != "model-iris" {
			t.Errorf("x-route %q: the route was not chosen again after the filter set x-model-id", got)
		}
	})

	t.Run("header precedence and spoofed internal headers", func(t *testing.T) {
		code, _ := get("/v2/models/iris/infer", map[string]string{
			"mm-model-id": "digits", "mm-vmodel-id": "iris", "x-model-version": "",
			"x-gateway-destination-endpoint": "10.9.9.9:80", "x-mesh-foo": "spoof", "X-Mesh-Bar": "spoof",
		})
		h := rest.last()
		if code != 200 || h.Get("x-model-id") != "iris" {
			t.Fatalf("status %d, x-model-id %q; want iris from mm-vmodel-id", code, h.Get("x-model-id"))
		}
		for name := range h {
			if l := strings.ToLower(name); l == "x-gateway-destination-endpoint" || strings.HasPrefix(l, "x-mesh-") || l == "x-model-version" {
				t.Errorf("upstream received %s: %q", name, h.Values(name))
			}
		}
		code, _ = get("/v2/models/breast-cancer/infer", map[string]string{"x-model-id": "breast-cancer", "mm-vmodel-id": "iris"})
		if got := rest.last().Get("x-model-id"); code != 200 || got != "breast-cancer" {
			t.Errorf("x-model-id %q, want the client's x-model-id to win", got)
		}
		// A header naming another model than the path is refused, not routed by one and
		// served as the other.
		if code, _ = get("/v2/models/iris/infer", map[string]string{"x-model-id": "breast-cancer"}); code != 400 {
			t.Errorf("header and path naming different models: %d, want 400", code)
		}
	})

	t.Run("no model passes through", func(t *testing.T) {
		code, _ := get("/v2/health/ready", map[string]string{"x-mesh-foo": "spoof"})
		h := rest.last()
		if code != 200 || h.Get("x-model-id") != "" || h.Get("x-mesh-foo") != "" {
			t.Errorf("status %d, upstream headers %v", code, h)
		}
	})

	t.Run("invalid id is refused before the upstream", func(t *testing.T) {
		for _, tc := range []struct {
			path    string
			headers map[string]string
		}{
			{"/v2/models/a%2Fb/infer", nil},
			{"/v2/models/../infer", nil},
			{"/v2/models/iris/infer", map[string]string{"x-model-id": "-bad"}},
			{"/v2/models/iris/versions/1..2/infer", nil},
		} {
			calls := rest.count()
			code, body := get(tc.path, tc.headers)
			var out map[string]string
			if code != 400 || json.Unmarshal([]byte(body), &out) != nil || out["error"] == "" {
				t.Errorf("%s %v: status %d body %q, want 400 with a JSON error", tc.path, tc.headers, code, body)
			}
			if rest.count() != calls {
				t.Errorf("%s: the upstream was called", tc.path)
			}
		}
	})

	client := inference.NewGRPCInferenceServiceClient(dial(t, e.addr))
	// Each gRPC call has its own deadline, so that one stuck call fails alone.
	callCtx := func(t *testing.T) context.Context {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		t.Cleanup(cancel)
		return ctx
	}

	t.Run("gRPC ModelInfer names the model in its body", func(t *testing.T) {
		resp, err := client.ModelInfer(callCtx(t), &inference.ModelInferRequest{ModelName: "digits", ModelVersion: "3",
			RawInputContents: [][]byte{make([]byte, 200<<10)}})
		if err != nil {
			t.Fatal(err)
		}
		md := infer.last()
		if got := md.Get("x-model-id"); len(got) != 1 || got[0] != "digits" || resp.ModelName != "digits" {
			t.Errorf("upstream saw x-model-id %v", got)
		}
		if got := md.Get("x-model-version"); len(got) != 1 || got[0] != "3" {
			t.Errorf("upstream saw x-model-version %v", got)
		}
	})

	t.Run("gRPC header wins over the body", func(t *testing.T) {
		_, err := client.ModelInfer(metadata.AppendToOutgoingContext(callCtx(t), "x-model-id", "iris", "x-mesh-foo", "spoof"),
			&inference.ModelInferRequest{ModelName: "digits"})
		if err != nil {
			t.Fatal(err)
		}
		md := infer.last()
		if got := md.Get("x-model-id"); len(got) != 1 || got[0] != "iris" || len(md.Get("x-mesh-foo")) != 0 {
			t.Errorf("upstream metadata %v", md)
		}
	})

	t.Run("gRPC invalid id is INVALID_ARGUMENT", func(t *testing.T) {
		calls := infer.count()
		_, err := client.ModelInfer(callCtx(t), &inference.ModelInferRequest{ModelName: "bad/id"})
		if s, _ := status.FromError(err); s.Code() != codes.InvalidArgument || !strings.Contains(s.Message(), `"bad/id"`) {
			t.Errorf("error %v, want InvalidArgument naming the id", err)
		}
		if infer.count() != calls {
			t.Error("the upstream was called")
		}
	})

	t.Run("per-model counters", func(t *testing.T) {
		// iris: REST path, REST mm-vmodel-id, gRPC header = 3; digits: 1 gRPC body;
		// breast-cancer: 1; invalid: 5 REST (one a header contradicting the path) + 1 gRPC.
		want := map[string]int{
			"wasmcustom.modelmesh.model_requests.iris":          3,
			"wasmcustom.modelmesh.model_requests.digits":        1,
			"wasmcustom.modelmesh.model_requests.breast-cancer": 1,
			"wasmcustom.modelmesh.invalid_requests":             6,
			"wasmcustom.modelmesh.model_requests_overflow":      0,
		}
		var got map[string]int
		eventually(t, 10*time.Second, "stats match", func() bool {
			got = e.stats(t)
			for k, v := range want {
				if got[k] != v {
					return false
				}
			}
			return true
		})
		prom := e.admin(t, "/stats/prometheus")
		if !strings.Contains(prom, `modelmesh_model_requests{model_id="iris"} 3`) {
			t.Errorf("prometheus output lacks the model_id tag:\n%s", wasmGrep(prom, "modelmesh"))
		}
	})
}

func wasmGrep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// wasmRESTRecorder answers every HTTP request with 200 and keeps the headers it received.
type wasmRESTRecorder struct {
	mu      sync.Mutex
	headers []http.Header
}

func (r *wasmRESTRecorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	io.Copy(io.Discard, req.Body)
	r.mu.Lock()
	r.headers = append(r.headers, req.Header.Clone())
	r.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	io.WriteString(w, `{}`)
}

func (r *wasmRESTRecorder) last() http.Header {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.headers) == 0 {
		return http.Header{}
	}
	return r.headers[len(r.headers)-1]
}

func (r *wasmRESTRecorder) count() int { r.mu.Lock(); defer r.mu.Unlock(); return len(r.headers) }

// wasmGRPCRecorder is a KServe v2 gRPC server that keeps the metadata of each ModelInfer.
type wasmGRPCRecorder struct {
	inference.UnimplementedGRPCInferenceServiceServer
	mu sync.Mutex
	md []metadata.MD
}

func (s *wasmGRPCRecorder) ModelInfer(ctx context.Context, req *inference.ModelInferRequest) (*inference.ModelInferResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	s.mu.Lock()
	s.md = append(s.md, md)
	s.mu.Unlock()
	return &inference.ModelInferResponse{ModelName: strings.Join(md.Get("x-model-id"), ",")}, nil
}

func (s *wasmGRPCRecorder) last() metadata.MD {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.md) == 0 {
		return metadata.MD{}
	}
	return s.md[len(s.md)-1]
}

func (s *wasmGRPCRecorder) count() int { s.mu.Lock(); defer s.mu.Unlock(); return len(s.md) }

// wasmEnvoy is a running Envoy with the filter.
type wasmEnvoy struct {
	addr, adminAddr string
}

// wasmModuleOrBuild returns modelid.wasm from the -bin directory, or builds it when absent.
func wasmModuleOrBuild(t *testing.T) string {
	t.Helper()
	path, err := filepath.Abs(filepath.Join(*binDir, "modelid.wasm"))
	must(t, err)
	if _, err := os.Stat(path); err == nil {
		return path
	}
	path = filepath.Join(t.TempDir(), "modelid.wasm")
	cmd := exec.Command("go", "build", "-buildmode=c-shared", "-o", path, "../wasm")
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build modelid.wasm: %v\n%s", err, out)
	}
	return path
}

// wasmEnvoyBinary is the project's Envoy (make setup), or $MESH_ENVOY.
func wasmEnvoyBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("MESH_ENVOY"); p != "" {
		return p
	}
	p, err := filepath.Abs("../.venv/bin/envoy")
	must(t, err)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("envoy not found at %s; run `make setup` or set MESH_ENVOY", p)
	}
	return p
}

const wasmEnvoyBootstrap = `
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: %[1]s}}
stats_config:
  stats_tags:
  - tag_name: model_id
    regex: '^wasmcustom\.modelmesh\.model_requests(\.(.+))$'
static_resources:
  listeners:
  - name: gateway
    address: {socket_address: {address: 127.0.0.1, port_value: %[2]s}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: gateway
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: "/inference.", grpc: {}}
                route: {cluster: grpc}
              - match: {prefix: "/", headers: [{name: x-model-id, string_match: {exact: iris}}]}
                route: {cluster: rest}
                request_headers_to_add: [{header: {key: x-route, value: model-iris}}]
              - match: {prefix: "/"}
                route: {cluster: rest}
          http_filters:
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: modelid
                # Without it Envoy turns the filter's pause at the headers into
                # StopAllIterationAndWatermark and never calls proxy_on_request_body.
                allow_on_headers_stop_iteration: true
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: '{"max_models": 100}'
                vm_config:
                  runtime: envoy.wasm.runtime.v8
                  code: {local: {filename: %[3]q}}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: rest
    type: STATIC
    load_assignment:
      cluster_name: rest
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: %[4]s}}}}]}]
  - name: grpc
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
    load_assignment:
      cluster_name: grpc
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: %[5]s}}}}]}]
`

func wasmPort(addr string) string { _, p, _ := net.SplitHostPort(addr); return p }

// startWasmEnvoy runs Envoy with the filter in front of the two upstreams and waits until it is
// ready.
func startWasmEnvoy(t *testing.T, restAddr, grpcAddr string) *wasmEnvoy {
	t.Helper()
	e := &wasmEnvoy{addr: freePort(t), adminAddr: freePort(t)}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "envoy.yaml")
	must(t, os.WriteFile(cfg, []byte(fmt.Sprintf(wasmEnvoyBootstrap, wasmPort(e.adminAddr), wasmPort(e.addr), wasmModuleOrBuild(t),
		wasmPort(restAddr), wasmPort(grpcAddr))), 0o600))
	logPath := filepath.Join(dir, "envoy.log")
	cmd := exec.Command(wasmEnvoyBinary(t), "-c", cfg, "--concurrency", "1", "--disable-hot-restart",
		"--use-dynamic-base-id", "--log-path", logPath, "-l", "info")
	must(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("envoy log:\n%s", b)
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get("http://" + e.adminAddr + "/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return e
			}
		}
		select {
		case err := <-exited:
			b, _ := os.ReadFile(logPath)
			t.Fatalf("envoy exited at start: %v\n%s", err, b)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("envoy not ready after 60s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (e *wasmEnvoy) admin(t *testing.T, path string) string {
	t.Helper()
	resp, err := http.Get("http://" + e.adminAddr + path)
	must(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	must(t, err)
	return string(b)
}

// stats reads the counters named modelmesh from the admin interface.
func (e *wasmEnvoy) stats(t *testing.T) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, line := range strings.Split(e.admin(t, "/stats?filter=modelmesh"), "\n") {
		name, value, ok := strings.Cut(line, ": ")
		if !ok {
			continue
		}
		var n int
		if _, err := fmt.Sscan(value, &n); err == nil {
			out[name] = n
		}
	}
	return out
}
