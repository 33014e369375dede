//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/modelmesh/mesh/internal/proctest"
	"github.com/modelmesh/mesh/internal/residency"
	"github.com/modelmesh/mesh/proto/inference"
	"github.com/modelmesh/mesh/proto/meshv1"
)

// triton is a real tritonserver (CPU, Python backend) started with scripts/triton.sh.
type triton struct {
	*proctest.Process
	state, HTTP, GRPC, Metrics string
	args                       []string
}

func startTriton(t testing.TB) *triton {
	t.Helper()
	if _, err := os.Stat("../.venv-triton/bin/python"); err != nil {
		t.Fatalf("Triton's virtualenv is missing; run `make setup`: %v", err)
	}
	tr := &triton{state: t.TempDir(), HTTP: freePort(t), GRPC: freePort(t), Metrics: freePort(t)}
	_, hp, _ := net.SplitHostPort(tr.HTTP)
	_, gp, _ := net.SplitHostPort(tr.GRPC)
	_, mp, _ := net.SplitHostPort(tr.Metrics)
	tr.args = []string{tr.state, hp, gp, mp}
	tr.start(t)
	return tr
}

func (tr *triton) start(t testing.TB) {
	t.Helper()
	script, _ := filepath.Abs("../scripts/triton.sh")
	tr.Process = startProcess(t, "triton", script, tr.args, proctest.HTTPOK("http://"+tr.HTTP+"/v2/health/live"))
	p := tr.Process
	t.Cleanup(func() { removeShm(p) })
}

// kill ends Triton and its model stubs as a crash would, and removes the shared memory
// regions a killed Triton leaves behind (scripts/triton.sh names them after its pid).
func (tr *triton) kill() {
	tr.Process.Kill()
	removeShm(tr.Process)
}

func removeShm(p *proctest.Process) {
	left, _ := filepath.Glob(fmt.Sprintf("/dev/shm/mesh%d-*", p.Cmd.Process.Pid))
	for _, f := range left {
		os.Remove(f)
	}
}

// workerArgs run a worker as the agent of this Triton.
func (tr *triton) workerArgs(roots string) []string {
	return []string{"--runtime", "triton", "--triton-http", tr.HTTP, "--triton-grpc", tr.GRPC,
		"--triton-repository", filepath.Join(tr.state, "models"), "--triton-poll", "300ms", "--model-roots", roots}
}

// pythonModels writes Triton Python-backend models under dir: OUTPUT0 = INPUT0 * factor for
// FP32 [-1, 4]; a factor of 0 writes a model whose model.py fails at import.
func pythonModels(t testing.TB, dir string, factors map[string]int) {
	t.Helper()
	for name, factor := range factors {
		md := filepath.Join(dir, name)
		must(t, os.MkdirAll(filepath.Join(md, "1"), 0o755))
		must(t, os.WriteFile(filepath.Join(md, "config.pbtxt"), []byte(fmt.Sprintf(`name: %q
backend: "python"
max_batch_size: 0
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1, 4 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1, 4 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
`, name)), 0o644))
		body := fmt.Sprintf(`import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUTPUT0",
            (pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy() * %d).astype(np.float32))]) for r in requests]
`, factor)
		if factor == 0 {
			body = "raise RuntimeError('this model is broken on purpose')\n"
		}
		must(t, os.WriteFile(filepath.Join(md, "1", "model.py"), []byte(body), 0o644))
	}
}

const fourOnes = `{"inputs":[{"name":"INPUT0","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}`

