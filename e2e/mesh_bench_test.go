//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"fortio.org/fortio/fhttp"
	"fortio.org/fortio/stats"
	"github.com/redis/go-redis/v9"

	"github.com/modelmesh/mesh/controlplane/translate"
	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/internal/residency"
	"github.com/modelmesh/mesh/proto/meshv1"
)

// load runs fortio against url: open loop at qps (-1 = as fast as possible) for d, and
// returns p50 and p99 in seconds and the achieved rate.
func load(b *testing.B, url string, qps float64, d time.Duration) (p50, p99, rate float64) {
	b.Helper()
	return loadBody(b, url, irisSetosa, qps, d)
}

// loadBody is load with another request body.
func loadBody(b *testing.B, url, body string, qps float64, d time.Duration) (p50, p99, rate float64) {
	b.Helper()
	o := fhttp.HTTPRunnerOptions{}
	o.URL = url
	o.Payload = []byte(body)
	o.ContentType = "application/json"
	o.QPS = qps
	o.Duration = d
	o.NumThreads = 8
	o.Percentiles = []float64{50, 99}
	o.Out = io.Discard
	o.AbortOn = -1
	o.Init(url)
	res, err := fhttp.RunHTTPTest(&o)
	if err != nil {
		b.Fatal(err)
	}
	if res.RetCodes[200] != res.DurationHistogram.Count {
		b.Fatalf("%s: status counts %v of %d requests", url, res.RetCodes, res.DurationHistogram.Count)
	}
	p50, p99 = medianAndP99(res.DurationHistogram)
	return p50, p99, res.ActualQPS
}

// medianAndP99 are a fortio run's p50 and p99 latencies in seconds; the run must have asked
// for both percentiles.
func medianAndP99(h *stats.HistogramData) (p50, p99 float64) {
	for _, p := range h.Percentiles {
		switch p.Percentile {
		case 50:
			p50 = p.Value
		case 99:
			p99 = p.Value
		}
	}
	return p50, p99
}

// BenchmarkMeshHotPath compares iris inference through the mesh's gateway (wasm filter,
// routing on the model header, per-model cluster) with the same Envoy binary routing
// statically to the same worker, and with the worker called directly: open-loop latency
// at a fixed rate, then the highest rate each sustains.
func BenchmarkMeshHotPath(b *testing.B) {
	m := startMesh(b, meshOptions{})
	if code, out := inferREST(b, m.Gateway, "iris", irisSetosa, nil); code != 200 {
		b.Fatalf("warm iris: %d %v", code, out)
	}
	m.waitHot(b, "iris", "1")
	static, _ := filteredEnvoy(b, m.workers[0].DataAddr, "", "", "")
	targets := []struct{ name, addr string }{{"worker", m.workers[0].DataAddr}, {"static-envoy", static}, {"mesh", m.Gateway}}
	type row struct{ p50, p99, max float64 }
	rows := map[string]row{}
	for range b.N {
		for _, tg := range targets {
			url := "http://" + tg.addr + "/v2/models/iris/infer"
			p50, p99, _ := load(b, url, 500, 5*time.Second)
			_, _, max := load(b, url, -1, 5*time.Second)
			rows[tg.name] = row{p50, p99, max}
		}
	}
	base := rows["worker"]
	var sb strings.Builder
	fmt.Fprintf(&sb, "\nhot path, iris, fortio open loop at 500 req/s for 5 s (8 connections), then max rate for 5 s\n")
	fmt.Fprintf(&sb, "%-13s %9s %9s %9s %10s %10s %10s\n", "target", "p50", "p99", "max req/s", "p50 ratio", "p99 ratio", "max ratio")
	for _, tg := range targets {
		r := rows[tg.name]
		fmt.Fprintf(&sb, "%-13s %8.0fµs %8.0fµs %9.0f %9.2fx %9.2fx %9.2fx\n", tg.name, r.p50*1e6, r.p99*1e6, r.max,
			r.p50/base.p50, r.p99/base.p99, r.max/base.max)
	}
	fmt.Print(sb.String())
}

