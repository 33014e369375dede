//go:build e2e

package e2e

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/modelmesh/mesh/internal/proctest"
)

// freePortPair returns two consecutive loopback ports, free now and never handed out before:
// scripts/run.sh gives the second worker the first worker's ports plus one.
func freePortPair(t testing.TB) int {
	t.Helper()
	for {
		_, p, _ := net.SplitHostPort(freePort(t))
		port, _ := strconv.Atoi(p)
		next := fmt.Sprintf("127.0.0.1:%d", port+1)
		ln, err := net.Listen("tcp", next)
		if err != nil {
			continue
		}
		ln.Close()
		if _, taken := handedOut.LoadOrStore(next, true); !taken {
			return port
		}
	}
}

func addrPort(t testing.TB, addr string) string {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// readPid reads a pid file scripts/run.sh keeps for each process it supervises.
func readPid(t testing.TB, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return pid
}

// TestMakeRunRestartsADeadWorker: `make run`'s script, on ports of its own, serves a
// request to an ONNX model and to each MLServer demo model; a worker killed with SIGKILL is reported on the terminal and restarted, answers
// its health check again with its log appended, and the mesh serves again; Ctrl-C (SIGINT to
// the process group, as a terminal sends it) stops the script with status 0 and leaves no
// process behind.
func TestMakeRunRestartsADeadWorker(t *testing.T) {
	bin, _ := filepath.Abs(*binDir)
	if repoBin, _ := filepath.Abs("../bin"); bin != repoBin {
		t.Skipf("scripts/run.sh runs the binaries of ../bin, not of -bin %s", bin)
	}
	models(t)
	ortLibrary(t)
	state := filepath.Join(t.TempDir(), "run")
	gateway, admin, prom := freePort(t), freePort(t), freePort(t)
	workerPort, managementPort := freePortPair(t), freePortPair(t)
	env := []string{
		"MESH_RUN_DIR=" + state,
		"MESH_STORAGE=file",
		"MESH_GATEWAY_PORT=" + addrPort(t, gateway),
		"MESH_ENVOY_ADMIN_PORT=" + addrPort(t, admin),
		"MESH_REDIS_PORT=" + addrPort(t, freePort(t)),
		"MESH_XDS_PORT=" + addrPort(t, freePort(t)),
		"MESH_CONTROLPLANE_METRICS_PORT=" + addrPort(t, freePort(t)),
		"MESH_EXTPROC_PORT=" + addrPort(t, freePort(t)),
		"MESH_EXTPROC_METRICS_PORT=" + addrPort(t, freePort(t)),
		"MESH_PROMETHEUS_PORT=" + addrPort(t, prom),
		"MESH_WORKER_PORT=" + strconv.Itoa(workerPort),
		"MESH_WORKER_MANAGEMENT_PORT=" + strconv.Itoa(managementPort),
		"MESH_MLSERVER_WORKER_PORT=" + addrPort(t, freePort(t)),
		"MESH_MLSERVER_WORKER_MANAGEMENT_PORT=" + addrPort(t, freePort(t)),
		"MESH_MLSERVER_HTTP_PORT=" + addrPort(t, freePort(t)),
		"MESH_MLSERVER_GRPC_PORT=" + addrPort(t, freePort(t)),
		"MESH_MLSERVER_METRICS_PORT=" + addrPort(t, freePort(t)),
	}
	// env(1) execs the script with the variables: the process (and group) is the script's.
	run := proctest.Start(t, "run.sh", "/usr/bin/env", append(env, "../scripts/run.sh")...)
	run.Await(t, 2*time.Minute, proctest.HTTPOK("http://"+gateway+"/v2/health/ready"))
	if code, out := inferREST(t, gateway, "iris", irisSetosa, nil); code != 200 {
		t.Fatalf("iris through the local mesh: %d %v", code, out)
	}
	// One demo model of each of MLServer's formats, on the MLServer worker, once the script
	// says the mesh runs (MLServer answers then) and the worker found MLServer up.
	eventually(t, time.Minute, "the script reports the mesh running", func() bool { return strings.Contains(run.Logs(), "The mesh is running") })
	for _, nm := range nativeModels {
		ts := readNativeTestset(t, nm.name)
		var code int
		var body string
		var got []float64
		eventually(t, 10*time.Second, nm.name+" answered", func() bool {
			code, body, got = restPredict(t, gateway, nm.name, ts.Inputs)
			return code == 200
		})
		samePredictions(t, nm.name+" through the local mesh ("+body[:min(len(body), 40)]+")", ts, got)
	}

	pidFile := filepath.Join(state, "worker-1.pid")
	health := fmt.Sprintf("http://127.0.0.1:%d/healthz", managementPort)
	dead := readPid(t, pidFile)
	must(t, syscall.Kill(dead, syscall.SIGKILL))
	eventually(t, 20*time.Second, "the script reports the kill and the restart", func() bool {
		logs := run.Logs()
		return strings.Contains(logs, "worker-1 exited on signal KILL (status 137); restart 1 in 1s") &&
			strings.Contains(logs, "worker-1 restarted (restart 1)")
	})
	eventually(t, 30*time.Second, "the restarted worker-1 answers /healthz", func() bool {
		return readPid(t, pidFile) != dead && proctest.HTTPOK(health)()
	})
	log, err := os.ReadFile(filepath.Join(state, "worker-1.log"))
	must(t, err)
	first, marker, found := strings.Cut(string(log), "--- run.sh: worker-1 exited on signal KILL (status 137); restart 1 at ")
	if !found || strings.TrimSpace(first) == "" || strings.TrimSpace(marker) == "" {
		t.Fatalf("worker-1.log should hold the first run, the restart marker, then the second run:\n%s", log)
	}
	// The mesh serves again (worker-1's lease may still be running out: retry).
	eventually(t, 30*time.Second, "iris served after the restart", func() bool {
		code, _, err := postInfer(gateway, "iris", irisSetosa, nil)
		return err == nil && code == 200
	})

	must(t, syscall.Kill(-run.Cmd.Process.Pid, syscall.SIGINT))
	select {
	case <-run.Done():
	case <-time.After(60 * time.Second):
		t.Fatal("run.sh still running 60 s after Ctrl-C")
	}
	if err := run.Err(); err != nil {
		t.Fatalf("run.sh exited with %v after Ctrl-C", err)
	}
	if !strings.Contains(run.Logs(), "run.sh: stopping the mesh") || strings.Contains(run.Logs(), "restart 2") {
		t.Fatalf("Ctrl-C should stop the mesh without restarting anything:\n%s", run.Logs())
	}
	// Nothing of the process group is left (the supervisors, the mesh, Redis, Envoy,
	// Prometheus): signal 0 to the group finds no process.
	eventually(t, 5*time.Second, "every process of the script gone", func() bool {
		return errors.Is(syscall.Kill(-run.Cmd.Process.Pid, 0), syscall.ESRCH)
	})
	for _, addr := range []string{gateway, admin, prom, fmt.Sprintf("127.0.0.1:%d", managementPort)} {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Errorf("%s still taken after Ctrl-C: %v", addr, err)
			continue
		}
		ln.Close()
	}
}
