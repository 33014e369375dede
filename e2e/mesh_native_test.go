//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/modelmesh/mesh/proto/inference"
	"github.com/modelmesh/mesh/runtime-worker/tensor"
)

// TestMeshNativeRoutes: requests to a hot model that Envoy's own routes can decide (the
// KServe v2 infer path with no id header) are served with the wasm filter and ext_proc left out, so the
// filter's per-model counter does not move while the model cluster's does; every other
// request still goes through the filter, with each of its behaviours (docs/wasm.md) kept
// for a model that is hot.
func TestMeshNativeRoutes(t *testing.T) {
	m := startMesh(t, meshOptions{})
	if code, out := inferREST(t, m.Gateway, "iris", irisSetosa, nil); code != 200 || label(t, out) != 0 {
		t.Fatalf("cold iris: %d %v", code, out)
	}
	m.waitHot(t, "iris", "1")
	filtered := func() int64 { return m.envoyStat(t, "wasmcustom.modelmesh.model_requests.iris") }
	served := func() int64 { return m.envoyStat(t, "cluster.model|iris|1.upstream_rq_total") }
	routed := func() int64 { return m.envoyStat(t, "vhost.models.route.iris.upstream_rq_total") }
	// post sends body to path with headers (a name may repeat) and returns the status and
	// the decoded answer.
	post := func(path string, headers [][2]string) (int, map[string]any) {
		req, err := http.NewRequest("POST", "http://"+m.Gateway+path, strings.NewReader(irisSetosa))
		must(t, err)
		req.Header.Set("Content-Type", "application/json")
		for _, h := range headers {
			req.Header.Add(h[0], h[1])
		}
		resp, err := http.DefaultClient.Do(req)
		must(t, err)
		defer resp.Body.Close()
		var out map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
			t.Fatalf("POST %s with %v: %d with a body that is not JSON: %v", path, headers, resp.StatusCode, err)
		}
		return resp.StatusCode, out
	}

	// Native: the filter never sees them, ext_proc is not asked, the cluster serves them and
	// the model's native route stats count them.
	decisions, f, s, r := m.decisions(t), filtered(), served(), routed()
	native := []struct {
		name, path string
		headers    [][2]string
	}{
		{"infer path", "/v2/models/iris/infer", nil},
		{"infer path with a query", "/v2/models/iris/infer?trace=1", nil},
		{"versioned infer path", "/v2/models/iris/versions/1/infer", nil},
		{"spoofed internal headers", "/v2/models/iris/infer", [][2]string{{"x-gateway-destination-endpoint", "127.0.0.1:1"}, {"x-mesh-internal", "1"}}},
	}
	for _, tt := range native {
		if code, out := post(tt.path, tt.headers); code != 200 || label(t, out) != 0 {
			t.Fatalf("%s: %d %v", tt.name, code, out)
		}
	}
	raw, err := tensor.EncodeRaw(tensor.Tensor{Datatype: tensor.FP32, Data: []float32{5.1, 3.5, 1.4, 0.2}})
	must(t, err)
	infer := func(ctx context.Context, name string) (*inference.ModelInferResponse, error) {
		return m.Infer.ModelInfer(ctx, &inference.ModelInferRequest{ModelName: name,
			Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: "input", Datatype: "FP32", Shape: []int64{1, 4}}},
			RawInputContents: [][]byte{raw}})
	}
	if got := filtered() - f; got != 0 {
		t.Fatalf("the filter counted %d of the native requests", got)
	}
	if got := served() - s; got < int64(len(native)) {
		t.Fatalf("the iris cluster served %d of %d native requests", got, len(native))
	}
	if got := routed() - r; got != int64(len(native)) {
		t.Fatalf("the native route stats counted %d of %d native requests", got, len(native))
	}
	if _, prom := get(t, "http://"+m.Admin+"/stats/prometheus"); !strings.Contains(prom, `envoy_vhost_models_route_upstream_rq_total{model_id="iris"}`) {
		t.Fatal(`no envoy_vhost_models_route_upstream_rq_total{model_id="iris"} in the gateway's Prometheus stats`)
	}
	if got := m.decisions(t) - decisions; got != 0 {
		t.Fatalf("ext_proc decided %v native requests", got)
	}

	// Through the filter, hot all the same: the model in the gRPC body only, or in the
	// x-model-id header, an id header on a KServe v2 path (checked against it), another id
	// header.
	f, s, r = filtered(), served(), routed()
	if _, err := infer(context.Background(), "iris"); err != nil {
		t.Fatalf("gRPC naming iris in the body: %v", err)
	}
	if _, err := infer(metadata.AppendToOutgoingContext(context.Background(), "x-model-id", "iris"), "iris"); err != nil {
		t.Fatalf("gRPC with x-model-id: %v", err)
	}
	for _, h := range [][2]string{{"x-model-id", "iris"}, {"mm-model-id", "iris"}} {
		if code, out := post("/v2/models/iris/infer", [][2]string{h}); code != 200 || label(t, out) != 0 {
			t.Fatalf("%s on the infer path: %d %v", h[0], code, out)
		}
	}
	if gotF, gotS, gotR := filtered()-f, served()-s, routed()-r; gotF != 4 || gotS < 4 || gotR != 0 {
		t.Fatalf("requests through the filter: %d counted by it, %d served by the iris cluster, %d by the native route stats; want 4, 4, 0", gotF, gotS, gotR)
	}
	if got := m.decisions(t) - decisions; got != 0 {
		t.Fatalf("ext_proc decided %v hot requests", got)
	}

	// Refused by the filter as before, though iris is hot and a native route names it.
	refused := []struct {
		name, path string
		headers    [][2]string
	}{
		{"header and path name different models", "/v2/models/iris/infer", [][2]string{{"x-model-id", "digits"}}},
		{"header and path name different versions", "/v2/models/iris/versions/1/infer", [][2]string{{"x-model-version", "2"}}},
		{"the id header twice, different values", "/infer", [][2]string{{"x-model-id", "iris"}, {"x-model-id", "digits"}}},
		{"escaped separator", "/v2/models/iris%2F/infer", nil},
		{"versions without a version", "/v2/models/iris/versions/", nil},
	}
	for _, tt := range refused {
		if code, out := post(tt.path, tt.headers); code != 400 || out["error"] == nil {
			t.Errorf("%s: %d %v, want 400 with an error", tt.name, code, out)
		}
	}
	bad := metadata.AppendToOutgoingContext(context.Background(), "x-model-id", "bad..id")
	if _, err := infer(bad, "iris"); status.Code(err) != codes.InvalidArgument {
		t.Errorf("gRPC with an invalid x-model-id: %v, want InvalidArgument", err)
	}
	if _, err := infer(context.Background(), "a/../b"); status.Code(err) != codes.InvalidArgument {
		t.Errorf("gRPC naming an invalid model in the body: %v, want InvalidArgument", err)
	}
}
