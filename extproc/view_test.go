package extproc

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/modelmesh/mesh/internal/residency"
)

// TestViewRecordsEachSnapshot: every Set reaches the metrics as the snapshot's time, which
// the staleness alert reads.
func TestViewRecordsEachSnapshot(t *testing.T) {
	reg := prometheus.NewRegistry()
	metrics := NewMetrics(reg, 10)
	view := NewView(metrics.SnapshotRead)
	if got := testutil.ToFloat64(metrics.snapshotTime); got != 0 {
		t.Fatalf("snapshot time %v before any snapshot", got)
	}
	changed := view.Changed()
	before := time.Now()
	view.Set(residency.Snapshot{})
	select {
	case <-changed:
	default:
		t.Fatal("Set did not wake the waiters")
	}
	if got := testutil.ToFloat64(metrics.snapshotTime); got < float64(before.UnixNano())/1e9 {
		t.Fatalf("snapshot time %v, want at least %v", got, float64(before.UnixNano())/1e9)
	}
	if view.Snapshot() == nil {
		t.Fatal("no snapshot after Set")
	}
}
