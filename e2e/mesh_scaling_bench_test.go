//go:build e2e

package e2e

import (
	"testing"
	"time"
)

// BenchmarkMeshReplicaScaling is the replica-scaling run of docs/benchmarks.md: four clients
// keep the slow model (tens of milliseconds of one core per request) busier than one
// replica serves (its workers run one request per replica at a time), and the scaler adds an
// extra replica on the second worker. Throughput and latency with one replica, measured
// before the scaler may act, and with two, once the second has served for two seconds, in
// one run.
func BenchmarkMeshReplicaScaling(b *testing.B) {
	for range b.N {
		opts := scalingOptions()
		// Time to measure one replica before the scaler may add the second.
		opts.ExtProcArgs = append(opts.ExtProcArgs, "--scale-up-after", "8s")
		m := startMesh(b, opts)
		want := slowExpected(b)
		check := func(out map[string]any) error { return slowAnswer(out, want) }
		if code, out, err := postInfer(m.Gateway, "slow", slowBody, nil); err != nil || code != 200 || check(out) != nil {
			b.Fatalf("first (cold) request: %d %v %v", code, out, err)
		}
		load := startClosedLoad(m.Gateway, "slow", slowBody, 4, check)
		start := time.Now()
		var scaled time.Time
		eventuallyEvery(b, 60*time.Second, 100*time.Millisecond, "a second replica under load", func() bool {
			if ready(m.replicasOf(b, "slow:1")) == 2 {
				scaled = time.Now()
				return true
			}
			return false
		})
		load.await(b, 400) // about six seconds of two replicas' answers
		one := load.window(start.Add(time.Second), start.Add(5*time.Second))
		two := load.window(scaled.Add(2*time.Second), time.Now())
		load.stop()
		if one.failed+two.failed > 0 {
			b.Fatalf("%d requests failed with one replica, %d with two", one.failed, two.failed)
		}
		b.Logf("one replica: %.1f req/s, p50 %v, p99 %v", one.rate, one.p50.Round(time.Millisecond), one.p99.Round(time.Millisecond))
		b.Logf("two replicas: %.1f req/s, p50 %v, p99 %v (scaled %v after the load began)", two.rate, two.p50.Round(time.Millisecond),
			two.p99.Round(time.Millisecond), scaled.Sub(start).Round(100*time.Millisecond))
		b.Logf("two / one: throughput %.2fx, p50 %.2fx, p99 %.2fx", two.rate/one.rate,
			float64(two.p50)/float64(one.p50), float64(two.p99)/float64(one.p99))
		b.ReportMetric(two.rate/one.rate, "throughput-x")
		b.ReportMetric(scaled.Sub(start).Seconds(), "s-to-scale")
	}
}
