//go:build e2e

package mlserver

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/internal/proctest"
	"github.com/modelmesh/mesh/proto/inference"
	"github.com/modelmesh/mesh/runtime-worker/agent"
	"github.com/modelmesh/mesh/runtime-worker/modelserver"
)

// server is a real MLServer started with scripts/mlserver.sh.
type server struct {
	http, grpc, metrics string
	repo                string
	args                []string // of scripts/mlserver.sh, to start it again
	proc                *proctest.Process
}

func startMLServer(t *testing.T) *server {
	t.Helper()
	if _, err := os.Stat("../../.venv-mlserver/bin/mlserver"); err != nil {
		t.Fatalf("MLServer's virtualenv is missing; run `make setup`: %v", err)
	}
	p := proctest.FreePorts(t, 3)
	s := &server{http: "127.0.0.1:" + p[0], grpc: "127.0.0.1:" + p[1], metrics: "127.0.0.1:" + p[2], repo: filepath.Join(t.TempDir(), "models")}
	s.args = []string{s.repo, p[0], p[1], p[2]}
	s.proc = proctest.Start(t, "mlserver", "../../scripts/mlserver.sh", s.args...)
	s.proc.Await(t, 60*time.Second, proctest.HTTPOK("http://"+s.http+"/v2/health/live"))
	return s
}

// testset is a demo model's test split and its framework's predictions (scripts/native_models.py).
type testset struct {
	Features    int         `json:"features"`
	Inputs      [][]float64 `json:"inputs"`
	Predictions []float64   `json:"predictions"`
	Datatype    string      `json:"datatype"`
}

func demo(t *testing.T, name string) testset {
	t.Helper()
	body, err := os.ReadFile(filepath.Join("../../testdata/models", name, "testset.json"))
	must(t, err)
	var ts testset
	must(t, json.Unmarshal(body, &ts))
	return ts
}

// infer posts rows to model over MLServer's REST port and returns the status, the body and
// the "predict" output's data.
func (s *server) infer(t *testing.T, model string, rows [][]float64) (int, string, []float64) {
	t.Helper()
	var flat []float64
	for _, r := range rows {
		flat = append(flat, r...)
	}
	req, _ := json.Marshal(map[string]any{"inputs": []map[string]any{{"name": "input-0", "datatype": "FP64", "shape": []int{len(rows), len(rows[0])}, "data": flat}}})
	resp, err := http.Post("http://"+s.http+"/v2/models/"+model+"/versions/1/infer", "application/json", strings.NewReader(string(req)))
	must(t, err)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var out struct {
		Outputs []struct {
			Name string    `json:"name"`
			Data []float64 `json:"data"`
		} `json:"outputs"`
	}
	json.Unmarshal(body, &out)
	if len(out.Outputs) == 1 {
		return resp.StatusCode, string(body), out.Outputs[0].Data
	}
	return resp.StatusCode, string(body), nil
}

