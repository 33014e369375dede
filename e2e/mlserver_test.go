//go:build e2e

package e2e

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/internal/proctest"
	"github.com/modelmesh/mesh/internal/residency"
	"github.com/modelmesh/mesh/proto/inference"
	"github.com/modelmesh/mesh/proto/meshv1"
)

// mlserver is a real MLServer (scikit-learn, XGBoost and LightGBM runtimes) started with
// scripts/mlserver.sh.
type mlserver struct {
	*proctest.Process
	repo, HTTP, GRPC, Metrics string
	args                      []string
}

func startMLServer(t testing.TB) *mlserver {
	t.Helper()
	if _, err := os.Stat("../.venv-mlserver/bin/mlserver"); err != nil {
		t.Fatalf("MLServer's virtualenv is missing; run `make setup`: %v", err)
	}
	ml := &mlserver{repo: filepath.Join(t.TempDir(), "models"), HTTP: freePort(t), GRPC: freePort(t), Metrics: freePort(t)}
	_, hp, _ := net.SplitHostPort(ml.HTTP)
	_, gp, _ := net.SplitHostPort(ml.GRPC)
	_, mp, _ := net.SplitHostPort(ml.Metrics)
	ml.args = []string{ml.repo, hp, gp, mp}
	ml.start(t)
	return ml
}

func (ml *mlserver) start(t testing.TB) {
	t.Helper()
	script, _ := filepath.Abs("../scripts/mlserver.sh")
	ml.Process = startProcess(t, "mlserver", script, ml.args, proctest.HTTPOK("http://"+ml.HTTP+"/v2/health/live"))
}

// workerArgs run a worker as the agent of this MLServer.
func (ml *mlserver) workerArgs() []string {
	return []string{"--runtime", "mlserver", "--mlserver-http", ml.HTTP, "--mlserver-grpc", ml.GRPC,
		"--mlserver-repository", ml.repo, "--mlserver-metrics", "http://" + ml.Metrics + "/metrics", "--mlserver-poll", "300ms"}
}

// nativeTestset is a model's test split with its framework's own predictions
// (scripts/native_models.py).
type nativeTestset struct {
	Features    int         `json:"features"`
	Inputs      [][]float64 `json:"inputs"`
	Predictions []float64   `json:"predictions"`
	Datatype    string      `json:"datatype"`
}

func readNativeTestset(t testing.TB, name string) nativeTestset {
	t.Helper()
	body, err := os.ReadFile(filepath.Join(models(t), name, "testset.json"))
	must(t, err)
	var ts nativeTestset
	must(t, json.Unmarshal(body, &ts))
	return ts
}

// nativeModels are the demo models of MLServer's formats.
var nativeModels = []struct{ name, format, file string }{
	{"wine-sklearn", "sklearn", "model.joblib"},
	{"diabetes-xgboost", "xgboost", "model.json"},
	{"breast-cancer-lightgbm", "lightgbm", "model.txt"},
}

// samePredictions fails unless got equals the framework's predictions, within the rounding
// of their datatype.
func samePredictions(t testing.TB, what string, ts nativeTestset, got []float64) {
	t.Helper()
	if len(got) != len(ts.Predictions) {
		t.Fatalf("%s: %d predictions, want %d", what, len(got), len(ts.Predictions))
	}
	tol := 1e-12
	if ts.Datatype == "FP32" {
		tol = 1e-6
	}
	for i := range got {
		if math.Abs(got[i]-ts.Predictions[i]) > tol*math.Max(1, math.Abs(ts.Predictions[i])) {
			t.Fatalf("%s row %d: %v, the framework predicted %v", what, i, got[i], ts.Predictions[i])
		}
	}
}

