//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelmesh/mesh/internal/proctest"
)

// TestMeshZipfWorkloadWithEvictions sends a skewed workload over more models than fit in the
// workers' budgets: evictions happen, and every request is answered, correctly.
func TestMeshZipfWorkloadWithEvictions(t *testing.T) {
	var reg strings.Builder
	reg.WriteString("models:\n")
	const models = 6
	for i := range models {
		fmt.Fprintf(&reg, "  - name: iris-%d\n    versions: [{version: \"1\", storageUri: \"file://${MODELS}/iris/1/model.onnx\", memoryBytes: 104857600}]\n", i)
	}
	// Two workers of 250 MiB hold two 100 MiB models each: four of six fit.
	m := startMesh(t, meshOptions{Registry: reg.String(), Capacities: []string{"250MiB", "250MiB"}})
	zipf := rand.NewZipf(rand.New(rand.NewPCG(1, 2)), 1.2, 1, models-1)
	var picks []int
	for range 400 {
		picks = append(picks, int(zipf.Uint64()))
	}
	var failed atomic.Int64
	var firstErr atomic.Value
	work := make(chan int)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				code, out := inferREST(t, m.Gateway, fmt.Sprintf("iris-%d", i), irisSetosa, nil)
				if code != 200 || label(t, out) != 0 {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("iris-%d: %d %v", i, code, out))
				}
			}
		}()
	}
	for _, p := range picks {
		work <- p
	}
	close(work)
	wg.Wait()
	if n := failed.Load(); n != 0 {
		t.Fatalf("%d of %d requests failed; first: %v", n, len(picks), firstErr.Load())
	}
	var evictions float64
	for _, w := range m.workers {
		evictions += w.metric(t, "mesh_worker_evictions_total")
	}
	if evictions == 0 {
		t.Fatal("no evictions: the workload did not exceed the budgets")
	}
	t.Logf("%d requests, %v evictions, 0 failures", len(picks), evictions)
}

// onlyLoader is the worker that made the mesh's one load so far.
func (m *mesh) onlyLoader(t testing.TB) *worker {
	t.Helper()
	for _, w := range m.workers {
		if w.metric(t, `mesh_worker_loads_total{result="ok"}`) == 1 {
			return w
		}
	}
	t.Fatal("no worker loaded a model")
	return nil
}

// irisOnOneOfTwo starts a mesh of two 1 GiB workers, has iris loaded and hot on one of them
// and returns that one.
func irisOnOneOfTwo(t *testing.T, opts meshOptions) (*mesh, *worker) {
	t.Helper()
	opts.Capacities = []string{"1GiB", "1GiB"}
	m := startMesh(t, opts)
	if code, out := inferREST(t, m.Gateway, "iris", irisSetosa, nil); code != 200 {
		t.Fatalf("cold iris: %d %v", code, out)
	}
	m.waitHot(t, "iris", "1")
	return m, m.onlyLoader(t)
}

// TestMeshWorkerKilled: under steady open-loop load, SIGKILL of the worker holding a model
// loses only the requests in flight on it. Every request sent after the kill is answered,
// rightly: Envoy ejects the dead replica at its first refused connection and sends the
// request on to the fallback listener, ext_proc finds the worker's management port
// refusing, ends its lease and loads the model on the other worker. Nothing waits for the
// lease to run out (1.5 s here).
func TestMeshWorkerKilled(t *testing.T) {
	m, holder := irisOnOneOfTwo(t, meshOptions{})
	load := steadyLoad(m.Gateway, "iris", irisSetosa, 200)
	eventually(t, 10*time.Second, "traffic on the hot path first", func() bool { return load.sent() >= 200 })
	killed := time.Now()
	holder.Kill()
	eventually(t, 10*time.Second, "iris ready on the other worker", func() bool { return m.ready(t, "iris", "1") })
	load.await(t, 100) // steady traffic on the new replica too
	r := load.stop(killed)
	t.Logf("%d requests: %d before the kill, %d after; %d of those in flight at the kill failed; after it: %d failed, first answered %s after the kill, slowest %s",
		r.total, r.before, r.after, r.failedInFlight, r.failedAfter, r.firstAfter, r.slowestAfter)
	if r.failedBefore != 0 || r.failedAfter != 0 {
		t.Fatalf("%d requests failed before the kill, %d of %d sent after the worker died; first: %s", r.failedBefore, r.failedAfter, r.after, r.firstFailure)
	}
	if r.after < 100 {
		t.Fatalf("only %d requests after the kill: the load did not go on", r.after)
	}
	if got := m.envoyStat(t, "http.fallback.downstream_rq_total"); got == 0 {
		t.Fatal("no request took the fallback listener: the dead replica was not ejected")
	}
}

