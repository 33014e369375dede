//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// The Zipf churn workload of docs/benchmarks.md: more models than fit, sizes spread over a
// log scale, a skewed trace. The exponent is chosen so that the offline LRU and Belady
// figures of this seed are those the mesh was first measured against (0.66 and 0.82).
const (
	zipfSeed      = 1
	zipfModels    = 200
	zipfRequests  = 3000
	zipfExponent  = 1.02
	zipfClients   = 8
	zipfMinBytes  = 256 << 10
	zipfMaxBytes  = 8 << 20
	zipfWorkerCap = 48 << 20
	zipfWorkers   = 2
)

// zipfRequest is one request of the run as the client saw it.
type zipfRequest struct {
	model      int
	start, end time.Time
	failure    string // empty: answered 200
	wrong      bool   // answered 200 with a label other than iris setosa's
}

// workerLoad is one "model loaded" line of a worker's log.
type workerLoad struct {
	model string
	ready time.Time
	// total is fetch to ready, waits for a load slot and for room included; own is the load
	// itself (fetch and the runtime's load), room the wait for room, when the worker logs
	// them (-1 when not).
	total, own, room time.Duration
}

// zipfRun is what one run through the mesh measured.
type zipfRun struct {
	requests  []zipfRequest
	loads     []workerLoad
	loadsOK   float64 // mesh_worker_loads_total{result="ok"}, every worker
	evictions float64
	ahead     float64 // evictions made ahead of demand (mesh_worker_headroom_evictions_total)
	// drains and drainWait: drains that saw the gateway stop routing their model, and the
	// time that took (mesh_worker_drain_wait_seconds), every worker.
	drains, drainWait float64
	coldPath          float64 // requests ext_proc decided (mesh_extproc_decisions_total)
	wall              time.Duration
}

// BenchmarkMeshZipf sends a seeded Zipf trace over 200 models (each the iris model file with
// a declared size of its own, 0.25-8 MiB) through the gateway to two workers of 48 MiB: the
// models do not all fit, so the workers evict and reload all along. It reports the mesh's hit
// ratio (requests that needed no load: 1 - loads/requests), cold requests' latency against
// the loads' own, loads and evictions, failed and wrong answers (which must be none), and,
// on the same trace and the same total capacity (96 MiB), the offline hit ratios of LRU,
// Belady's furthest-next-use and the workers' own policy (placement.ChooseEvictions).
func BenchmarkMeshZipf(b *testing.B) {
	tr := newZipfTrace(zipfSeed, zipfModels, zipfRequests, zipfMinBytes, zipfMaxBytes, zipfExponent)
	const total = zipfWorkers * zipfWorkerCap
	lru, belady := tr.lruHits(total), tr.beladyHits(total)
	policy := tr.policyHits(total)
	for range b.N {
		r := runZipf(b, tr)
		r.report(b, tr, map[string]int{"LRU": lru, "Belady": belady, "workers' policy": policy})
	}
}

