//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"

	"io"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/modelmesh/mesh/proto/inference"
	"github.com/modelmesh/mesh/proto/meshv1"
	"github.com/modelmesh/mesh/runtime-worker/tensor"
)

const irisSetosa = `{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}`

// sumMetric adds every sample of a metric family (all label values) at a /metrics address.
func sumMetric(t testing.TB, addr, name string) float64 {
	t.Helper()
	code, body := get(t, "http://"+addr+"/metrics")
	if code != 200 {
		t.Fatalf("metrics at %s: %d", addr, code)
	}
	var sum float64
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, name+"{") || strings.HasPrefix(line, name+" ") {
			v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
			must(t, err)
			sum += v
		}
	}
	return sum
}

// inferREST posts body to model through the gateway and returns the status and the answer.
func inferREST(t testing.TB, gateway, model, body string, headers map[string]string) (int, map[string]any) {
	t.Helper()
	code, out, err := postInfer(gateway, model, body, headers)
	if err != nil {
		t.Fatal(err)
	}
	return code, out
}

// postInfer is inferREST for goroutines other than the test's: it reports errors instead of
// failing the test.
func postInfer(gateway, model, body string, headers map[string]string) (int, map[string]any, error) {
	code, _, raw, err := sendInfer(gateway, model, body, headers)
	if err != nil {
		return 0, nil, err
	}
	var out map[string]any
	if err := json.Unmarshal(raw, &out); err != nil {
		return code, nil, fmt.Errorf("POST %s answered %d with non-JSON %q", model, code, raw)
	}
	return code, out, nil
}