// TestMeshWorkerHung: under steady load, the worker holding a model is paused (SIGSTOP): it
// keeps its sockets and answers nothing. Every request is answered, those on it too: a try
// that takes longer than --hot-try-timeout (5 s here) is retried, the replica is ejected,
// the fallback listener takes the request to ext_proc, whose Load on the hung worker gets
// no /healthz answer (probed after 250 ms, for 1 s), and the model is loaded on the other
// worker.
func TestMeshWorkerHung(t *testing.T) {
	m, holder := irisOnOneOfTwo(t, meshOptions{ControlPlaneArgs: []string{"--hot-try-timeout", "5s"}})
	load := steadyLoad(m.Gateway, "iris", irisSetosa, 100)
	eventually(t, 10*time.Second, "traffic on the hot path first", func() bool { return load.sent() >= 100 })
	paused := time.Now()
	holder.Pause()
	defer holder.Resume()
	eventually(t, 15*time.Second, "iris ready on the other worker", func() bool { return m.ready(t, "iris", "1") })
	load.await(t, 50)
	r := load.stop(paused)
	t.Logf("%d requests: %d before the pause, %d after; failed: %d in flight, %d after; first answered %s after the pause, slowest %s",
		r.total, r.before, r.after, r.failedInFlight, r.failedAfter, r.firstAfter, r.slowestAfter)
	// None may fail, in flight on the hung worker or not: a request whose try times out
	// there retries on the cold path, in its model's cluster even after the worker's lease ran
	// out and its last replica went (the control plane keeps that cluster, with the fallback
	// alone, for the route timeout).
	retries, overflow := m.envoyStat(t, "cluster.model|iris|1.upstream_rq_retry"), m.envoyStat(t, "cluster.model|iris|1.upstream_rq_retry_overflow")
	t.Logf("model cluster: %d retries, %d refused by the retry budget", retries, overflow)
	if lost := r.failedBefore + r.failedInFlight + r.failedAfter; lost > 0 {
		t.Fatalf("%d of %d requests failed while a worker hung; first: %s", lost, r.total, r.firstFailure)
	}
	if overflow > 0 {
		t.Errorf("%d retries were refused: the tries that timed out together need a retry each", overflow)
	}
	if r.slowestAfter >= 60*time.Second {
		t.Fatalf("a request took %s, the route's whole timeout", r.slowestAfter)
	}
}

// TestMeshWorkerStoppedLosesNoRequest: a worker stopped gracefully (SIGTERM, as Kubernetes
// does) keeps serving until the mesh routes its models elsewhere; clients sending all along
// see not one failure.
func TestMeshWorkerStoppedLosesNoRequest(t *testing.T) {
	// The default drain grace (the harness sets 0 for speed elsewhere): Envoy's worker threads
	// apply an acknowledged configuration a moment after its main thread.
	m := startMesh(t, meshOptions{Capacities: []string{"1GiB", "1GiB"}, WorkerArgs: []string{"--drain-grace", "1s"}})
	if code, out := inferREST(t, m.Gateway, "iris", irisSetosa, nil); code != 200 {
		t.Fatalf("cold iris: %d %v", code, out)
	}
	m.waitHot(t, "iris", "1")
	holder := m.onlyLoader(t)
	var sent, failed atomic.Int64
	var first atomic.Value
	ctx, stopClients := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for ctx.Err() == nil {
				code, out, err := postInfer(m.Gateway, "iris", irisSetosa, nil)
				sent.Add(1)
				if code != 200 || err != nil {
					failed.Add(1)
					first.CompareAndSwap(nil, fmt.Sprintf("%d %v %v", code, out, err))
				}
			}
		})
	}
	eventually(t, 10*time.Second, "traffic on the hot path first", func() bool { return sent.Load() >= 200 })
	holder.Stop(t)
	// iris is served again from the other worker, loaded through the cold path.
	eventually(t, 15*time.Second, "iris loaded on the other worker", func() bool {
		return m.ready(t, "iris", "1")
	})
	// And keeps serving: 200 more answers after the move.
	more := sent.Load() + 200
	eventually(t, 15*time.Second, "200 more requests answered", func() bool { return sent.Load() >= more })
	stopClients()
	wg.Wait()
	if failed.Load() != 0 {
		t.Fatalf("%d of %d requests failed while a worker stopped; first: %v", failed.Load(), sent.Load(), first.Load())
	}
	if !strings.Contains(holder.Logs(), "the mesh no longer routes here") {
		t.Fatal("the worker closed without waiting for the mesh to stop routing to it")
	}
	t.Logf("%d requests while a worker stopped, 0 failed", sent.Load())
}

// TestMeshExtProcStopped: with ext_proc killed under steady load, resident models are still
// served, not one request lost, and cold ones get 503 at once.
func TestMeshExtProcStopped(t *testing.T) {
	m := startMesh(t, meshOptions{})
	if code, out := inferREST(t, m.Gateway, "iris", irisSetosa, nil); code != 200 {
		t.Fatalf("cold iris: %d %v", code, out)
	}
	m.waitHot(t, "iris", "1")
	load := steadyLoad(m.Gateway, "iris", irisSetosa, 200)
	eventually(t, 10*time.Second, "hot traffic first", func() bool { return load.sent() >= 100 })
	killed := time.Now()
	m.extproc.Kill()
	load.await(t, 150)
	r := load.stop(killed)
	t.Logf("%d requests, %d after ext_proc's SIGKILL, %d failed", r.total, r.after, r.failedBefore+r.failedInFlight+r.failedAfter)
	if r.failedBefore+r.failedInFlight+r.failedAfter != 0 || r.after < 100 {
		t.Fatalf("hot iris across ext_proc's death: %d of %d requests failed (%d after it); first: %s", r.failedBefore+r.failedInFlight+r.failedAfter, r.total, r.after, r.firstFailure)
	}
	start := time.Now()
	code, _ := rawPost(t, "http://"+m.Gateway+"/v2/models/digits/infer", `{"inputs":[]}`)
	if code != 503 {
		t.Fatalf("cold digits without ext_proc: %d, want 503", code)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("cold request without ext_proc took %v to fail", took)
	}
}