func TestBackendAgainstRealMLServer(t *testing.T) {
	s := startMLServer(t)
	b, err := New(Config{Config: modelserver.Config{Repository: s.repo, GRPCAddr: s.grpc}, MetricsURL: "http://" + s.metrics + "/metrics"},
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	must(t, err)
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// The watch reconciles and prepares MLServer at its first answer, then reports uses.
	var mu sync.Mutex
	touched := map[placement.ModelVersion]int{}
	lost := make(chan struct{}, 1)
	wctx, stop := context.WithCancel(ctx)
	watched := make(chan error, 1)
	go func() {
		watched <- b.Watch(wctx, 100*time.Millisecond, func(m placement.ModelVersion, _ time.Time) {
			mu.Lock()
			touched[m]++
			mu.Unlock()
		}, func() { lost <- struct{}{} }, func() {})
	}()
	defer func() { stop(); <-watched }()
	// Prepared: each runtime imported once, its probe directory gone.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		entries, _ := os.ReadDir(s.repo)
		if len(entries) == 1 && entries[0].Name() == "settings.json" && strings.Contains(s.proc.Logs(), "_import-xgboost") && strings.Contains(s.proc.Logs(), "_import-sklearn") &&
			strings.Contains(s.proc.Logs(), "_import-lightgbm") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("MLServer not prepared: repository %v", entries)
		}
	}

	if caps := b.Capabilities(); !caps.OneVersion || !slices.Equal(caps.Formats, []string{"lightgbm", "sklearn", "xgboost"}) {
		t.Fatalf("capabilities of an MLServer that answers: %+v", caps)
	}

	models := []struct{ name, format, file string }{
		{"wine-sklearn", "sklearn", "model.joblib"},
		{"diabetes-xgboost", "xgboost", "model.json"},
		{"breast-cancer-lightgbm", "lightgbm", "model.txt"},
	}
	// The same XGBoost booster saved as UBJSON, under a name that does not say so (as the
	// worker's disk tier keeps a one-file model): installed as model.ubj, it answers alike.
	ubj := filepath.Join(t.TempDir(), "model.onnx")
	must(t, os.WriteFile(ubj, mustRead(t, "../../testdata/models/diabetes-xgboost/1/model.ubj"), 0o644))
	if _, err := b.Load(ctx, placement.ModelVersion{Name: "diabetes-ubj", Version: "1"}, agent.Files{Path: ubj, Format: "xgboost", GPU: -1}); err != nil {
		t.Fatalf("an XGBoost booster in UBJSON: %v", err)
	}
	dia := demo(t, "diabetes-xgboost")
	if code, body, got := s.infer(t, "diabetes-ubj", dia.Inputs); code != 200 || len(got) != len(dia.Predictions) || math.Abs(got[0]-dia.Predictions[0]) > 1e-4 {
		t.Fatalf("diabetes-ubj: %d %s", code, body)
	}
	must(t, b.Unload(ctx, placement.ModelVersion{Name: "diabetes-ubj", Version: "1"}))
	for _, m := range models {
		mv := placement.ModelVersion{Name: m.name, Version: "1"}
		path := filepath.Join("../../testdata/models", m.name, "1", m.file)
		fi, err := os.Stat(path)
		must(t, err)
		start := time.Now()
		loaded, err := b.Load(ctx, mv, agent.Files{Path: path, Format: m.format, GPU: -1})
		must(t, err)
		// Measured as its processes' growth: the frameworks were imported before, so a model
		// of tens of KiB is not charged the hundreds of MiB XGBoost's import takes.
		t.Logf("%s: loaded in %v, %d bytes of file, %s measured", m.name, time.Since(start).Round(time.Millisecond), fi.Size(), loaded.Memory)
		if loaded.Memory.Host <= 0 || loaded.Memory.Host > 64<<20 || loaded.Memory.GPUTotal() != 0 {
			t.Fatalf("%s: measured %s", m.name, loaded.Memory)
		}
		ts := demo(t, m.name)
		code, body, got := s.infer(t, m.name, ts.Inputs)
		if code != 200 || len(got) != len(ts.Predictions) {
			t.Fatalf("%s: %d %s", m.name, code, body)
		}
		for i := range got {
			if math.Abs(got[i]-ts.Predictions[i]) > 1e-6*math.Max(1, math.Abs(ts.Predictions[i])) {
				t.Fatalf("%s row %d: %v, the framework predicted %v", m.name, i, got[i], ts.Predictions[i])
			}
		}
	}
	// MLServer's request counters say the models were used.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		mu.Lock()
		n := len(touched)
		mu.Unlock()
		if n == len(models) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("touched %v, want each of the %d models used", touched, len(models))
		}
	}

	// Broken models fail with MLServer's reason and leave the repository and the rest alone.
	dir := t.TempDir()
	corrupt := filepath.Join(dir, "model.joblib")
	must(t, os.WriteFile(corrupt, []byte("this is not a pickle\x00\x01\x02"), 0o644))
	broken := []struct {
		name, format, path, want string
	}{
		{"corrupt", "sklearn", corrupt, "refused corrupt:1: builtins."}, // the Python exception MLServer reports
		{"wrong-format", "lightgbm", "../../testdata/models/diabetes-xgboost/1/model.json", "Unknown model format"},
		{"no-format", "", corrupt, "needs the model's format"},
		{"onnx-file", "onnx", "../../testdata/models/iris/1/model.onnx", "not \"onnx\""},
	}
	for _, tt := range broken {
		_, err := b.Load(ctx, placement.ModelVersion{Name: tt.name, Version: "1"}, agent.Files{Path: tt.path, Format: tt.format, GPU: -1})
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Fatalf("%s: error %v, want it to contain %q", tt.name, err, tt.want)
		}
		t.Logf("%s: %v", tt.name, err)
		if _, err := os.Stat(filepath.Join(s.repo, tt.name)); !os.IsNotExist(err) {
			t.Fatalf("%s: failed model left in the repository", tt.name)
		}
	}
	// A model that raises at predict time loads, and answers each request with its error.
	raises := placement.ModelVersion{Name: "raises-sklearn", Version: "1"}
	_, err = b.Load(ctx, raises, agent.Files{Path: "../../testdata/models/raises-sklearn/1", Format: "sklearn", GPU: -1})
	must(t, err)
	if code, body, _ := s.infer(t, "raises-sklearn", [][]float64{{1, 2, 3, 4}}); code < 400 || !strings.Contains(body, "TypeError") {
		t.Fatalf("a model raising at predict time: %d %s", code, body)
	}
	ts := demo(t, "wine-sklearn")
	if code, body, _ := s.infer(t, "wine-sklearn", ts.Inputs[:1]); code != 200 {
		t.Fatalf("wine-sklearn after the broken models: %d %s", code, body)
	}
	if _, err := b.Load(ctx, placement.ModelVersion{Name: "wine-sklearn", Version: "2"}, agent.Files{Path: "../../testdata/models/wine-sklearn/1", Format: "sklearn", GPU: -1}); err == nil {
		t.Fatal("a second version of a held model loaded")
	}

	// A model loaded behind the worker's back is an orphan: reconciliation unloads it.
	orphan := filepath.Join(s.repo, "orphan")
	must(t, (&Server{}).Install(placement.ModelVersion{Name: "orphan", Version: "1"}, agent.Files{Path: corrupt, Format: "sklearn"}, orphan))
	must(t, os.WriteFile(filepath.Join(orphan, "model.joblib"), mustRead(t, "../../testdata/models/wine-sklearn/1/model.joblib"), 0o644))
	_, err = b.Client().RepositoryModelLoad(ctx, &inference.RepositoryModelLoadRequest{ModelName: "orphan"})
	must(t, err)
	// A stray settings file whose name is no model id: unloaded, but no path is made of it.
	outside := filepath.Join(filepath.Dir(s.repo), "outside")
	must(t, os.MkdirAll(outside, 0o755))
	must(t, os.MkdirAll(filepath.Join(s.repo, "stray"), 0o755))
	must(t, os.WriteFile(filepath.Join(s.repo, "stray", "model-settings.json"),
		[]byte(`{"name": "../outside", "implementation": "mlserver_sklearn.SKLearnModel", "parameters": {"uri": "./absent"}}`), 0o644))
	got, err := b.Reconcile(ctx)
	must(t, err)
	if !slices.Equal(got, []string{"../outside", "orphan"}) && !slices.Equal(got, []string{"orphan", "../outside"}) {
		t.Fatalf("reconcile unloaded %v, want orphan and the stray name", got)
	}
	if _, err := os.Stat(outside); err != nil {
		t.Fatalf("reconcile removed a directory outside the repository: %v", err)
	}
	must(t, os.RemoveAll(filepath.Join(s.repo, "stray")))

	must(t, b.Unload(ctx, raises))
	for _, m := range models {
		must(t, b.Unload(ctx, placement.ModelVersion{Name: m.name, Version: "1"}))
	}
	idx, err := b.Client().RepositoryIndex(ctx, &inference.RepositoryIndexRequest{Ready: true})
	must(t, err)
	if len(idx.GetModels()) != 0 {
		t.Fatalf("ready after unload: %v", idx.GetModels())
	}

	// MLServer killed: the watch reports its models gone.
	s.proc.Kill()
	select {
	case <-lost:
	case <-time.After(10 * time.Second):
		t.Fatal("MLServer killed, and the watch did not report it gone")
	}
	if b.Live(ctx) {
		t.Fatal("live after the kill")
	}
	// A server that is down reads no format: the worker's record offers it no loads.
	if caps := b.Capabilities(); len(caps.Formats) != 0 {
		t.Fatalf("capabilities of a killed MLServer: %+v", caps)
	}
}

