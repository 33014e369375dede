//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/internal/residency"
)

// scalingRegistry registers the slow model (tens of milliseconds of one core per request)
// with up to two replicas.
const scalingRegistry = `models:
  - name: slow
    maxReplicas: 2
    versions: [{version: "1", storageUri: "file://${MODELS}/slow/1/model.onnx"}]
`

// scalingOptions is a mesh of two workers that run one request per replica at a time, so
// one replica of the slow model saturates at one core, with a scaler quick enough for a
// test: demand averaged over 2 s, a replica added after 2 s of asking, one removed after 3 s.
func scalingOptions() meshOptions {
	return meshOptions{Registry: scalingRegistry, Capacities: []string{"1GiB", "1GiB"},
		WorkerArgs:  []string{"--model-concurrency", "1", "--demand-window", "2s", "--heartbeat", "500ms"},
		ExtProcArgs: []string{"--scale-interval", "500ms", "--scale-up-after", "2s", "--scale-down-after", "3s"}}
}

const slowBody = `{"inputs":[{"name":"input","datatype":"FP32","shape":[1,64],"data":[` +
	`1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,` +
	`1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]}]}`

// slowExpected is NumPy's output of the slow model for slowBody, written beside it.
func slowExpected(t testing.TB) float64 {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(models(t), "slow", "expected.json"))
	if err != nil {
		t.Fatalf("slow model's expected output: %v; run `make models`", err)
	}
	var e struct{ Output float64 }
	must(t, json.Unmarshal(raw, &e))
	return e.Output
}

// slowAnswer checks an answer of the slow model against NumPy's, within float32 rounding.
func slowAnswer(out map[string]any, want float64) error {
	outputs, _ := out["outputs"].([]any)
	if len(outputs) == 1 {
		o, _ := outputs[0].(map[string]any)
		if data, _ := o["data"].([]any); len(data) == 1 {
			if v, ok := data[0].(float64); ok && math.Abs(v-want) <= 1e-3*math.Max(1, math.Abs(want)) {
				return nil
			}
		}
	}
	return fmt.Errorf("answer %v, want output %v", out, want)
}

// closedLoad keeps clients requests for model in flight through gateway, each client sending
// its next when its last is answered, and records every answer.
type closedLoad struct {
	stopped chan struct{}
	wg      sync.WaitGroup
	mu      sync.Mutex
	results []request
}

func startClosedLoad(gateway, model, body string, clients int, check func(map[string]any) error) *closedLoad {
	l := &closedLoad{stopped: make(chan struct{})}
	for range clients {
		l.wg.Go(func() {
			for {
				select {
				case <-l.stopped:
					return
				default:
				}
				r := checkedRequest(gateway, model, body, check)
				l.mu.Lock()
				l.results = append(l.results, r)
				l.mu.Unlock()
			}
		})
	}
	return l
}

// loadWindow is what a load's requests answered in a window of time came to.
type loadWindow struct {
	rate     float64 // answered per second
	p50, p99 time.Duration
	failed   int
}

// window sums up the requests answered between from and to.
func (l *closedLoad) window(from, to time.Time) loadWindow {
	l.mu.Lock()
	defer l.mu.Unlock()
	var w loadWindow
	var lat []time.Duration
	for _, r := range l.results {
		if !r.end.Before(from) && r.end.Before(to) {
			lat = append(lat, r.end.Sub(r.start))
			if !r.ok {
				w.failed++
			}
		}
	}
	w.rate = float64(len(lat)) / to.Sub(from).Seconds()
	if len(lat) > 0 {
		slices.Sort(lat)
		w.p50, w.p99 = lat[len(lat)/2], lat[min(len(lat)-1, len(lat)*99/100)]
	}
	return w
}

// await waits until n more requests have been answered.
func (l *closedLoad) await(t testing.TB, n int) {
	t.Helper()
	l.mu.Lock()
	want := len(l.results) + n
	l.mu.Unlock()
	eventually(t, 60*time.Second, fmt.Sprintf("%d more requests answered", n), func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		return len(l.results) >= want
	})
}

// stop ends the load and returns every request's result.
func (l *closedLoad) stop() []request {
	close(l.stopped)
	l.wg.Wait()
	return l.results
}

// replicasOf reads model:version's replicas from Redis: worker id to record, live workers
// only.
func (m *mesh) replicasOf(t testing.TB, mv string) map[string]residency.Replica {
	t.Helper()
	model, err := placement.ParseModelVersion(mv)
	must(t, err)
	rdb := redis.NewClient(&redis.Options{Addr: m.redis.Addr})
	defer rdb.Close()
	snap, err := residency.NewReader(rdb, residency.Keys{Prefix: m.prefix}, quietLog()).Read(context.Background())
	must(t, err)
	out := map[string]residency.Replica{}
	for id, reps := range snap.Replicas {
		if r, ok := reps[model]; ok {
			out[id] = r
		}
	}
	return out
}

// ready counts the replicas in state ready.
func ready(reps map[string]residency.Replica) int {
	n := 0
	for _, r := range reps {
		if r.State == placement.StateReady {
			n++
		}
	}
	return n
}