// sendInfer posts a KServe v2 inference request for model through the gateway and returns
// the status, headers and body, whatever they are.
func sendInfer(gateway, model, body string, headers map[string]string) (int, http.Header, []byte, error) {
	req, _ := http.NewRequest("POST", "http://"+gateway+"/v2/models/"+model+"/infer", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, raw, err
}

// testsetRow is an inference request body holding the first row of a demo model's test set.
func testsetRow(t testing.TB, name string) string {
	t.Helper()
	ts := readTestset(t, name)
	b, err := json.Marshal(map[string]any{"inputs": []any{map[string]any{"name": "input", "shape": []int{1, ts.Features}, "datatype": "FP32", "data": ts.Inputs[0]}}})
	must(t, err)
	return string(b)
}

func label(t testing.TB, out map[string]any) int64 {
	t.Helper()
	l := labelOf(out)
	if l < 0 {
		t.Fatalf("no label in %v", out)
	}
	return l
}

// labelOf is the label an answer carries, or -1 when it has none.
func labelOf(out map[string]any) int64 {
	outputs, _ := out["outputs"].([]any)
	for _, o := range outputs {
		o, _ := o.(map[string]any)
		if data, _ := o["data"].([]any); o["name"] == "label" && len(data) > 0 {
			if v, ok := data[0].(float64); ok {
				return int64(v)
			}
		}
	}
	return -1
}

func (m *mesh) decisions(t testing.TB) float64 {
	return sumMetric(t, m.ExtProcMetrics, "mesh_extproc_decisions_total")
}

func (m *mesh) loads(t testing.TB) float64 {
	var n float64
	for _, w := range m.workers {
		n += w.metric(t, `mesh_worker_loads_total{result="ok"}`)
	}
	return n
}

// ready reports whether any running worker holds the model version ready.
func (m *mesh) ready(t testing.TB, name, version string) bool {
	t.Helper()
	for _, w := range m.workers {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		list, err := w.Mgmt.List(ctx, &meshv1.ListRequest{})
		cancel()
		if err != nil {
			continue // a stopped (or paused) worker serves nothing
		}
		for _, r := range list.GetReplicas() {
			if r.GetModel().GetName() == name && r.GetModel().GetVersion() == version && r.GetState() == meshv1.ReplicaState_REPLICA_STATE_READY {
				return true
			}
		}
	}
	return false
}

// routedReplicas is how many replicas Envoy has in a model cluster: its members less the
// fallback listener that every model cluster has at priority 1 (docs/architecture.md,
// "Worker failure"); 0 when there is no such cluster.
func (m *mesh) routedReplicas(t testing.TB, cluster string) int64 {
	t.Helper()
	return max(0, m.envoyStat(t, "cluster."+cluster+".membership_total")-1)
}

// waitHot waits until Envoy has a ready replica in the cluster of model version mv: a
// healthy host besides the fallback listener (every model cluster has it; a cluster kept
// after its last replica went has it alone).
func (m *mesh) waitHot(t testing.TB, name, version string) {
	t.Helper()
	stat := "cluster.model|" + name + "|" + version + ".membership_healthy"
	eventually(t, 10*time.Second, "Envoy routes "+name+":"+version+" on the hot path", func() bool { return m.envoyStat(t, stat) > 1 })
}

func TestMeshColdRequestThenHotPath(t *testing.T) {
	for _, delta := range []bool{false, true} {
		t.Run(map[bool]string{false: "sotw", true: "delta"}[delta], func(t *testing.T) {
			m := startMesh(t, meshOptions{Delta: delta})
			code, out := inferREST(t, m.Gateway, "iris", irisSetosa, nil)
			if code != 200 || label(t, out) != 0 {
				t.Fatalf("cold iris request: %d %v", code, out)
			}
			if got := m.loads(t); got != 1 {
				t.Fatalf("%v loads for one cold request", got)
			}
			m.waitHot(t, "iris", "1")
			before := m.decisions(t)
			for range 20 {
				if code, out := inferREST(t, m.Gateway, "iris", irisSetosa, nil); code != 200 || label(t, out) != 0 {
					t.Fatalf("hot iris request: %d %v", code, out)
				}
			}
			if after := m.decisions(t); after != before {
				t.Fatalf("ext_proc decided %v more times; hot requests must not reach it", after-before)
			}
			if n := m.envoyStat(t, "cluster.model|iris|1.upstream_rq_total"); n < 20 {
				t.Fatalf("the iris cluster served %d requests, want at least 20", n)
			}
		})
	}
}

func TestMeshConcurrentColdRequestsLoadOnce(t *testing.T) {
	m := startMesh(t, meshOptions{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	codes := map[int]int{}
	body := `{"inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","data":[` + strings.TrimSuffix(strings.Repeat("0,", 64), ",") + `]}]}`
	for range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, _ := inferREST(t, m.Gateway, "digits", body, nil)
			mu.Lock()
			codes[code]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	if codes[200] != 200 {
		t.Fatalf("statuses %v, want 200 x 200", codes)
	}
	if got := m.loads(t); got != 1 {
		t.Fatalf("%v loads for 200 concurrent cold requests, want 1", got)
	}
}

func TestMeshCanarySplit(t *testing.T) {
	m := startMesh(t, meshOptions{})
	row := func() string {
		ts := readTestset(t, "breast-cancer")
		b, _ := json.Marshal(map[string]any{"inputs": []any{map[string]any{"name": "input", "shape": []int{1, ts.Features}, "datatype": "FP32", "data": ts.Inputs[0]}}})
		return string(b)
	}()
	// Warm both versions, then wait for the weighted route.
	for _, v := range []string{"1", "2"} {
		if code, out := inferREST(t, m.Gateway, "breast-cancer/versions/"+v, row, nil); code != 200 {
			t.Fatalf("warm version %s: %d %v", v, code, out)
		}
	}
	m.waitHot(t, "breast-cancer", "1")
	m.waitHot(t, "breast-cancer", "2")
	eventually(t, 10*time.Second, "weighted route in force", func() bool {
		_, out := inferREST(t, m.Gateway, "breast-cancer", row, nil)
		return out["model_version"] != nil
	})
	const n = 1000
	canary := 0
	for range n {
		code, out := inferREST(t, m.Gateway, "breast-cancer", row, nil)
		if code != 200 {
			t.Fatalf("split request: %d %v", code, out)
		}
		if out["model_version"] == "2" {
			canary++
		}
	}
	// 10% of 1000 has a standard deviation of 9.5; 4 deviations either side.
	if canary < 62 || canary > 138 {
		t.Fatalf("%d of %d requests went to the 10%% canary", canary, n)
	}
}

func TestMeshErrorsAndSpoofing(t *testing.T) {
	m := startMesh(t, meshOptions{})
	tests := []struct {
		name    string
		model   string
		headers map[string]string
		want    int
	}{
		{"unknown model", "nope", nil, 404},
		{"invalid id", "bad..id", nil, 400},
		{"invalid id in header", "iris", map[string]string{"x-model-id": "-bad"}, 400},
		{"unregistered version", "iris/versions/7", nil, 404},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out := inferREST(t, m.Gateway, tt.model, irisSetosa, tt.headers)
			if msg, _ := out["error"].(string); code != tt.want || msg == "" {
				t.Fatalf("%d %v, want %d with an error message", code, out, tt.want)
			}
		})
	}
	// A client naming a destination itself is ignored: the request is answered by the mesh.
	code, out := inferREST(t, m.Gateway, "iris", irisSetosa, map[string]string{
		"x-gateway-destination-endpoint": "127.0.0.1:1", "x-mesh-internal": "1"})
	if code != 200 || label(t, out) != 0 {
		t.Fatalf("spoofed destination: %d %v", code, out)
	}

	ctx := context.Background()
	_, err := m.Infer.ModelInfer(ctx, &inference.ModelInferRequest{ModelName: "nope",
		Inputs: []*inference.ModelInferRequest_InferInputTensor{{Name: "input", Datatype: "FP32", Shape: []int64{1, 4}}}, RawInputContents: [][]byte{make([]byte, 16)}})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("gRPC unknown model: %v", err)
	}
	_, err = m.Infer.ModelInfer(ctx, &inference.ModelInferRequest{ModelName: "a/../b",
		Inputs: []*inference.ModelInferRequest_InferInputTensor{{Name: "input", Datatype: "FP32", Shape: []int64{1, 4}}}, RawInputContents: [][]byte{make([]byte, 16)}})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("gRPC invalid id: %v", err)
	}
}

