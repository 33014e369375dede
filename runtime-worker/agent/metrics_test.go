package agent

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/modelmesh/mesh/internal/placement"
)

func TestLRUAge(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_000_000, 0)
	ago := func(d time.Duration) time.Time { return now.Add(-d) }
	ready := func(used time.Duration) Replica {
		return Replica{State: placement.StateReady, LastUsed: ago(used)}
	}
	tests := []struct {
		name   string
		give   []Replica
		want   time.Duration
		wantOK bool
	}{
		{name: "nothing resident"},
		{name: "the oldest ready model", give: []Replica{ready(time.Second), ready(time.Hour / 2), ready(time.Minute)}, want: time.Hour / 2, wantOK: true},
		{name: "loading and draining models are not eviction candidates",
			give: []Replica{ready(time.Second), {State: placement.StateLoading, LastUsed: ago(time.Hour)}, {State: placement.StateDraining, LastUsed: ago(time.Hour)}},
			want: time.Second, wantOK: true},
		{name: "pinned models are never evicted", give: []Replica{{State: placement.StateReady, Pinned: true, LastUsed: ago(time.Hour)}}},
		{name: "a model with requests in flight is in use", give: []Replica{{State: placement.StateReady, InFlight: 1, LastUsed: ago(time.Hour)}}, wantOK: true},
		{name: "a use stamped after now is not negative", give: []Replica{ready(-time.Second)}, wantOK: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, ok := lruAge(tt.give, now)
			if got != tt.want || ok != tt.wantOK {
				t.Errorf("lruAge = %v, %v; want %v, %v", got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

// The gauge is computed when scraped, so it keeps aging between events.
func TestLRUAgeGaugeAgesBetweenScrapes(t *testing.T) {
	t.Parallel()
	fx := newFixture(t, 10000)
	reg := prometheus.NewRegistry()
	NewMetrics(reg, 10).watch(fx.agent)
	scrape := func() (float64, bool) {
		t.Helper()
		families, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range families {
			if f.GetName() == "mesh_worker_lru_age_seconds" {
				return f.GetMetric()[0].GetGauge().GetValue(), true
			}
		}
		return 0, false
	}
	advance := func(d time.Duration) {
		fx.mu.Lock()
		*fx.clock = fx.clock.Add(d)
		fx.mu.Unlock()
	}

	if v, ok := scrape(); ok {
		t.Fatalf("lru age %v with nothing resident, want no sample", v)
	}
	for _, n := range []string{"a", "b"} {
		if _, err := fx.agent.Load(context.Background(), fx.spec(n, 1000)); err != nil {
			t.Fatal(err)
		}
	}
	advance(30 * time.Second)
	fx.infer(t, "b")
	if v, ok := scrape(); !ok || v < 30 || v > 30.1 {
		t.Fatalf("lru age %v (present %v) after a sat idle 30s, want 30", v, ok)
	}
	advance(15 * time.Second)
	if v, _ := scrape(); v < 45 || v > 45.1 {
		t.Fatalf("lru age %v 15s later, want 45", v)
	}
	fx.infer(t, "a")
	if v, _ := scrape(); v < 15 || v > 15.1 {
		t.Fatalf("lru age %v once a was used, want b's 15", v)
	}
}

func TestReplicaSeries(t *testing.T) {
	t.Parallel()
	rep := func(name, version string, s placement.State) Replica {
		return Replica{Model: placement.ModelVersion{Name: name, Version: version}, State: s}
	}
	replicas := []Replica{rep("iris", "1", placement.StateReady), rep("iris", "2", placement.StateLoading),
		rep("digits", "1", placement.StateReady), rep("zeta", "3", placement.StateDraining), rep("yak", "1", placement.StateReady)}
	got := replicaSeries(replicas, 2)
	want := map[[3]string]int{
		{"digits", "1", "ready"}: 1, {"iris", "1", "ready"}: 1, {"iris", "2", "loading"}: 1,
		{"_other", "_other", "ready"}: 1, {"_other", "_other", "draining"}: 1, // yak and zeta, beyond the first two names
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("series (-want +got):\n%s", diff)
	}
}