func describeReplicas(reps map[string]residency.Replica) string {
	var parts []string
	for id, r := range reps {
		parts = append(parts, fmt.Sprintf("%s:%s extra=%v in_flight=%.2f queued=%.2f rate=%.1f", id, r.State, r.Extra, r.Demand.InFlight, r.Demand.Queued, r.Demand.Rate))
	}
	return strings.Join(parts, "; ")
}

// TestMeshReplicasFollowDemand: four clients keep the slow model busier than one replica
// (one request at a time on its worker) can serve; the scaler adds an extra replica on the
// other worker, both serve, the count holds while the demand does, and once the load falls to
// a trickle the extra replica drains away. No request fails at any point.
func TestMeshReplicasFollowDemand(t *testing.T) {
	m := startMesh(t, scalingOptions())
	want := slowExpected(t)
	check := func(out map[string]any) error { return slowAnswer(out, want) }
	code, out, err := postInfer(m.Gateway, "slow", slowBody, nil)
	if err != nil || code != 200 || check(out) != nil {
		t.Fatalf("first (cold) request: %d %v %v", code, out, err)
	}
	if reps := m.replicasOf(t, "slow:1"); ready(reps) != 1 {
		t.Fatalf("after one request: %s, want one ready replica", describeReplicas(reps))
	}

	load := startClosedLoad(m.Gateway, "slow", slowBody, 4, check)
	start := time.Now()
	var scaled time.Time
	eventuallyEvery(t, 40*time.Second, 100*time.Millisecond, "a second replica for the slow model under load", func() bool {
		if ready(m.replicasOf(t, "slow:1")) == 2 {
			scaled = time.Now()
			return true
		}
		return false
	})
	reps := m.replicasOf(t, "slow:1")
	t.Logf("scaled up %v after the load began: %s", scaled.Sub(start).Round(100*time.Millisecond), describeReplicas(reps))
	extras := 0
	for _, r := range reps {
		if r.Extra {
			extras++
		}
	}
	if extras != 1 {
		t.Errorf("%d of the 2 replicas are extra, want 1: %s", extras, describeReplicas(reps))
	}
	// Both serve: the requests spread over the two workers.
	served := make([]float64, len(m.workers))
	for i, w := range m.workers {
		served[i] = w.metric(t, `mesh_worker_inference_requests_total{code="200",model="slow",protocol="rest"}`)
	}
	// Demand holds for longer than --scale-down-after: the count must hold too (hysteresis).
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(250 * time.Millisecond) {
		if n := len(m.replicasOf(t, "slow:1")); n != 2 {
			t.Fatalf("the replica count moved to %d under steady demand: %s", n, describeReplicas(m.replicasOf(t, "slow:1")))
		}
	}
	for i, w := range m.workers {
		if got := w.metric(t, `mesh_worker_inference_requests_total{code="200",model="slow",protocol="rest"}`); got <= served[i] {
			t.Errorf("worker %d served no request in 5 s with two replicas (%v then %v)", i+1, served[i], got)
		}
	}
	before := load.window(start, start.Add(min(scaled.Sub(start), 4*time.Second)))
	after := load.window(scaled.Add(time.Second), time.Now())
	t.Logf("throughput with one replica %.1f/s, with two %.1f/s (%.2fx)", before.rate, after.rate, after.rate/before.rate)

	// Demand falls to a trickle: the extra replica drains away, the trickle still answered.
	results := load.stop()
	trickle := steadyLoadChecked(m.Gateway, "slow", slowBody, 2, check)
	eventuallyEvery(t, 30*time.Second, 200*time.Millisecond, "back to one replica once demand fell", func() bool {
		return len(m.replicasOf(t, "slow:1")) == 1
	})
	trickle.await(t, 4)
	rep := trickle.stop(time.Now())
	reps = m.replicasOf(t, "slow:1")
	for id, r := range reps {
		if r.Extra || r.State != placement.StateReady {
			t.Errorf("the replica left on %s is %s, extra=%v: want the ordinary replica ready", id, r.State, r.Extra)
		}
	}
	failed := 0
	for _, r := range results {
		if !r.ok {
			failed++
			if failed == 1 {
				t.Errorf("first failed request under load: %s", r.failure)
			}
		}
	}
	if failed > 0 || rep.failedBefore+rep.failedInFlight+rep.failedAfter > 0 {
		t.Errorf("%d of %d requests under load failed, %d of %d of the trickle (first: %s)",
			failed, len(results), rep.failedBefore+rep.failedInFlight+rep.failedAfter, rep.total, rep.firstFailure)
	}
	if ups := sumMetric(t, m.ExtProcMetrics, `mesh_extproc_scale_total{direction="up",result="ok"}`); ups != 1 {
		t.Errorf("%v replicas added, want 1", ups)
	}
	if downs := sumMetric(t, m.ExtProcMetrics, `mesh_extproc_scale_total{direction="down",result="ok"}`); downs != 1 {
		t.Errorf("%v replicas drained, want 1", downs)
	}
}