// BenchmarkMeshColdStart measures a cold request through the mesh against the worker's own
// load time for the same model: the difference is what the mesh adds to a cold start.
func BenchmarkMeshColdStart(b *testing.B) {
	m := startMesh(b, meshOptions{})
	w := m.workers[0]
	iris := &meshv1.ModelRef{Name: "digits", Version: "1"}
	uri := "file://" + filepath.Join(models(b), "digits", "1", "model.onnx")
	body := `{"inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","data":[` + strings.TrimSuffix(strings.Repeat("0,", 64), ",") + `]}]}`
	unload := func() {
		if _, err := w.Mgmt.Unload(context.Background(), &meshv1.UnloadRequest{Model: iris}); err != nil {
			b.Fatal(err)
		}
		eventually(b, 10*time.Second, "route gone", func() bool {
			return m.routedReplicas(b, "model|digits|1") == 0
		})
	}
	const rounds = 20
	var viaMesh, direct []time.Duration
	for range b.N {
		for range rounds {
			start := time.Now()
			if code, out := inferREST(b, m.Gateway, "digits", body, nil); code != 200 {
				b.Fatalf("cold digits: %d %v", code, out)
			}
			viaMesh = append(viaMesh, time.Since(start))
			m.waitHot(b, "digits", "1")
			unload()
			start = time.Now()
			if _, err := w.Mgmt.Load(context.Background(), &meshv1.LoadRequest{Model: iris, StorageUri: uri}); err != nil {
				b.Fatal(err)
			}
			direct = append(direct, time.Since(start))
			m.waitHot(b, "digits", "1")
			unload()
		}
	}
	// Medians as well as means: one slow round (a GC, the other processes on two cores) moves
	// a mean of a few milliseconds' difference more than the difference itself.
	added := make([]time.Duration, len(viaMesh))
	for i := range viaMesh {
		added[i] = viaMesh[i] - direct[i]
	}
	mean := func(ds []time.Duration) time.Duration {
		var sum time.Duration
		for _, d := range ds {
			sum += d
		}
		return sum / time.Duration(len(ds))
	}
	median := func(ds []time.Duration) time.Duration {
		ds = slices.Clone(ds)
		slices.Sort(ds)
		return ds[len(ds)/2]
	}
	fmt.Printf("\ncold start, digits (%d rounds): first answer through the mesh mean %v median %v; worker's own load mean %v median %v; mesh adds mean %v, median of the rounds' differences %v (%.2fx of the load's median)\n",
		len(viaMesh), mean(viaMesh), median(viaMesh), mean(direct), median(direct), mean(added), median(added),
		float64(median(direct)+median(added))/float64(median(direct)))
}

// BenchmarkMeshConcurrentCold sends 500 concurrent first requests for one cold model.
func BenchmarkMeshConcurrentCold(b *testing.B) {
	for range b.N {
		m := startMesh(b, meshOptions{})
		var ok atomic.Int64
		var wg sync.WaitGroup
		start := time.Now()
		for range 500 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if code, _ := rawPost(b, "http://"+m.Gateway+"/v2/models/iris/infer", irisSetosa); code == 200 {
					ok.Add(1)
				}
			}()
		}
		wg.Wait()
		fmt.Printf("\n500 concurrent cold requests: %d answered 200, %v loads triggered, all answered in %v\n",
			ok.Load(), m.loads(b), time.Since(start).Round(time.Millisecond))
	}
}

// BenchmarkMeshScale registers 10,000 models and makes 2,000 of them resident on 20 fake
// workers (records written to Redis; nothing listens at their addresses, which Envoy does
// not need for configuration), then measures the control plane's translation and push
// times, the time from a replica turning ready in Redis until Envoy routes to it, and the
// memory of Envoy, the control plane and Redis; then the same at 50,000 registered and
// 10,000 resident on 100 workers (state of the world only).
func BenchmarkMeshScale(b *testing.B) {
	for _, c := range []struct {
		name                 string
		delta                bool
		registered, resident int
	}{
		{"sotw", false, 10000, 2000}, {"delta", true, 10000, 2000}, {"sotw-50k", false, 50000, 10000},
	} {
		b.Run(c.name, func(b *testing.B) { meshScale(b, c.delta, c.registered, c.resident) })
	}
}

// scaleRegistry is a registry of n models m00000, m00001... with one version each.
func scaleRegistry(n int) string {
	var reg strings.Builder
	reg.WriteString("models:\n")
	for i := range n {
		fmt.Fprintf(&reg, "  - {name: m%05d, versions: [{version: \"1\", storageUri: \"file:///models/m%05d/1/model.onnx\"}]}\n", i, i)
	}
	return reg.String()
}

// fakeWorker is a worker that exists only as its records in Redis: nothing listens at its
// address, which Envoy does not need for its configuration. Change state under mu, then
// signal ch to have the records rewritten.
type fakeWorker struct {
	mu    sync.Mutex
	state residency.State
	ch    chan struct{}
}