// TestTritonThroughTheMesh: a real Triton behind a worker, driven in explicit model
// control, served through the gateway over REST and gRPC with no proxy hop through the
// worker; cold load, hot path, eviction under a budget, a broken model, Triton killed and
// back.
func TestTritonThroughTheMesh(t *testing.T) {
	tr := startTriton(t)
	models := t.TempDir()
	pythonModels(t, models, map[string]int{"double": 2, "triple": 3, "quad": 4, "broken": 0})
	var reg strings.Builder
	reg.WriteString("models:\n")
	for _, name := range []string{"double", "triple", "quad", "broken"} {
		// Declared 100 MiB each: a 250 MiB worker holds two.
		fmt.Fprintf(&reg, "  - {name: %s, runtime: triton, versions: [{version: \"1\", storageUri: \"file://%s/%s\", memoryBytes: 104857600}]}\n", name, models, name)
	}
	m := startMesh(t, meshOptions{Registry: reg.String(), Capacities: []string{"250MiB"}, WorkerArgs: append(tr.workerArgs(models), "--eviction-min-idle", "100ms")})
	m.awaitReads(t, "triton")

	// Cold over REST, then hot: Envoy routes to Triton's HTTP port itself.
	code, body := rawPost(t, "http://"+m.Gateway+"/v2/models/double/infer", fourOnes)
	if code != 200 || !strings.Contains(body, "[2.0,4.0,6.0,8.0]") {
		t.Fatalf("cold double: %d %s", code, body)
	}
	m.waitHot(t, "double", "1")
	before := m.decisions(t)
	for range 10 {
		if code, body := rawPost(t, "http://"+m.Gateway+"/v2/models/double/infer", fourOnes); code != 200 {
			t.Fatalf("hot double: %d %s", code, body)
		}
	}
	if m.decisions(t) != before {
		t.Fatal("hot requests reached ext_proc")
	}
	if n := m.envoyStat(t, "cluster.model|double|1.upstream_rq_total"); n < 10 {
		t.Fatalf("the double cluster (Triton's HTTP port) served %d requests", n)
	}

	// gRPC, from a stock client with no mesh header: Triton's gRPC port.
	ctx := context.Background()
	resp, err := m.Infer.ModelInfer(ctx, &inference.ModelInferRequest{ModelName: "double",
		Inputs: []*inference.ModelInferRequest_InferInputTensor{{Name: "INPUT0", Datatype: "FP32", Shape: []int64{1, 4},
			Contents: &inference.InferTensorContents{Fp32Contents: []float32{1, 2, 3, 4}}}}})
	if err != nil || len(resp.GetRawOutputContents()) != 1 {
		t.Fatalf("gRPC through the gateway: %v %v", resp, err)
	}
	eventually(t, 10*time.Second, "gRPC on its own cluster", func() bool {
		return m.routedReplicas(t, "model|double|1|grpc") == 1
	})
	if _, err := m.Infer.ModelInfer(ctx, &inference.ModelInferRequest{ModelName: "double",
		Inputs: []*inference.ModelInferRequest_InferInputTensor{{Name: "INPUT0", Datatype: "FP32", Shape: []int64{1, 4},
			Contents: &inference.InferTensorContents{Fp32Contents: []float32{1, 2, 3, 4}}}}}); err != nil {
		t.Fatalf("hot gRPC: %v", err)
	}
	if n := m.envoyStat(t, "cluster.model|double|1|grpc.upstream_rq_total"); n < 1 {
		t.Fatal("hot gRPC did not go to Triton's gRPC port")
	}

	// Eviction: a third model in a budget of two evicts the least recently used.
	for _, name := range []string{"triple", "quad"} {
		time.Sleep(200 * time.Millisecond) // past --eviction-min-idle
		if code, body := rawPost(t, "http://"+m.Gateway+"/v2/models/"+name+"/infer", fourOnes); code != 200 {
			t.Fatalf("%s: %d %s", name, code, body)
		}
	}
	if got := m.workers[0].metric(t, "mesh_worker_evictions_total"); got < 1 {
		t.Fatalf("%v evictions with three models in a budget of two", got)
	}

	// A broken model fails with Triton's reason; the others keep serving.
	code, body = rawPost(t, "http://"+m.Gateway+"/v2/models/broken/infer", fourOnes)
	if code != 503 || !strings.Contains(body, "broken on purpose") {
		t.Fatalf("broken model: %d %s", code, body)
	}
	if code, body := rawPost(t, "http://"+m.Gateway+"/v2/models/quad/infer", fourOnes); code != 200 {
		t.Fatalf("quad after a broken load: %d %s", code, body)
	}

	// Triton killed: the worker reports its models gone; once Triton is back, they load again
	// on demand.
	rdb := redis.NewClient(&redis.Options{Addr: m.redis.Addr})
	defer rdb.Close()
	keys := residency.Keys{Prefix: m.prefix}
	tr.kill()
	eventually(t, 10*time.Second, "the worker reports Triton's models gone", func() bool {
		return rdb.HLen(ctx, keys.Replicas(m.workers[0].ID)).Val() == 0
	})
	tr.start(t)
	eventually(t, 30*time.Second, "double answered again after Triton came back", func() bool {
		code, _ := rawPost(t, "http://"+m.Gateway+"/v2/models/double/infer", fourOnes)
		return code == 200
	})
}

// TestTritonWorkerBudgetFromMetrics: with --triton-metrics the worker's budget is what Triton
// reports (host memory on this CPU-only machine) less the reserve.
func TestTritonWorkerBudgetFromMetrics(t *testing.T) {
	tr := startTriton(t)
	w := startWorker(t, "budget", append(tr.workerArgs(t.TempDir()),
		"--triton-metrics", "http://"+tr.Metrics+"/metrics", "--capacity-reserve", "1GiB", "--capacity", "1MiB")...)
	list, err := w.Mgmt.List(context.Background(), &meshv1.ListRequest{})
	must(t, err)
	if list.GetCapacity().GetHostBytes() <= 1<<20 {
		t.Fatalf("capacity %d: --capacity was used instead of Triton's metrics", list.GetCapacity().GetHostBytes())
	}
	if !strings.Contains(w.Logs(), "nv_cpu_memory_total_bytes") {
		t.Fatal("the worker did not say which metric set its budget")
	}
}
