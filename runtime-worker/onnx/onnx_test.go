package onnx

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	ort "github.com/yalue/onnxruntime_go"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/runtime-worker/agent"
	"github.com/modelmesh/mesh/runtime-worker/tensor"
)

// One ONNX Runtime environment per process, shared by the tests of this package.
var backend *Backend

func TestMain(m *testing.M) {
	lib := os.Getenv("MESH_ORT_LIB")
	if lib == "" {
		found, _ := filepath.Glob("../../.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.*")
		if len(found) > 0 {
			lib = found[0]
		}
	}
	b, err := New(Config{Library: lib})
	if err != nil {
		os.Stderr.WriteString("onnx tests need ONNX Runtime; run `make test` or `make setup`: " + err.Error() + "\n")
		os.Exit(1)
	}
	backend = b
	code := m.Run()
	b.Close()
	os.Exit(code)
}

func modelsDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("MESH_MODELS")
	if dir == "" {
		dir = "../../testdata/models"
	}
	if _, err := os.Stat(filepath.Join(dir, "iris", "1", "model.onnx")); err != nil {
		t.Fatalf("demo models missing in %s; run `make models`: %v", dir, err)
	}
	return dir
}

type testset struct {
	Inputs          [][]float32 `json:"inputs"`
	Labels          []int64     `json:"labels"`
	SklearnAccuracy float64     `json:"sklearn_accuracy"`
}

func TestAccuracyMatchesScikitLearn(t *testing.T) {
	dir := modelsDir(t)
	for _, name := range []string{"iris", "digits", "breast-cancer"} {
		t.Run(name, func(t *testing.T) {
			m := placement.ModelVersion{Name: name, Version: "1"}
			loaded, err := backend.Load(context.Background(), m, agent.Files{Path: filepath.Join(dir, name, "1", "model.onnx"), GPU: -1})
			if err != nil {
				t.Fatal(err)
			}
			defer backend.Unload(context.Background(), m)
			if got := loaded.Metadata.Inputs[0]; got.Name != "input" || got.Datatype != tensor.FP32 || got.Shape[0] != -1 {
				t.Fatalf("input spec %+v", got)
			}
			var ts testset
			b, err := os.ReadFile(filepath.Join(dir, name, "testset.json"))
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(b, &ts); err != nil {
				t.Fatal(err)
			}
			features := len(ts.Inputs[0])
			flat := make([]float32, 0, len(ts.Inputs)*features)
			for _, row := range ts.Inputs {
				flat = append(flat, row...)
			}
			resp, err := backend.Infer(context.Background(), m, &tensor.Request{Model: m, Outputs: []string{"label"},
				Inputs: []tensor.Tensor{{Name: "input", Datatype: tensor.FP32, Shape: []int64{int64(len(ts.Inputs)), int64(features)}, Data: flat}}})
			if err != nil {
				t.Fatal(err)
			}
			if len(resp.Outputs) != 1 || resp.Outputs[0].Name != "label" {
				t.Fatalf("outputs %+v, want only the requested label", resp.Outputs)
			}
			labels := resp.Outputs[0].Data.([]int64)
			correct := 0
			for i, l := range labels {
				if l == ts.Labels[i] {
					correct++
				}
			}
			acc := float64(correct) / float64(len(labels))
			if d := acc - ts.SklearnAccuracy; d > 0.01 || d < -0.01 {
				t.Fatalf("accuracy %.4f through ONNX Runtime, scikit-learn %.4f", acc, ts.SklearnAccuracy)
			}
		})
	}
}

func TestLoadRejectsBadModels(t *testing.T) {
	dir := t.TempDir()
	corrupt := filepath.Join(dir, "corrupt.onnx")
	os.WriteFile(corrupt, []byte("this is not a protobuf"), 0o644)
	empty := filepath.Join(dir, "empty.onnx")
	os.WriteFile(empty, nil, 0o644)
	for _, path := range []string{corrupt, empty, filepath.Join(dir, "missing.onnx")} {
		_, err := backend.Load(context.Background(), placement.ModelVersion{Name: "bad", Version: "1"}, agent.Files{Path: path, GPU: -1})
		if err == nil {
			t.Fatalf("%s loaded", path)
		}
		if strings.TrimSpace(err.Error()) == "" {
			t.Fatalf("%s: empty error", path)
		}
	}
}

// TestScalarOutputIsRefusedAtLoad: a rank-0 output, which the binding cannot return, fails
// the load with the reason rather than every request later.
func TestScalarOutputIsRefusedAtLoad(t *testing.T) {
	m := placement.ModelVersion{Name: "scalar-output", Version: "1"}
	_, err := backend.Load(context.Background(), m, agent.Files{Path: filepath.Join(modelsDir(t), "scalar-output", "1"), GPU: -1})
	if err == nil {
		backend.Unload(context.Background(), m)
		t.Fatal("a model with a scalar output loaded")
	}
	if !strings.Contains(err.Error(), "scalar") || !strings.Contains(err.Error(), `"output"`) {
		t.Fatalf("error %q does not name the scalar output", err)
	}
}

func TestMeasuredSizeTracksWeights(t *testing.T) {
	dir := modelsDir(t)
	m := placement.ModelVersion{Name: "synthetic-32mb", Version: "1"}
	loaded, err := backend.Load(context.Background(), m, agent.Files{Path: filepath.Join(dir, "synthetic-32mb", "1", "model.onnx"), GPU: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer backend.Unload(context.Background(), m)
	const weights = 32 << 20
	if got := loaded.Memory; got.Host < weights/2 || got.Host > 4*weights || got.GPUTotal() != 0 {
		t.Fatalf("measured %s for a model with %d bytes of weights, all in host memory", got, weights)
	}
}

// TestExternalData: a model whose weights are ONNX external data beside model.onnx loads
// from its directory and computes with them.
func TestExternalData(t *testing.T) {
	dir := filepath.Join(modelsDir(t), "external-data", "1")
	m := placement.ModelVersion{Name: "external-data", Version: "1"}
	if _, err := backend.Load(context.Background(), m, agent.Files{Path: dir, GPU: -1}); err != nil {
		t.Fatal(err)
	}
	defer backend.Unload(context.Background(), m)
	ones := make([]float32, 64)
	for i := range ones {
		ones[i] = 1
	}
	resp, err := backend.Infer(context.Background(), m, &tensor.Request{Inputs: []tensor.Tensor{{Name: "input", Datatype: tensor.FP32, Shape: []int64{1, 64}, Data: ones}}})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, "weights.bin"))
	if err != nil {
		t.Fatal(err)
	}
	want := 0.0
	for i := 0; i+4 <= len(raw); i += 4 {
		want += float64(math.Float32frombits(binary.LittleEndian.Uint32(raw[i:])))
	}
	out := resp.Outputs[0]
	if got := float64(out.Data.([]float32)[0]); math.Abs(got-want) > 1e-3*math.Max(1, math.Abs(want)) {
		t.Fatalf("output %v, want the sum of the weights %v", got, want)
	}
}

// TestDestroySkipsTypedNils: a Run that fails part way leaves nil tensors in the outputs;
// releasing them must not panic.
func TestDestroySkipsTypedNils(t *testing.T) {
	var missing *ort.Tensor[float32]
	destroy([]ort.Value{nil, missing})
}