// runZipf starts a mesh, sends the trace through its gateway from zipfClients clients taking
// the requests in trace order, and gathers what the parts counted.
func runZipf(b *testing.B, tr zipfTrace) zipfRun {
	b.Helper()
	var reg strings.Builder
	reg.WriteString("models:\n")
	for i, size := range tr.sizes {
		fmt.Fprintf(&reg, "  - {name: %s, versions: [{version: \"1\", storageUri: \"file://${MODELS}/iris/1/model.onnx\", memoryBytes: %d}]}\n", zipfName(i), size)
	}
	caps := make([]string, zipfWorkers)
	for i := range caps {
		caps[i] = fmt.Sprint(zipfWorkerCap)
	}
	// The worker's default drain grace (the harness shortens it to 0 for speed elsewhere).
	m := startMesh(b, meshOptions{Registry: reg.String(), Capacities: caps, WorkerArgs: []string{"--drain-grace", "1s"}})

	out := make([]zipfRequest, len(tr.picks))
	next := make(chan int)
	var wg sync.WaitGroup
	start := time.Now()
	for range zipfClients {
		wg.Go(func() {
			for i := range next {
				q := zipfRequest{model: tr.picks[i], start: time.Now()}
				code, answer, err := postInfer(m.Gateway, zipfName(q.model), irisSetosa, nil)
				q.end = time.Now()
				switch {
				case err != nil:
					q.failure = err.Error()
				case code != 200:
					q.failure = fmt.Sprintf("%d %v", code, answer)
				case labelOf(answer) != 0:
					q.wrong = true
				}
				out[i] = q
			}
		})
	}
	for i := range tr.picks {
		next <- i
	}
	close(next)
	wg.Wait()
	r := zipfRun{requests: out, wall: time.Since(start)}
	time.Sleep(200 * time.Millisecond) // the last "model loaded" lines on their way to the logs
	for _, w := range m.workers {
		r.loads = append(r.loads, parseLoads(b, w.Logs())...)
		r.evictions += w.metric(b, "mesh_worker_evictions_total")
		r.ahead += w.metric(b, "mesh_worker_headroom_evictions_total")
		r.drains += w.metric(b, "mesh_worker_drain_wait_seconds_count")
		r.drainWait += w.metric(b, "mesh_worker_drain_wait_seconds_sum")
	}
	r.loadsOK = m.loads(b)
	r.coldPath = m.decisions(b)
	return r
}

func zipfName(i int) string { return fmt.Sprintf("z%03d", i) }

// parseLoads reads the "model loaded" lines of a worker's JSON log.
func parseLoads(b *testing.B, logs string) []workerLoad {
	b.Helper()
	var out []workerLoad
	for _, line := range strings.Split(logs, "\n") {
		if !strings.Contains(line, `"model loaded"`) {
			continue
		}
		var rec struct {
			Time     time.Time `json:"time"`
			Msg      string    `json:"msg"`
			Model    string    `json:"model"`
			Duration *int64    `json:"duration_ms"`
			Own      *int64    `json:"load_ms"`
			Room     *int64    `json:"room_wait_ms"`
		}
		if err := json.Unmarshal([]byte(line[strings.IndexByte(line, '{'):]), &rec); err != nil || rec.Msg != "model loaded" || rec.Duration == nil {
			continue
		}
		l := workerLoad{model: rec.Model, ready: rec.Time, total: time.Duration(*rec.Duration) * time.Millisecond, own: -1, room: -1}
		if rec.Own != nil {
			l.own = time.Duration(*rec.Own) * time.Millisecond
		}
		if rec.Room != nil {
			l.room = time.Duration(*rec.Room) * time.Millisecond
		}
		out = append(out, l)
	}
	return out
}

// cold lists the latency of the requests that waited for a load of their model: those
// outstanding when one of its loads finished (allowing the log's clock 1 ms). roomy is the
// part of them whose load did not wait for room.
func (r zipfRun) cold() (all, roomy []time.Duration) {
	loads := map[string][]workerLoad{}
	for _, l := range r.loads {
		loads[l.model] = append(loads[l.model], l)
	}
	for _, q := range r.requests {
		from := q.start.Add(-time.Millisecond)
		i := slices.IndexFunc(loads[zipfName(q.model)], func(l workerLoad) bool { return !l.ready.Before(from) && !l.ready.After(q.end) })
		if i < 0 {
			continue
		}
		all = append(all, q.end.Sub(q.start))
		if loads[zipfName(q.model)][i].room == 0 {
			roomy = append(roomy, q.end.Sub(q.start))
		}
	}
	return all, roomy
}

// percentile is the q-quantile (0 < q <= 1) of ds, nearest rank; 0 for none.
func percentile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[max(int(math.Ceil(q*float64(len(s))))-1, 0)]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond)) }