// restPredict sends rows to model through the gateway over REST and returns the status, the
// body and the "predict" output.
func restPredict(t testing.TB, gateway, model string, rows [][]float64) (int, string, []float64) {
	t.Helper()
	var flat []float64
	for _, r := range rows {
		flat = append(flat, r...)
	}
	body, _ := json.Marshal(map[string]any{"inputs": []map[string]any{{"name": "input-0", "datatype": "FP64", "shape": []int{len(rows), len(rows[0])}, "data": flat}}})
	code, out := rawPost(t, "http://"+gateway+"/v2/models/"+model+"/infer", string(body))
	var resp struct {
		Outputs []struct {
			Name string    `json:"name"`
			Data []float64 `json:"data"`
		} `json:"outputs"`
	}
	json.Unmarshal([]byte(out), &resp)
	for _, o := range resp.Outputs {
		if o.Name == "predict" {
			return code, out, o.Data
		}
	}
	return code, out, nil
}

// grpcPredict does the same over gRPC, with the rows as FP64 contents.
func grpcPredict(t testing.TB, c inference.GRPCInferenceServiceClient, model string, rows [][]float64, datatype string) []float64 {
	t.Helper()
	var flat []float64
	for _, r := range rows {
		flat = append(flat, r...)
	}
	resp, err := c.ModelInfer(context.Background(), &inference.ModelInferRequest{ModelName: model,
		Inputs: []*inference.ModelInferRequest_InferInputTensor{{Name: "input-0", Datatype: "FP64", Shape: []int64{int64(len(rows)), int64(len(rows[0]))},
			Contents: &inference.InferTensorContents{Fp64Contents: flat}}}})
	if err != nil {
		t.Fatalf("gRPC %s: %v", model, err)
	}
	if len(resp.GetOutputs()) != 1 {
		t.Fatalf("gRPC %s: outputs %v", model, resp.GetOutputs())
	}
	out := resp.GetOutputs()[0]
	if raw := resp.GetRawOutputContents(); len(raw) == 1 {
		return decodeFloats(t, raw[0], out.GetDatatype())
	}
	c0 := out.GetContents()
	switch {
	case len(c0.GetFp64Contents()) > 0:
		return c0.GetFp64Contents()
	case len(c0.GetFp32Contents()) > 0:
		var got []float64
		for _, v := range c0.GetFp32Contents() {
			got = append(got, float64(v))
		}
		return got
	case len(c0.GetInt64Contents()) > 0:
		var got []float64
		for _, v := range c0.GetInt64Contents() {
			got = append(got, float64(v))
		}
		return got
	}
	t.Fatalf("gRPC %s: no %s data in %v", model, datatype, out)
	return nil
}

func decodeFloats(t testing.TB, raw []byte, datatype string) []float64 {
	t.Helper()
	var out []float64
	switch datatype {
	case "FP64", "INT64":
		for i := 0; i+8 <= len(raw); i += 8 {
			bits := binary.LittleEndian.Uint64(raw[i:])
			if datatype == "FP64" {
				out = append(out, math.Float64frombits(bits))
			} else {
				out = append(out, float64(int64(bits)))
			}
		}
	case "FP32":
		for i := 0; i+4 <= len(raw); i += 4 {
			out = append(out, float64(math.Float32frombits(binary.LittleEndian.Uint32(raw[i:]))))
		}
	default:
		t.Fatalf("raw output of datatype %s", datatype)
	}
	return out
}

