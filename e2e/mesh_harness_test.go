//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/modelmesh/mesh/internal/proctest"
	"github.com/modelmesh/mesh/internal/redistest"
	"github.com/modelmesh/mesh/proto/inference"
)

// mesh is a whole local mesh: Redis, workers, ext_proc, the control plane and Envoy.
type mesh struct {
	redis    *redistest.Server
	prefix   string
	registry string // path of the registry file
	workers  []*worker
	extproc  *proctest.Process
	cp       *proctest.Process
	envoy    *proctest.Process
	// Gateway is the Envoy listener, Admin its admin address, ExtProcMetrics and CPMetrics
	// the /metrics addresses of ext_proc and the control plane.
	Gateway        string
	Admin          string
	ExtProcMetrics string
	CPMetrics      string
	Infer          inference.GRPCInferenceServiceClient
	extprocArgs    []string
	cpArgs         []string
}

type meshOptions struct {
	// Registry YAML; ${MODELS} is replaced by the demo models' path. Default: the local demo.
	Registry string
	// Capacities of the workers, one worker each. Default: one worker of 1GiB.
	Capacities []string
	// Delta selects incremental xDS instead of state of the world.
	Delta bool
	// ExtProcArgs are extra ext_proc flags.
	ExtProcArgs []string
	// WorkerArgs are extra flags of every worker of Capacities (a later flag wins over an
	// earlier one).
	WorkerArgs []string
	// MoreWorkers are workers started after those of Capacities, each with flags of its own
	// (its --capacity and --runtime among them) instead of WorkerArgs: a mixed fleet.
	MoreWorkers [][]string
	// ControlPlaneArgs are extra control plane flags.
	ControlPlaneArgs []string
	// RedisPassword, when set, is required by Redis and given to every binary.
	RedisPassword string
}

func envoyPath(t testing.TB) string {
	t.Helper()
	p, err := filepath.Abs("../.venv/bin/envoy")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("envoy not found at %s; run `make setup`: %v", p, err)
	}
	return p
}

func wasmModule(t testing.TB) string {
	t.Helper()
	p := filepath.Join(*binDir, "modelid.wasm")
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("modelid.wasm not built; run `make build`: %v", err)
	}
	abs, _ := filepath.Abs(p)
	return abs
}

func render(t testing.TB, path string, vars map[string]string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for k, v := range vars {
		s = strings.ReplaceAll(s, "${"+k+"}", v)
	}
	return s
}

