//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/modelmesh/mesh/proto/inference"
	"github.com/modelmesh/mesh/proto/meshv1"
	"github.com/modelmesh/mesh/runtime-worker/tensor"
)

// rulesRegistry has a traffic rule of each kind:
//   - iris: a fault that aborts requests carrying x-chaos: abort with 418;
//   - breast-cancer: version 2 for users whose x-user starts with "beta-" and for gRPC
//     inference (a path regex), version 1 for the rest; response headers naming the rule;
//   - synthetic-16mb: tries of at most 5ms, retried twice on 5xx (which a timed-out try is).
const rulesRegistry = `
models:
  - name: iris
    versions: [{version: "1", storageUri: "file://${MODELS}/iris/1/model.onnx"}]
    traffic:
      - source: e2e chaos
        when: [{headers: {x-chaos: {exact: abort}}}]
        fault: {abortPercent: 100, abortStatus: 418}
        split: [{version: "1", weight: 1}]
  - name: breast-cancer
    defaultVersion: "1"
    versions:
      - {version: "1", storageUri: "file://${MODELS}/breast-cancer/1/model.onnx"}
      - {version: "2", storageUri: "file://${MODELS}/breast-cancer/2/model.onnx"}
    traffic:
      - when: [{headers: {x-user: {prefix: beta-}}}]
        split: [{version: "2", weight: 1}]
        responseHeaders: {set: {x-route: beta}}
      - when: [{uri: {regex: "/inference\\.GRPCInferenceService/Model(Infer|Metadata)"}}]
        split: [{version: "2", weight: 1}]
      - split: [{version: "1", weight: 1}]
        responseHeaders: {set: {x-route: stable}}
  - name: synthetic-16mb
    versions: [{version: "1", storageUri: "file://${MODELS}/synthetic-16mb/1/model.onnx"}]
    traffic:
      - split: [{version: "1", weight: 1}]
        timeout: 10s
        retries: {attempts: 2, perTryTimeout: 5ms, retryOn: 5xx}
`