func TestMeshStockGRPCClient(t *testing.T) {
	m := startMesh(t, meshOptions{})
	ctx := context.Background()
	ready, err := m.Infer.ServerReady(ctx, &inference.ServerReadyRequest{})
	if err != nil || !ready.GetReady() {
		t.Fatalf("ServerReady through the gateway: %v %v", ready, err)
	}
	// Readiness of a cold model is answered without loading it; its metadata loads it.
	mr, err := m.Infer.ModelReady(ctx, &inference.ModelReadyRequest{Name: "digits"})
	if err != nil || mr.GetReady() || m.loads(t) != 0 {
		t.Fatalf("ModelReady of a cold model: %v %v, %v loads", mr, err, m.loads(t))
	}
	if code, _ := get(t, "http://"+m.Gateway+"/v2/models/digits/ready"); code != 404 || m.loads(t) != 0 {
		t.Fatalf("REST readiness of a cold model: %d, %v loads", code, m.loads(t))
	}
	dm, err := m.Infer.ModelMetadata(ctx, &inference.ModelMetadataRequest{Name: "digits"})
	if err != nil || dm.GetInputs()[0].GetShape()[1] != 64 || m.loads(t) != 1 {
		t.Fatalf("ModelMetadata of a cold model: %v %v, %v loads", dm, err, m.loads(t))
	}
	raw, _ := tensor.EncodeRaw(tensor.Tensor{Datatype: tensor.FP32, Data: []float32{5.1, 3.5, 1.4, 0.2}})
	for i := range 3 { // cold, then hot
		resp, err := m.Infer.ModelInfer(ctx, &inference.ModelInferRequest{ModelName: "iris",
			Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: "input", Datatype: "FP32", Shape: []int64{1, 4}}},
			RawInputContents: [][]byte{raw}})
		if err != nil {
			t.Fatalf("ModelInfer %d: %v", i, err)
		}
		got, err := tensor.DecodeRaw("label", tensor.INT64, []int64{1}, resp.GetRawOutputContents()[0])
		if err != nil || got.Data.([]int64)[0] != 0 {
			t.Fatalf("ModelInfer %d label: %v %v", i, got, err)
		}
		if i == 0 {
			m.waitHot(t, "iris", "1")
		}
	}
	meta, err := m.Infer.ModelMetadata(ctx, &inference.ModelMetadataRequest{Name: "iris"})
	if err != nil || meta.GetInputs()[0].GetName() != "input" {
		t.Fatalf("ModelMetadata: %v %v", meta, err)
	}
	// tritonclient, a stock KServe v2 client, over gRPC and over REST (binary tensors).
	for _, protocol := range []string{"grpc", "http"} {
		out, err := exec.Command("../.venv/bin/python", "../scripts/infer.py", "--protocol", protocol, "--url", m.Gateway,
			"iris", "5.1", "3.5", "1.4", "0.2").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "label 0") {
			t.Fatalf("tritonclient over %s: %v\n%s", protocol, err, out)
		}
	}
}

// TestMeshMinReplicas: a model with minReplicas is loaded before any request for it, and its
// first request takes the hot path.
func TestMeshMinReplicas(t *testing.T) {
	reg := "models:\n  - {name: iris, minReplicas: 2, versions: [{version: \"1\", storageUri: \"file://${MODELS}/iris/1/model.onnx\"}]}\n"
	m := startMesh(t, meshOptions{Registry: reg, Capacities: []string{"1GiB", "1GiB"}, ExtProcArgs: []string{"--warm-interval", "300ms"}})
	m.waitHot(t, "iris", "1")
	eventually(t, 15*time.Second, "iris on both workers", func() bool {
		return m.routedReplicas(t, "model|iris|1") == 2
	})
	before := m.decisions(t)
	if code, out := inferREST(t, m.Gateway, "iris", irisSetosa, nil); code != 200 || label(t, out) != 0 {
		t.Fatalf("first iris request: %d %v", code, out)
	}
	if m.decisions(t) != before || m.loads(t) != 2 {
		t.Fatalf("the first request went through ext_proc (%v decisions) or loads are %v, want 2", m.decisions(t)-before, m.loads(t))
	}
}
