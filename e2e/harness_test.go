//go:build e2e

// Package e2e tests the mesh over real processes: the built binaries, a real redis-server and
// the real ONNX Runtime, with real models. Run with `make test` (or `make e2e`).
package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

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

// process is a running binary whose stderr is kept for assertions and failure reports.
type process struct {
	name   string
	cmd    *exec.Cmd
	exited chan error
	logs   *logBuffer
}

// logBuffer keeps a process's log lines.
type logBuffer struct {
	mu    sync.Mutex
	lines []string
}

func (l *logBuffer) add(s string) { l.mu.Lock(); l.lines = append(l.lines, s); l.mu.Unlock() }

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// startProcess runs path with args, killed when the test ends (its log printed if the test
// failed), and waits until ready returns true.
func startProcess(t testing.TB, name, path string, args []string, ready func() bool) *process {
	t.Helper()
	p := &process{name: name, exited: make(chan error, 1), logs: &logBuffer{}}
	p.cmd = exec.Command(path, args...)
	// A process group of its own: kill ends its children too (Triton's model stubs), which
	// would otherwise hold its output open.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	p.cmd.Stdout = p.cmd.Stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s (build it with `make build`): %v", name, err)
	}
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			p.logs.add(sc.Text())
		}
	}()
	go func() { <-scanned; p.exited <- p.cmd.Wait() }()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("%s log:\n%s", name, p.logs)
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for !ready() {
		select {
		case err := <-p.exited:
			p.exited <- err
			t.Fatalf("%s exited at start: %v\n%s", name, err, p.logs)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready after 30s:\n%s", name, p.logs)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return p
}

// kill ends the process and its children at once (SIGKILL) and waits; safe to call twice.
func (p *process) kill() {
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	err := <-p.exited
	p.exited <- err
}

// stop sends SIGTERM and waits for a clean exit.
func (p *process) stop(t testing.TB) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.exited:
		p.exited <- err
		if err != nil {
			t.Fatalf("%s exited with %v after SIGTERM:\n%s", p.name, err, p.logs)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("%s still running 30s after SIGTERM", p.name)
	}
}

func httpOK(url string) func() bool {
	return func() bool {
		resp, err := http.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
}

// worker is a running mesh-worker process.
type worker struct {
	*process
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
	w.process = startProcess(t, "worker "+id, filepath.Join(*binDir, "mesh-worker"), args, httpOK("http://"+w.MgmtAddr+"/healthz"))
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
	deadline := time.Now().Add(within)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