// TestMeshRichTrafficRules: what a client sees of conditions, faults, header changes,
// timeouts and retries, on the cold path and then on the hot path.
func TestMeshRichTrafficRules(t *testing.T) {
	m := startMesh(t, meshOptions{Registry: rulesRegistry})
	ctx := context.Background()
	cancer := readTestset(t, "breast-cancer")
	cancerREST := func(headers map[string]string) (version, route string) {
		t.Helper()
		b, _ := json.Marshal(map[string]any{"inputs": []any{map[string]any{"name": "input", "shape": []int{1, cancer.Features}, "datatype": "FP32", "data": cancer.Inputs[0]}}})
		code, hdr, body := post(t, m.Gateway, "breast-cancer", string(b), headers)
		var out map[string]any
		if code != 200 || json.Unmarshal([]byte(body), &out) != nil {
			t.Fatalf("breast-cancer with %v: %d %s", headers, code, body)
		}
		v, _ := out["model_version"].(string)
		return v, hdr.Get("x-route")
	}
	cancerGRPC := func() string {
		t.Helper()
		raw, _ := tensor.EncodeRaw(tensor.Tensor{Datatype: tensor.FP32, Data: cancer.Inputs[0]})
		resp, err := m.Infer.ModelInfer(ctx, &inference.ModelInferRequest{ModelName: "breast-cancer",
			Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: "input", Datatype: "FP32", Shape: []int64{1, int64(cancer.Features)}}},
			RawInputContents: [][]byte{raw}})
		if err != nil {
			t.Fatalf("breast-cancer over gRPC: %v", err)
		}
		return resp.GetModelVersion()
	}
	checkCancer := func(phase string) {
		t.Helper()
		// gRPC first: cold, its version is loaded for the path regex.
		if v := cancerGRPC(); v != "2" {
			t.Errorf("%s: gRPC inference (path regex) answered by version %q, want 2", phase, v)
		}
		for _, tt := range []struct {
			user, version, route string
		}{{"", "1", "stable"}, {"beta-anna", "2", "beta"}, {"anna-beta-", "1", "stable"}} {
			if v, r := cancerREST(map[string]string{"x-user": tt.user}); v != tt.version || r != tt.route {
				t.Errorf("%s: x-user %q answered by version %q with x-route %q, want %q and %q", phase, tt.user, v, r, tt.version, tt.route)
			}
		}
	}
	chaos := func(phase string) {
		t.Helper()
		code, _, body := post(t, m.Gateway, "iris", irisSetosa, map[string]string{"x-chaos": "abort"})
		if code != 418 {
			t.Fatalf("%s: x-chaos: abort answered %d %s, want the fault's 418", phase, code, body)
		}
	}
	// The big input takes the model far more than 5ms: every try times out.
	slow := func(phase, cluster string) {
		t.Helper()
		retries, timeouts := m.envoyStat(t, "cluster."+cluster+".upstream_rq_retry"), m.envoyStat(t, "cluster."+cluster+".upstream_rq_per_try_timeout")
		code, _, body := post(t, m.Gateway, "synthetic-16mb", syntheticInput(256), nil)
		if code != 504 {
			t.Fatalf("%s: slow request answered %d %s, want 504", phase, code, body)
		}
		retries, timeouts = m.envoyStat(t, "cluster."+cluster+".upstream_rq_retry")-retries, m.envoyStat(t, "cluster."+cluster+".upstream_rq_per_try_timeout")-timeouts
		if retries != 2 || timeouts != 3 {
			t.Fatalf("%s: %d retries and %d timed-out tries in %s, want 2 and 3", phase, retries, timeouts, cluster)
		}
	}

	// Cold. An aborted request reaches neither ext_proc nor a worker.
	decisions := m.decisions(t)
	chaos("cold")
	if m.decisions(t) != decisions || m.loads(t) != 0 || m.resident(t, "iris") {
		t.Fatalf("an aborted request was decided (%v) or loaded iris (%v loads)", m.decisions(t)-decisions, m.loads(t))
	}
	if code, _, body := post(t, m.Gateway, "iris", irisSetosa, nil); code != 200 {
		t.Fatalf("cold iris: %d %s", code, body)
	}
	checkCancer("cold")
	slow("cold", "workers")

	// Hot, once every rule's route goes to the model clusters.
	for route, cluster := range map[string]string{"iris#0.0": "model|iris|1", "iris#1": "model|iris|1",
		"breast-cancer#0.0": "model|breast-cancer|2", "breast-cancer#1.0": "model|breast-cancer|2", "breast-cancer#2": "model|breast-cancer|1",
		"synthetic-16mb#0": "model|synthetic-16mb|1"} {
		eventually(t, 15*time.Second, "route "+route+" to "+cluster, func() bool { return m.routeCluster(t, route) == cluster })
	}
	decisions = m.decisions(t)
	chaos("hot")
	if code, _, body := post(t, m.Gateway, "iris", irisSetosa, nil); code != 200 {
		t.Fatalf("hot iris: %d %s", code, body)
	}
	checkCancer("hot")
	if after := m.decisions(t); after != decisions {
		t.Errorf("ext_proc decided %v hot requests", after-decisions)
	}
	// A timed-out try ejects the replica (a hung worker looks the same): the retries go to
	// the fallback listener, the cold path, where ext_proc decides each, and time out there
	// as well. The replica is ejected on Envoy's main thread; a retry that its backoff
	// (jittered, from 0 ms) sends before the worker threads learn it may still go to the
	// replica (seen on a loaded machine), so one of the two is enough.
	slowFallsBack := func(phase string) {
		t.Helper()
		fallback, decisions := m.envoyStat(t, "http.fallback.downstream_rq_total"), m.decisions(t)
		slow(phase, "model|synthetic-16mb|1")
		if got, decided := m.envoyStat(t, "http.fallback.downstream_rq_total")-fallback, m.decisions(t)-decisions; got < 1 || decided != float64(got) {
			t.Errorf("%s: %v tries fell back to the cold path and ext_proc decided %v, want the retries, each decided", phase, got, decided)
		}
	}
	slowFallsBack("hot")
	// Back from cold while its cluster is kept (for --route-timeout after its last replica
	// went): a timed-out try on the replica that came back is retried on the cold path too.
	if _, err := m.workers[0].Mgmt.Unload(ctx, &meshv1.UnloadRequest{Model: &meshv1.ModelRef{Name: "synthetic-16mb", Version: "1"}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "synthetic's cluster kept with the fallback alone", func() bool {
		return m.envoyStat(t, "cluster.model|synthetic-16mb|1.membership_total") == 1
	})
	if code, _, body := post(t, m.Gateway, "synthetic-16mb", syntheticInput(1), nil); code != 200 {
		t.Fatalf("synthetic again: %d %s", code, body)
	}
	eventually(t, 10*time.Second, "synthetic hot again", func() bool {
		return m.routedReplicas(t, "model|synthetic-16mb|1") == 1 && m.routeCluster(t, "synthetic-16mb#0") == "model|synthetic-16mb|1"
	})
	slowFallsBack("back from cold")
	if n := sumMetric(t, m.CPMetrics, "mesh_controlplane_nacks_total"); n != 0 {
		t.Errorf("Envoy rejected %v configurations", n)
	}
}