// TestMeshControlPlaneRestart: requests flow without a single failure while the control
// plane is killed and started again.
func TestMeshControlPlaneRestart(t *testing.T) {
	m := startMesh(t, meshOptions{})
	if code, out := inferREST(t, m.Gateway, "iris", irisSetosa, nil); code != 200 {
		t.Fatalf("cold iris: %d %v", code, out)
	}
	m.waitHot(t, "iris", "1")
	load := steadyLoad(m.Gateway, "iris", irisSetosa, 200)
	eventually(t, 10*time.Second, "hot traffic first", func() bool { return load.sent() >= 100 })
	killed := time.Now()
	m.cp.Kill()
	load.await(t, 100) // half a second of load with no control plane
	m.cp = startProcess(t, "control plane (restarted)", m.cp.Cmd.Path, m.cpArgs, proctest.HTTPOK("http://"+m.CPMetrics+"/healthz"))
	eventually(t, 10*time.Second, "Envoy reconnected to the control plane", func() bool {
		return m.envoyStat(t, "control_plane.connected_state") == 1
	})
	back := time.Since(killed)
	load.await(t, 100)
	r := load.stop(killed)
	t.Logf("%d requests: %d after the kill, %d failed; the gateway reconnected to the restarted control plane %v after the kill",
		r.total, r.after, r.failedBefore+r.failedInFlight+r.failedAfter, back.Round(time.Millisecond))
	if lost := r.failedBefore + r.failedInFlight + r.failedAfter; lost != 0 {
		t.Fatalf("%d of %d requests failed across the control plane restart; first: %s", lost, r.total, r.firstFailure)
	}
}

// TestMeshRedisWithPassword: with a Redis that requires a password, given to every part,
// the mesh loads a cold model and then serves it hot.
func TestMeshRedisWithPassword(t *testing.T) {
	m := startMesh(t, meshOptions{RedisPassword: "mesh-e2e-secret"})
	if code, out := inferREST(t, m.Gateway, "iris", irisSetosa, nil); code != 200 || label(t, out) != 0 {
		t.Fatalf("cold iris: %d %v", code, out)
	}
	m.waitHot(t, "iris", "1")
	decisions := m.decisions(t)
	if code, out := inferREST(t, m.Gateway, "iris", irisSetosa, nil); code != 200 || label(t, out) != 0 {
		t.Fatalf("hot iris: %d %v", code, out)
	}
	if m.decisions(t) != decisions {
		t.Fatal("the hot request went through ext_proc")
	}
}

// TestMeshRedisDown: with Redis gone, Envoy keeps the last configuration and resident models
// are still served; when Redis comes back empty, the workers write their state again and
// cold loads work.
func TestMeshRedisDown(t *testing.T) {
	m := startMesh(t, meshOptions{})
	if code, out := inferREST(t, m.Gateway, "iris", irisSetosa, nil); code != 200 {
		t.Fatalf("cold iris: %d %v", code, out)
	}
	m.waitHot(t, "iris", "1")
	load := steadyLoad(m.Gateway, "iris", irisSetosa, 200)
	eventually(t, 10*time.Second, "hot traffic first", func() bool { return load.sent() >= 100 })
	killed := time.Now()
	m.redis.Stop()
	load.await(t, 150)
	r := load.stop(killed)
	t.Logf("%d requests, %d after Redis's SIGKILL, %d failed", r.total, r.after, r.failedBefore+r.failedInFlight+r.failedAfter)
	if r.failedBefore+r.failedInFlight+r.failedAfter != 0 || r.after < 100 {
		t.Fatalf("hot iris across Redis's death: %d of %d requests failed (%d after it); first: %s", r.failedBefore+r.failedInFlight+r.failedAfter, r.total, r.after, r.firstFailure)
	}
	for range 20 {
		if code, out := inferREST(t, m.Gateway, "iris", irisSetosa, nil); code != 200 {
			t.Fatalf("hot iris with Redis down: %d %v", code, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	m.redis.Start()
	eventually(t, 15*time.Second, "a cold model loads once Redis is back", func() bool {
		code, _ := rawPost(t, "http://"+m.Gateway+"/v2/models/digits/infer",
			`{"inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","data":[`+strings.TrimSuffix(strings.Repeat("0,", 64), ",")+`]}]}`)
		return code == 200
	})
	if code, out := inferREST(t, m.Gateway, "iris", irisSetosa, nil); code != 200 {
		t.Fatalf("iris after Redis came back: %d %v", code, out)
	}
}
