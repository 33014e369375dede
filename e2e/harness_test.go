//go:build e2e

// Package e2e tests the mesh over real processes: the built binaries, a real redis-server and
// the real ONNX Runtime, with real models. Run with `make test` (or `make e2e`).
package e2e

import (
	"context"
	"encoding/json"
	"flag"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/modelmesh/mesh/internal/proctest"
	"github.com/modelmesh/mesh/proto/inference"
	"github.com/modelmesh/mesh/proto/meshv1"
)

var (
	binDir    = flag.String("bin", "../bin", "directory of the built binaries")
	modelsDir = flag.String("models", "../testdata/models", "directory of the demo models (make models)")
)

func ortLibrary(t testing.TB) string {
	t.Helper()
	lib := os.Getenv("MESH_ORT_LIB")
	if lib == "" {
		found, _ := filepath.Glob("../.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.*")
		if len(found) == 0 {
			t.Fatal("libonnxruntime.so not found; run `make setup` or set MESH_ORT_LIB")
		}
		lib = found[0]
	}
	return lib
}

func models(t testing.TB) string {
	t.Helper()
	abs, err := filepath.Abs(*modelsDir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(abs, "iris", "1", "model.onnx")); err != nil {
		t.Fatalf("demo models missing; run `make models`: %v", err)
	}
	return abs
}

// handedOut remembers every port freePort gave in this test binary: the kernel may offer a
// port again once its probe listener is closed, before the process it is meant for binds it.
var handedOut sync.Map

// freePort returns a loopback address with a port free now and never returned before.
func freePort(t testing.TB) string {
	t.Helper()
	for {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		if _, taken := handedOut.LoadOrStore(addr, true); !taken {
			return addr
		}
	}
}

// startProcess runs path with args (proctest.Start) and waits up to 30 s until ready.
func startProcess(t testing.TB, name, path string, args []string, ready func() bool) *proctest.Process {
	t.Helper()
	p := proctest.Start(t, name, path, args...)
	p.Await(t, 30*time.Second, ready)
	return p
}

// worker is a running mesh-worker process.
type worker struct {
	*proctest.Process
	ID       string
	DataAddr string
	MgmtAddr string
	Mgmt     meshv1.WorkerServiceClient
	Infer    inference.GRPCInferenceServiceClient
}

// startWorker runs bin/mesh-worker with the given extra flags and waits until it serves.
func startWorker(t testing.TB, id string, extra ...string) *worker {
	t.Helper()
	w := &worker{ID: id, DataAddr: freePort(t), MgmtAddr: freePort(t)}
	args := append([]string{
		"--worker-id", id, "--listen", w.DataAddr, "--management-listen", w.MgmtAddr,
		"--model-roots", models(t), "--cache-dir", t.TempDir(), "--ort-library", ortLibrary(t),
		"--log-format", "json",
	}, extra...)
	w.Process = startProcess(t, "worker "+id, filepath.Join(*binDir, "mesh-worker"), args, proctest.HTTPOK("http://"+w.MgmtAddr+"/healthz"))
	w.Mgmt = meshv1.NewWorkerServiceClient(dial(t, w.MgmtAddr))
	w.Infer = inference.NewGRPCInferenceServiceClient(dial(t, w.DataAddr))
	return w
}

func dial(t testing.TB, addr string) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func (w *worker) load(t testing.TB, name string, declared int64) *meshv1.LoadResponse {
	t.Helper()
	resp, err := w.Mgmt.Load(context.Background(), &meshv1.LoadRequest{
		Model: &meshv1.ModelRef{Name: name, Version: "1"}, StorageUri: "file://" + filepath.Join(models(t), name, "1", "model.onnx"),
		MemoryBytes: declared})
	if err != nil {
		t.Fatalf("load %s: %v", name, err)
	}
	return resp
}

// metric reads one sample from the worker's /metrics, 0 when absent.
func (w *worker) metric(t testing.TB, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + w.MgmtAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err != nil {
				t.Fatalf("metric %s: %v", line, err)
			}
			return v
		}
	}
	return 0
}

// restJSON posts (or gets, when body is nil) and decodes the JSON answer.
func restJSON(t testing.TB, method, url string, body []byte) (int, map[string]any) {
	t.Helper()
	var r io.Reader
	if body != nil {
		r = strings.NewReader(string(body))
	}
	req, _ := http.NewRequest(method, url, r)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("%s %s answered %d with non-JSON %q", method, url, resp.StatusCode, raw)
	}
	return resp.StatusCode, out
}

type testset struct {
	Features        int         `json:"features"`
	Inputs          [][]float32 `json:"inputs"`
	Labels          []int64     `json:"labels"`
	SklearnAccuracy float64     `json:"sklearn_accuracy"`
}

func readTestset(t testing.TB, name string) testset {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(models(t), name, "testset.json"))
	if err != nil {
		t.Fatal(err)
	}
	var ts testset
	if err := json.Unmarshal(b, &ts); err != nil {
		t.Fatal(err)
	}
	return ts
}

func accuracy(got, want []int64) float64 {
	correct := 0
	for i := range want {
		if i < len(got) && got[i] == want[i] {
			correct++
		}
	}
	return float64(correct) / float64(len(want))
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func eventually(t testing.TB, within time.Duration, what string, ok func() bool) {
	t.Helper()
	eventuallyEvery(t, within, 20*time.Millisecond, what, ok)
}

// eventuallyEvery is eventually for a check that costs more (a Redis read, a list of
// objects): it is asked once per every.
func eventuallyEvery(t testing.TB, within, every time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, within)
		}
		time.Sleep(every)
	}
}