func startMesh(t testing.TB, opts meshOptions) *mesh {
	t.Helper()
	m := &mesh{prefix: "e2e"}
	if opts.RedisPassword != "" {
		m.redis = redistest.StartWith(t, "--requirepass", opts.RedisPassword)
		auth := []string{"--redis-password", opts.RedisPassword}
		opts.WorkerArgs = append(auth, opts.WorkerArgs...)
		opts.ExtProcArgs = append(auth, opts.ExtProcArgs...)
		opts.ControlPlaneArgs = append(auth, opts.ControlPlaneArgs...)
	} else {
		m.redis = redistest.Start(t)
	}
	reg := opts.Registry
	if reg == "" {
		reg = render(t, "../manifests/local/registry.yaml", nil)
	}
	reg = strings.ReplaceAll(reg, "${MODELS}", models(t))
	m.registry = filepath.Join(t.TempDir(), "registry.yaml")
	must(t, os.WriteFile(m.registry, []byte(reg), 0o644))

	caps := opts.Capacities
	if len(caps) == 0 {
		caps = []string{"1GiB"}
	}
	common := []string{"--redis-addr", m.redis.Addr, "--redis-prefix", m.prefix, "--heartbeat", "500ms", "--drain-grace", "0s", "--log-level", "info"}
	var fleet [][]string
	for _, c := range caps {
		fleet = append(fleet, append([]string{"--capacity", c}, opts.WorkerArgs...))
	}
	for i, own := range append(fleet, opts.MoreWorkers...) {
		m.workers = append(m.workers, startWorker(t, "w"+string(rune('1'+i)), append(slices.Clone(common), own...)...))
	}

	extprocAddr := freePort(t)
	m.ExtProcMetrics = freePort(t)
	m.extprocArgs = append([]string{"--listen", extprocAddr, "--metrics-listen", m.ExtProcMetrics, "--redis-addr", m.redis.Addr,
		"--redis-prefix", m.prefix, "--resync", "1s", "--log-format", "json"}, opts.ExtProcArgs...)
	m.extproc = startProcess(t, "ext_proc", filepath.Join(*binDir, "mesh-extproc"), m.extprocArgs, proctest.HTTPOK("http://"+m.ExtProcMetrics+"/metrics"))

	xdsAddr := freePort(t)
	m.CPMetrics = freePort(t)
	m.Gateway = freePort(t)
	_, gwPort, _ := net.SplitHostPort(m.Gateway)
	m.cpArgs = []string{"--xds-listen", xdsAddr, "--metrics-listen", m.CPMetrics, "--registry", m.registry,
		"--redis-addr", m.redis.Addr, "--redis-prefix", m.prefix, "--gateway-address", "127.0.0.1", "--gateway-port", gwPort,
		"--extproc-addr", extprocAddr, "--wasm-path", wasmModule(t), "--resync", "1s", "--batch", "20ms", "--log-format", "json", "--log-level", "debug"}
	m.cpArgs = append(m.cpArgs, opts.ControlPlaneArgs...)
	m.cp = startProcess(t, "control plane", filepath.Join(*binDir, "mesh-controlplane"), m.cpArgs, proctest.HTTPOK("http://"+m.CPMetrics+"/healthz"))

	m.Admin = freePort(t)
	_, adminPort, _ := net.SplitHostPort(m.Admin)
	xdsHost, xdsPort, _ := net.SplitHostPort(xdsAddr)
	api := "GRPC"
	if opts.Delta {
		api = "DELTA_GRPC"
	}
	boot := render(t, "../manifests/local/envoy-bootstrap.yaml", map[string]string{
		"ADMIN_PORT": adminPort, "XDS_HOST": xdsHost, "XDS_PORT": xdsPort, "XDS_API": api, "NODE_ID": "gateway-e2e"})
	bootPath := filepath.Join(t.TempDir(), "envoy.yaml")
	must(t, os.WriteFile(bootPath, []byte(boot), 0o644))
	m.envoy = startProcess(t, "envoy", envoyPath(t), []string{"-c", bootPath, "--concurrency", "2", "--disable-hot-restart",
		"--use-dynamic-base-id", "--log-level", "warn"}, proctest.HTTPOK("http://"+m.Admin+"/ready"))
	// Ready once the gateway listener is up and routes server-level calls to a worker.
	eventually(t, 30*time.Second, "gateway serves /v2/health/ready", proctest.HTTPOK("http://"+m.Gateway+"/v2/health/ready"))
	m.Infer = inference.NewGRPCInferenceServiceClient(dial(t, m.Gateway))
	return m
}

// counter reads one sample from a Prometheus endpoint, 0 when absent.
func counter(t testing.TB, metricsAddr, name string) float64 {
	t.Helper()
	w := &worker{MgmtAddr: metricsAddr}
	return w.metric(t, name)
}

// envoyStat reads one counter or gauge from Envoy's admin /stats.
func (m *mesh) envoyStat(t testing.TB, name string) int64 {
	t.Helper()
	code, body := get(t, "http://"+m.Admin+"/stats?filter=^"+strings.ReplaceAll(name, "|", "\\|")+"$")
	if code != 200 {
		t.Fatalf("admin stats: %d", code)
	}
	var v int64
	for _, line := range strings.Split(body, "\n") {
		if rest, ok := strings.CutPrefix(line, name+": "); ok {
			_, err := fmt.Sscan(rest, &v)
			must(t, err)
		}
	}
	return v
}

// get fetches url and returns the status and body.
func get(t testing.TB, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// rawPost posts body and returns the status and body, whatever they are.
func rawPost(t testing.TB, url, body string) (int, string) {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// envoyMemory is Envoy's allocated heap in bytes, from the admin /memory endpoint.
func (m *mesh) envoyMemory(t testing.TB) int64 {
	t.Helper()
	_, body := get(t, "http://"+m.Admin+"/memory")
	var mem struct {
		Allocated string `json:"allocated"`
	}
	must(t, json.Unmarshal([]byte(body), &mem))
	n, err := strconv.ParseInt(mem.Allocated, 10, 64)
	must(t, err)
	return n
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