// TestWatchSeesAFastRestart: MLServer killed and back before three polls failed comes back
// empty (it loads nothing at start); the watch sees that none of the worker's models is
// loaded there, forgets them and reconciles, instead of advertising models MLServer lost.
func TestWatchSeesAFastRestart(t *testing.T) {
	s := startMLServer(t)
	b, err := New(Config{Config: modelserver.Config{Repository: s.repo, GRPCAddr: s.grpc}}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	must(t, err)
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	lost, up := make(chan struct{}, 4), make(chan struct{}, 4)
	wctx, stop := context.WithCancel(ctx)
	watched := make(chan error, 1)
	// Polls 3 s apart: a restart of about 2 s fails one poll at most.
	go func() {
		watched <- b.Watch(wctx, 3*time.Second, func(placement.ModelVersion, time.Time) {}, func() { lost <- struct{}{} }, func() { up <- struct{}{} })
	}()
	defer func() { stop(); <-watched }()
	<-up
	wine := placement.ModelVersion{Name: "wine-sklearn", Version: "1"}
	_, err = b.Load(ctx, wine, agent.Files{Path: "../../testdata/models/wine-sklearn/1/model.joblib", Format: "sklearn", GPU: -1})
	must(t, err)
	s.proc.Kill()
	s.proc = proctest.Start(t, "mlserver", "../../scripts/mlserver.sh", s.args...)
	s.proc.Await(t, 60*time.Second, proctest.HTTPOK("http://"+s.http+"/v2/health/live"))
	select {
	case <-lost:
	case <-time.After(15 * time.Second):
		t.Fatal("MLServer restarted empty, and the watch did not report its models gone")
	}
	select {
	case <-up:
	case <-time.After(15 * time.Second):
		t.Fatal("MLServer answers again, and the watch did not reconcile it")
	}
	// The worker holds nothing there now: the model loads again.
	if _, err := b.Load(ctx, wine, agent.Files{Path: "../../testdata/models/wine-sklearn/1/model.joblib", Format: "sklearn", GPU: -1}); err != nil {
		t.Fatalf("load after the restart: %v", err)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	body, err := os.ReadFile(path)
	must(t, err)
	return body
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