// report prints the run's figures against the offline hit counts and reports them as
// benchmark metrics; failed or wrong answers fail the benchmark.
func (r zipfRun) report(b *testing.B, tr zipfTrace, offline map[string]int) {
	b.Helper()
	n := len(r.requests)
	var failed, wrong int
	var first string
	all := make([]time.Duration, 0, n)
	for _, q := range r.requests {
		all = append(all, q.end.Sub(q.start))
		switch {
		case q.failure != "":
			failed++
			if first == "" {
				first = q.failure
			}
		case q.wrong:
			wrong++
		}
	}
	cold, roomy := r.cold()
	var own, total, waited []time.Duration
	for _, l := range r.loads {
		total = append(total, l.total)
		if l.own >= 0 {
			own = append(own, l.own)
		}
		if l.room > 0 {
			waited = append(waited, l.room)
		}
	}
	hit := 1 - r.loadsOK/float64(n)
	var sb strings.Builder
	fmt.Fprintf(&sb, "\nZipf churn: %d models (%.2f-%d MiB, log-uniform), %d requests (exponent %.2f, seed %d), %d clients, %d workers x %d MiB, in %v\n",
		len(tr.sizes), float64(zipfMinBytes)/(1<<20), zipfMaxBytes>>20, n, zipfExponent, zipfSeed, zipfClients, zipfWorkers, zipfWorkerCap>>20, r.wall.Round(time.Millisecond))
	fmt.Fprintf(&sb, "hit ratio: mesh %.3f (%.0f loads)", hit, r.loadsOK)
	for _, name := range []string{"LRU", "Belady", "workers' policy"} {
		if h, ok := offline[name]; ok {
			fmt.Fprintf(&sb, ", offline %s %.3f", name, float64(h)/float64(n))
		}
	}
	fmt.Fprintf(&sb, " (offline: one cache of %d MiB)\n", zipfWorkers*zipfWorkerCap>>20)
	fmt.Fprintf(&sb, "requests: %d failed, %d wrong answers; all p50 %s p99 %s; %.0f through ext_proc\n", failed, wrong, ms(percentile(all, .5)), ms(percentile(all, .99)), r.coldPath)
	fmt.Fprintf(&sb, "cold requests (waited for a load): %d, p50 %s p99 %s max %s\n", len(cold), ms(percentile(cold, .5)), ms(percentile(cold, .99)), ms(percentile(cold, 1)))
	fmt.Fprintf(&sb, "loads: %d logged; fetch to ready p50 %s p99 %s", len(r.loads), ms(percentile(total, .5)), ms(percentile(total, .99)))
	if len(own) > 0 {
		fmt.Fprintf(&sb, "; the load itself (fetch and runtime) p50 %s p99 %s; cold p99 / load p99 = %.2f",
			ms(percentile(own, .5)), ms(percentile(own, .99)), float64(percentile(cold, .99))/float64(max(percentile(own, .99), time.Millisecond)))
	}
	if len(waited) > 0 {
		fmt.Fprintf(&sb, "\nloads that waited for room (drains): %d, the wait p50 %s p99 %s; cold requests whose load did not wait: %d, p50 %s p99 %s",
			len(waited), ms(percentile(waited, .5)), ms(percentile(waited, .99)), len(roomy), ms(percentile(roomy, .5)), ms(percentile(roomy, .99)))
	}
	fmt.Fprintf(&sb, "\nevictions: %.0f, of which ahead of demand %.0f; a drain waited %s on average for the gateway to stop routing its model\n",
		r.evictions, r.ahead, ms(time.Duration(r.drainWait/max(r.drains, 1)*float64(time.Second))))
	fmt.Print(sb.String())
	b.ReportMetric(hit, "hit-ratio")
	b.ReportMetric(float64(percentile(cold, .99))/1e6, "cold-p99-ms")
	b.ReportMetric(float64(percentile(own, .99))/1e6, "load-p99-ms")
	b.ReportMetric(r.loadsOK, "loads")
	b.ReportMetric(r.evictions, "evictions")
	if failed+wrong > 0 {
		b.Errorf("%d requests failed and %d were answered wrongly; first failure: %s", failed, wrong, first)
	}
}