// startFakeWorkers writes the records of n workers holding perWorker ready replicas each
// (m00000:1 onwards, in order) into m's Redis and keeps their leases alive until the
// benchmark ends.
func startFakeWorkers(b *testing.B, m *mesh, n, perWorker int) []*fakeWorker {
	b.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: m.redis.Addr})
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(func() { cancel(); rdb.Close() })
	keys := residency.Keys{Prefix: m.prefix}
	var fakes []*fakeWorker
	for w := range n {
		f := &fakeWorker{ch: make(chan struct{}, 1), state: residency.State{
			Worker:   residency.Worker{ID: fmt.Sprintf("fake-%02d", w), DataAddr: fmt.Sprintf("127.0.%d.%d:8000", 10+w/200, 1+w%200), Runtime: "onnxruntime", Capacity: placement.HostMemory(1 << 40)},
			Replicas: map[string]residency.Replica{}}}
		for i := w * perWorker; i < (w+1)*perWorker; i++ {
			f.state.Replicas[fmt.Sprintf("m%05d:1", i)] = residency.Replica{State: placement.StateReady}
		}
		rep := residency.NewReporter(rdb, keys, residency.ReporterConfig{Heartbeat: time.Second}, quietLog())
		go rep.Run(ctx, f.ch, func() residency.State { f.mu.Lock(); defer f.mu.Unlock(); return f.state })
		fakes = append(fakes, f)
	}
	return fakes
}

// routeReloads counts the gateway's applied route configurations.
const routeReloads = "http.gateway.rds." + translate.RouteConfigName + ".config_reload"

func meshScale(b *testing.B, delta bool, registered, resident int) {
	m := startMesh(b, meshOptions{Registry: scaleRegistry(registered), Delta: delta})
	before := m.envoyMemory(b)
	fakes := startFakeWorkers(b, m, resident/100, 100)
	eventuallyEvery(b, 5*time.Minute, 100*time.Millisecond, fmt.Sprintf("%d model clusters in Envoy", resident), func() bool {
		return m.envoyStat(b, "cluster_manager.active_clusters") >= int64(resident)+2
	})
	after := m.envoyMemory(b)

	// Each change is timed from the write of a ready replica until Envoy routes to it: the
	// cluster's replica in Envoy, and the routes that name it (the route configuration
	// reloaded once more: nothing else changes it here).
	var lat []time.Duration
	for i := range 20 {
		model := fmt.Sprintf("m%05d", resident+i) // registered, not resident
		f := fakes[i%len(fakes)]
		f.mu.Lock()
		next := residency.State{Worker: f.state.Worker, Replicas: map[string]residency.Replica{}}
		for k, v := range f.state.Replicas {
			next.Replicas[k] = v
		}
		next.Replicas[model+":1"] = residency.Replica{State: placement.StateReady}
		f.state = next
		f.mu.Unlock()
		reloads := m.envoyStat(b, routeReloads)
		start := time.Now()
		f.ch <- struct{}{}
		eventually(b, 30*time.Second, model+" routed", func() bool {
			return m.routedReplicas(b, "model|"+model+"|1") == 1 && m.envoyStat(b, routeReloads) > reloads
		})
		lat = append(lat, time.Since(start))
	}
	mean := func(name string) float64 {
		return sumMetric(b, m.CPMetrics, name+"_sum") / sumMetric(b, m.CPMetrics, name+"_count")
	}
	build := mean("mesh_controlplane_build_duration_seconds")
	fmt.Printf("\ncontrol plane means: push (its phases, acknowledgements included) %.0f ms, wait for an acknowledgement %.0f ms\n",
		mean("mesh_controlplane_push_duration_seconds")*1000, mean("mesh_controlplane_push_ack_seconds")*1000)
	slices.Sort(lat)
	rdb := redis.NewClient(&redis.Options{Addr: m.redis.Addr})
	defer rdb.Close()
	info, err := rdb.InfoMap(context.Background(), "memory").Result()
	must(b, err)
	redisMemory, err := strconv.ParseInt(info["Memory"]["used_memory"], 10, 64)
	must(b, err)
	fmt.Printf("\n%s xDS, %d registered, %d resident on %d workers: translation %.1f ms per build (mean), a replica ready until Envoy routes it p50 %v p99 %v (%d changes), Envoy heap %d MiB -> %d MiB, Envoy RSS %d MiB, control plane RSS %d MiB, Redis %d MiB\n",
		map[bool]string{false: "state-of-the-world", true: "delta"}[delta], registered, resident, len(fakes), build*1000,
		lat[len(lat)/2].Round(time.Millisecond), lat[len(lat)-1].Round(time.Millisecond), len(lat), before>>20, after>>20,
		rss(b, m.envoy.Cmd.Process.Pid)>>20, rss(b, m.cp.Cmd.Process.Pid)>>20, redisMemory>>20)
}
