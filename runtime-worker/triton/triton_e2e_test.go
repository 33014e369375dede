//go:build e2e

package triton

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/internal/proctest"
	"github.com/modelmesh/mesh/proto/inference"
	"github.com/modelmesh/mesh/runtime-worker/agent"
	"github.com/modelmesh/mesh/runtime-worker/modelserver"
)

// server is a real tritonserver started with scripts/triton.sh.
type server struct {
	http, grpc, metrics string
	repo                string
}

func startTriton(t *testing.T) *server {
	t.Helper()
	if _, err := os.Stat("../../.venv-triton/bin/python"); err != nil {
		t.Fatalf("Triton's virtualenv is missing; run `make setup`: %v", err)
	}
	state := t.TempDir()
	ports := proctest.FreePorts(t, 3)
	hp, gp, mp := ports[0], ports[1], ports[2]
	s := &server{http: "127.0.0.1:" + hp, grpc: "127.0.0.1:" + gp, metrics: "127.0.0.1:" + mp, repo: filepath.Join(state, "models")}
	// GPU metrics on (the script turns them off), so that Triton reports its GPUs as it does
	// for a worker's --triton-metrics; a later flag wins.
	p := proctest.Start(t, "triton", "../../scripts/triton.sh", state, hp, gp, mp, "--allow-gpu-metrics=true")
	p.Await(t, 60*time.Second, proctest.HTTPOK("http://"+s.http+"/v2/health/live"))
	return s
}

// infer posts the input [1, 2, 3, 4] to model on Triton's HTTP port and returns the answer.
func (s *server) infer(t *testing.T, model string) (int, string) {
	t.Helper()
	resp, err := http.Post("http://"+s.http+"/v2/models/"+model+"/infer", "application/json",
		strings.NewReader(`{"inputs":[{"name":"INPUT0","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}`))
	must(t, err)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// pythonModel writes a Triton Python-backend model directory: OUTPUT0 = INPUT0 * factor,
// FP32 [-1, 4]. body replaces model.py when set.
func pythonModel(t *testing.T, dir, name string, factor int, body string) string {
	t.Helper()
	md := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Join(md, "1"), 0o755); err != nil {
		t.Fatal(err)
	}
	config := fmt.Sprintf(`name: %q
backend: "python"
max_batch_size: 0
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1, 4 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1, 4 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
`, name)
	if body == "" {
		body = fmt.Sprintf(`import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        out = []
        for req in requests:
            x = pb_utils.get_input_tensor_by_name(req, "INPUT0").as_numpy()
            out.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUTPUT0", (x * %d).astype(np.float32))]))
        return out
`, factor)
	}
	must(t, os.WriteFile(filepath.Join(md, "config.pbtxt"), []byte(config), 0o644))
	must(t, os.WriteFile(filepath.Join(md, "1", "model.py"), []byte(body), 0o644))
	return md
}