// TestMixedFleet: ONNX Runtime workers, one MLServer worker and one Triton worker behind one
// gateway. Every model is placed on a worker that reads its format and answers over REST and
// gRPC, with the frameworks' own predictions; a stock tritonclient needs no mesh header;
// broken models are refused with MLServer's reason while the rest serve; MLServer's budget
// evicts; MLServer killed is reported and its models load again on demand.
func TestMixedFleet(t *testing.T) {
	ml := startMLServer(t)
	tr := startTriton(t)
	tritonModels := t.TempDir()
	pythonModels(t, tritonModels, map[string]int{"double": 2})
	broken := t.TempDir()
	must(t, os.WriteFile(filepath.Join(broken, "model.joblib"), []byte("not a pickle at all"), 0o644))

	var reg strings.Builder
	reg.WriteString("models:\n")
	reg.WriteString("  - {name: iris, versions: [{version: \"1\", storageUri: \"file://${MODELS}/iris/1/model.onnx\"}]}\n")
	for _, m := range nativeModels {
		fmt.Fprintf(&reg, "  - {name: %s, format: %s, versions: [{version: \"1\", storageUri: \"file://${MODELS}/%s/1/%s\"}]}\n", m.name, m.format, m.name, m.file)
	}
	// Copies of the scikit-learn model declared 40 MiB each, for evictions in the MLServer
	// worker's 100 MiB budget.
	for i := range 3 {
		fmt.Fprintf(&reg, "  - {name: wine-%d, format: sklearn, versions: [{version: \"1\", storageUri: \"file://${MODELS}/wine-sklearn/1/model.joblib\", memoryBytes: 41943040}]}\n", i)
	}
	fmt.Fprintf(&reg, "  - {name: corrupt, format: sklearn, versions: [{version: \"1\", storageUri: \"file://%s/model.joblib\"}]}\n", broken)
	reg.WriteString("  - {name: wrong-format, format: lightgbm, versions: [{version: \"1\", storageUri: \"file://${MODELS}/diabetes-xgboost/1/model.json\"}]}\n")
	reg.WriteString("  - {name: raises, format: sklearn, versions: [{version: \"1\", storageUri: \"file://${MODELS}/raises-sklearn/1/model.joblib\"}]}\n")
	fmt.Fprintf(&reg, "  - {name: double, runtime: triton, versions: [{version: \"1\", storageUri: \"file://%s/double\"}]}\n", tritonModels)

	m := startMesh(t, meshOptions{Registry: reg.String(), Capacities: []string{"1GiB"}, WorkerArgs: []string{"--eviction-min-idle", "100ms"},
		MoreWorkers: [][]string{
			append([]string{"--capacity", "100MiB", "--eviction-min-idle", "100ms", "--model-roots", models(t) + "," + broken}, ml.workerArgs()...),
			append([]string{"--capacity", "1GiB"}, tr.workerArgs(tritonModels)...),
		}})
	onnxWorker, mlWorker, tritonWorker := m.workers[0], m.workers[1], m.workers[2]
	m.awaitReads(t, "sklearn")
	m.awaitReads(t, "triton")

	// Each model of MLServer's formats: cold over REST, placed on the MLServer worker, the
	// framework's predictions for the whole test split; hot over gRPC, the same again.
	for _, nm := range nativeModels {
		ts := readNativeTestset(t, nm.name)
		code, body, got := restPredict(t, m.Gateway, nm.name, ts.Inputs)
		if code != 200 {
			t.Fatalf("%s over REST: %d %s", nm.name, code, body)
		}
		samePredictions(t, nm.name+" over REST", ts, got)
		if reps := m.replicasOf(t, nm.name+":1"); len(reps) != 1 || reps[mlWorker.ID].State != placement.StateReady {
			t.Fatalf("%s replicas %v, want one on the MLServer worker %s", nm.name, reps, mlWorker.ID)
		}
		m.waitHot(t, nm.name, "1")
		eventually(t, 10*time.Second, nm.name+" on its gRPC cluster", func() bool { return m.routedReplicas(t, "model|"+nm.name+"|1|grpc") == 1 })
		before := m.decisions(t)
		samePredictions(t, nm.name+" over gRPC", ts, grpcPredict(t, m.Infer, nm.name, ts.Inputs, ts.Datatype))
		if m.decisions(t) != before {
			t.Fatalf("%s: a hot gRPC request reached ext_proc", nm.name)
		}
		if n := m.envoyStat(t, "cluster.model|"+nm.name+"|1|grpc.upstream_rq_total"); n < 1 {
			t.Fatalf("%s: hot gRPC did not go to MLServer's gRPC port", nm.name)
		}
	}
	// Measured, not declared: the MLServer processes' growth, at least the file.
	list, err := mlWorker.Mgmt.List(context.Background(), &meshv1.ListRequest{})
	must(t, err)
	for _, r := range list.GetReplicas() {
		t.Logf("%s on MLServer: %d bytes (%s)", r.GetModel().GetName(), r.GetMemoryBytes(), r.GetSizeSource())
		if r.GetSizeSource() != "measured" || r.GetMemoryBytes() < 32<<10 || r.GetMemoryBytes() > 64<<20 {
			t.Fatalf("%s: %d bytes from %q, want a measured size", r.GetModel().GetName(), r.GetMemoryBytes(), r.GetSizeSource())
		}
	}

	// ONNX and Triton models go to the workers that read them, on the same gateway.
	if code, out := inferREST(t, m.Gateway, "iris", irisSetosa, nil); code != 200 || label(t, out) != 0 {
		t.Fatalf("iris: %d %v", code, out)
	}
	if code, body := rawPost(t, "http://"+m.Gateway+"/v2/models/double/infer", fourOnes); code != 200 || !strings.Contains(body, "[2.0,4.0,6.0,8.0]") {
		t.Fatalf("double on Triton: %d %s", code, body)
	}
	if reps := m.replicasOf(t, "iris:1"); len(reps) != 1 || reps[onnxWorker.ID].State != placement.StateReady {
		t.Fatalf("iris replicas %v, want one on the ONNX worker", reps)
	}
	if reps := m.replicasOf(t, "double:1"); len(reps) != 1 || reps[tritonWorker.ID].State != placement.StateReady {
		t.Fatalf("double replicas %v, want one on the Triton worker", reps)
	}

	// A stock tritonclient, no mesh header, over gRPC and REST (JSON tensors: MLServer does
	// not read Triton's binary ones).
	wine := readNativeTestset(t, "wine-sklearn")
	row := make([]string, len(wine.Inputs[0]))
	for i, v := range wine.Inputs[0] {
		row[i] = fmt.Sprint(v)
	}
	for _, protocol := range []string{"grpc", "http"} {
		out, err := exec.Command("../.venv/bin/python", append([]string{"../scripts/infer.py", "--protocol", protocol, "--url", m.Gateway,
			"--input", "input-0", "--datatype", "FP64", "--outputs", "predict", "--json-tensors", "wine-sklearn"}, row...)...).CombinedOutput()
		if want := fmt.Sprintf("predict %d", int(wine.Predictions[0])); err != nil || !strings.Contains(string(out), want) {
			t.Fatalf("tritonclient over %s: %v\n%s, want %q", protocol, err, out, want)
		}
	}

	// Broken models: each refused with MLServer's own reason; the others keep serving.
	for _, tt := range []struct{ model, want string }{
		{"corrupt", "builtins."}, // the exception unpickling raised
		{"wrong-format", "Unknown model format"},
	} {
		code, body, _ := restPredict(t, m.Gateway, tt.model, wine.Inputs[:1])
		if code != 503 || !strings.Contains(body, "mlserver refused "+tt.model+":1") || !strings.Contains(body, tt.want) {
			t.Fatalf("%s: %d %s, want 503 with MLServer's reason %q", tt.model, code, body, tt.want)
		}
	}
	if code, body, _ := restPredict(t, m.Gateway, "raises", [][]float64{{5.1, 3.5, 1.4, 0.2}}); code < 400 || code == 503 || !strings.Contains(body, "TypeError") {
		t.Fatalf("a model raising at predict time: %d %s, want MLServer's error with its reason", code, body)
	}
	for _, nm := range nativeModels {
		ts := readNativeTestset(t, nm.name)
		if code, body, got := restPredict(t, m.Gateway, nm.name, ts.Inputs[:2]); code != 200 || len(got) != 2 {
			t.Fatalf("%s after the broken models: %d %s", nm.name, code, body)
		}
	}

	// Evictions: three 40 MiB copies in a 100 MiB budget (with the demo models in it).
	for i := range 3 {
		time.Sleep(150 * time.Millisecond) // past --eviction-min-idle
		name := fmt.Sprintf("wine-%d", i)
		if code, body, got := restPredict(t, m.Gateway, name, wine.Inputs); code != 200 {
			t.Fatalf("%s: %d %s", name, code, body)
		} else {
			samePredictions(t, name, wine, got)
		}
	}
	if got := mlWorker.metric(t, "mesh_worker_evictions_total"); got < 1 {
		t.Fatalf("%v evictions on MLServer with three 40 MiB models in 100 MiB", got)
	}
	idx, err := inference.NewGRPCInferenceServiceClient(dial(t, ml.GRPC)).RepositoryIndex(context.Background(), &inference.RepositoryIndexRequest{Ready: true})
	must(t, err)
	// The three demo models, the one that raises, and at most two of the copies: the evicted
	// one is unloaded from MLServer, not only forgotten by the worker.
	if len(idx.GetModels()) > 6 {
		t.Fatalf("MLServer holds %d models after evictions: %v", len(idx.GetModels()), idx.GetModels())
	}

	// MLServer killed: the worker reports its models gone; once it is back, they load again
	// on demand.
	rdb := redis.NewClient(&redis.Options{Addr: m.redis.Addr})
	defer rdb.Close()
	keys := residency.Keys{Prefix: m.prefix}
	ml.Kill()
	eventually(t, 10*time.Second, "the worker reports MLServer's models gone", func() bool {
		return rdb.HLen(context.Background(), keys.Replicas(mlWorker.ID)).Val() == 0
	})
	// Gone, the worker reads no format: a request for a model of MLServer's is refused at
	// once, with the reason, as when no MLServer worker runs at all.
	m.awaitGone(t, "sklearn")
	if code, body, _ := restPredict(t, m.Gateway, "wine-sklearn", wine.Inputs[:1]); code != 503 || !strings.Contains(body, "no live worker that reads format sklearn") {
		t.Fatalf("wine-sklearn with MLServer down: %d %s", code, body)
	}
	ml.start(t)
	eventually(t, 60*time.Second, "wine-sklearn answered again after MLServer came back", func() bool {
		code, _, got := restPredict(t, m.Gateway, "wine-sklearn", wine.Inputs)
		return code == 200 && len(got) == len(wine.Predictions)
	})
	_, _, got := restPredict(t, m.Gateway, "wine-sklearn", wine.Inputs)
	samePredictions(t, "wine-sklearn after MLServer's restart", wine, got)
}

// awaitGone waits until no live worker's record says it reads format.
func (m *mesh) awaitGone(t testing.TB, format string) {
	t.Helper()
	m.awaitFormat(t, format, false)
}

// awaitReads waits until some live worker's record says it reads format: a worker beside a
// model server reads its formats only once the server answers.
func (m *mesh) awaitReads(t testing.TB, format string) {
	t.Helper()
	m.awaitFormat(t, format, true)
}

func (m *mesh) awaitFormat(t testing.TB, format string, read bool) {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: m.redis.Addr})
	defer rdb.Close()
	reader := residency.NewReader(rdb, residency.Keys{Prefix: m.prefix}, quietLog())
	what := "a worker reads format " + format
	if !read {
		what = "no worker reads format " + format
	}
	eventually(t, 30*time.Second, what, func() bool {
		snap, err := reader.Read(context.Background())
		if err != nil {
			return false
		}
		reads := false
		for _, w := range snap.Workers {
			reads = reads || w.Caps.Reads(format)
		}
		return reads == read
	})
}