// post is sendInfer failing the test on a transport error.
func post(t testing.TB, gateway, model, body string, headers map[string]string) (int, http.Header, string) {
	t.Helper()
	code, header, raw, err := sendInfer(gateway, model, body, headers)
	if err != nil {
		t.Fatal(err)
	}
	return code, header, string(raw)
}

// syntheticInput is a request of rows rows for the synthetic models (64 features).
func syntheticInput(rows int) string {
	data := strings.TrimSuffix(strings.Repeat("1,", rows*64), ",")
	return fmt.Sprintf(`{"inputs":[{"name":"input","shape":[%d,64],"datatype":"FP32","data":[%s]}]}`, rows, data)
}

// resident reports whether any worker holds a replica of the model, in any state.
func (m *mesh) resident(t testing.TB, model string) bool {
	t.Helper()
	for _, w := range m.workers {
		list, err := w.Mgmt.List(context.Background(), &meshv1.ListRequest{})
		if err != nil {
			t.Fatalf("list worker %s: %v", w.ID, err)
		}
		for _, r := range list.GetReplicas() {
			if r.GetModel().GetName() == model {
				return true
			}
		}
	}
	return false
}

// routeCluster is the cluster of the named route in the route configuration Envoy has
// accepted ("" when there is no such route, or it splits over weighted clusters).
func (m *mesh) routeCluster(t testing.TB, name string) string {
	t.Helper()
	code, body := get(t, "http://"+m.Admin+"/config_dump?resource=dynamic_route_configs")
	if code != 200 {
		t.Fatalf("admin config_dump: %d", code)
	}
	var dump struct {
		Configs []struct {
			RouteConfig struct {
				VirtualHosts []struct {
					Routes []struct {
						Name  string `json:"name"`
						Route struct {
							Cluster string `json:"cluster"`
						} `json:"route"`
					} `json:"routes"`
				} `json:"virtual_hosts"`
			} `json:"route_config"`
		} `json:"configs"`
	}
	must(t, json.Unmarshal([]byte(body), &dump))
	for _, c := range dump.Configs {
		for _, vh := range c.RouteConfig.VirtualHosts {
			for _, r := range vh.Routes {
				if r.Name == name {
					return r.Route.Cluster
				}
			}
		}
	}
	return ""
}