func TestBackendAgainstRealTriton(t *testing.T) {
	s := startTriton(t)
	b, err := New(modelserver.Config{Repository: s.repo, GRPCAddr: s.grpc}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	must(t, err)
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	src := t.TempDir()

	// Capacity from Triton's own metrics, less a reserve: one budget per GPU Triton reports,
	// or, on a host without GPUs, its host memory. The rest of the test branches on the GPUs.
	var capacity placement.Memory
	var metric string
	// The metrics port may open a moment after Triton is ready, and the memory figures
	// after that (ErrNotYet): both are waited for.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		capacity, metric, err = Capacity(ctx, "http://"+s.metrics+"/metrics", 1<<30)
		if err == nil || time.Now().After(deadline) {
			break
		}
	}
	must(t, err)
	gpus := len(capacity.GPU)
	t.Logf("triton reports %d GPUs: %s from %s", gpus, capacity, metric)
	if gpus == 0 && (metric != "nv_cpu_memory_total_bytes" || capacity.Host <= 0) ||
		gpus > 0 && (metric != "nv_gpu_memory_total_bytes" || capacity.Host != 0 || slices.Min(capacity.GPU) <= 0) {
		t.Fatalf("capacity %s from %q", capacity, metric)
	}
	if _, _, err := Capacity(ctx, "http://"+s.metrics+"/metrics", 1<<62); err == nil {
		t.Fatal("a reserve larger than the memory was accepted")
	}

	double := placement.ModelVersion{Name: "double", Version: "1"}
	doubleDir := pythonModel(t, src, "double", 2, "")
	// Asked for GPU 0: the model's own KIND_CPU instance group wins, so it loads, and its
	// memory is host memory, with or without GPUs.
	loaded, err := b.Load(ctx, double, agent.Files{Path: doubleDir, GPU: 0})
	must(t, err)
	var files int64
	filepath.Walk(doubleDir, func(_ string, fi os.FileInfo, _ error) error {
		if fi != nil && fi.Mode().IsRegular() {
			files += fi.Size()
		}
		return nil
	})
	t.Logf("double: %d bytes of files, %s measured", files, loaded.Memory)
	if in := loaded.Metadata.Inputs; len(in) != 1 || in[0].Name != "INPUT0" || in[0].Datatype != "FP32" {
		t.Fatalf("metadata %+v", loaded.Metadata)
	}
	// Triton reports no memory for Python models on CPU: the stub process is measured.
	if host := loaded.Memory.Host; host < 10<<20 || host > 1<<30 || loaded.Memory.GPUTotal() != 0 {
		t.Fatalf("measured %s for a numpy model on CPU", loaded.Memory)
	}
	// Triton serves it on its own port.
	if code, body := s.infer(t, "double"); code != 200 || !strings.Contains(body, "[2.0,4.0,6.0,8.0]") {
		t.Fatalf("infer through triton: %d %s", code, body)
	}
	// Triton updates its statistics just after answering.
	var stats []Usage
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		stats, err = Stats(ctx, b.Client())
		must(t, err)
		if len(stats) == 1 && stats[0].InferenceCount == 1 && stats[0].LastInferenceMs != 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("statistics %+v, want one inference with a time", stats)
		}
	}

	// Broken models fail with Triton's reason and leave the repository and the rest alone.
	broken := []struct {
		name, body, want string
	}{
		{"boom", "raise RuntimeError('boom at import')\n", "boom at import"},
		{"nofile", "", "no directory for version"},
		{"badconfig", "", "failed to load 'badconfig'"},
	}
	for _, tt := range broken {
		dir := pythonModel(t, src, tt.name, 1, tt.body)
		switch tt.name {
		case "nofile":
			must(t, os.RemoveAll(filepath.Join(dir, "1")))
		case "badconfig":
			must(t, os.WriteFile(filepath.Join(dir, "config.pbtxt"), []byte("name: \"badconfig\"\nbackend: python\ninput [ { output: 1 } ]\n"), 0o644))
		}
		_, err := b.Load(ctx, placement.ModelVersion{Name: tt.name, Version: "1"}, agent.Files{Path: dir, GPU: -1})
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Fatalf("%s: error %v, want it to contain %q", tt.name, err, tt.want)
		}
		if _, err := os.Stat(filepath.Join(s.repo, tt.name)); !os.IsNotExist(err) {
			t.Fatalf("%s: failed model left in the repository", tt.name)
		}
	}
	if !b.Live(ctx) {
		t.Fatal("triton not live after bad models")
	}
	// A model that leaves placement to Triton is pinned to the GPU the worker chose. Pinned
	// to one past Triton's last GPU (GPU 0 on a server without GPUs), Triton refuses it,
	// which shows the placement reached Triton.
	unplacedModel := placement.ModelVersion{Name: "unplaced", Version: "1"}
	unplaced := pythonModel(t, src, "unplaced", 1, "")
	config, err := os.ReadFile(filepath.Join(unplaced, "config.pbtxt"))
	must(t, err)
	must(t, os.WriteFile(filepath.Join(unplaced, "config.pbtxt"), []byte(strings.ReplaceAll(string(config), "instance_group [ { count: 1 kind: KIND_CPU } ]\n", "")), 0o644))
	_, err = b.Load(ctx, unplacedModel, agent.Files{Path: unplaced, GPU: gpus})
	if err == nil || !strings.Contains(strings.ToLower(err.Error()), "gpu") {
		t.Fatalf("a model pinned to GPU %d, where Triton's metrics report %d GPUs: %v, want Triton's refusal naming the GPU", gpus, gpus, err)
	}
	t.Logf("pinned to a missing GPU: %v", err)
	if gpus > 0 {
		// Pinned to a GPU Triton has, it loads there and serves.
		_, err := b.Load(ctx, unplacedModel, agent.Files{Path: unplaced, GPU: 0})
		must(t, err)
		installed, err := os.ReadFile(filepath.Join(s.repo, "unplaced", "config.pbtxt"))
		must(t, err)
		if !strings.Contains(string(installed), "kind: KIND_GPU, count: 1, gpus: [ 0 ]") {
			t.Fatalf("installed config.pbtxt not pinned to GPU 0:\n%s", installed)
		}
		if code, body := s.infer(t, "unplaced"); code != 200 || !strings.Contains(body, "[1.0,2.0,3.0,4.0]") {
			t.Fatalf("infer on GPU 0: %d %s", code, body)
		}
		must(t, b.Unload(ctx, unplacedModel))
	}
	if _, err := b.Load(ctx, placement.ModelVersion{Name: "double", Version: "2"}, agent.Files{Path: pythonModel(t, src, "double", 2, ""), GPU: -1}); err == nil {
		t.Fatal("a second version of a held model loaded")
	}

	// A model loaded behind the worker's back is an orphan: reconciliation unloads it.
	pythonModel(t, s.repo, "orphan", 3, "")
	_, err = b.Client().RepositoryModelLoad(ctx, &inference.RepositoryModelLoadRequest{ModelName: "orphan"})
	must(t, err)
	got, err := b.Reconcile(ctx)
	must(t, err)
	if len(got) != 1 || got[0] != "orphan" {
		t.Fatalf("reconcile unloaded %v, want [orphan]", got)
	}

	must(t, b.Unload(ctx, double))
	idx, err := b.Client().RepositoryIndex(ctx, &inference.RepositoryIndexRequest{Ready: true})
	must(t, err)
	if len(idx.GetModels()) != 0 {
		t.Fatalf("ready after unload: %v", idx.GetModels())
	}
}
