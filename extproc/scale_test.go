package extproc

import (
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/internal/residency"
)

const scaleRegistry = `
models:
  - name: hot
    maxReplicas: 2
    versions: [{version: "1", storageUri: "file:///m/hot", memoryBytes: 100}]
  - name: fixed
    maxReplicas: 1
    versions: [{version: "1", storageUri: "file:///m/fixed", memoryBytes: 100}]
`

// rep is a replica record with a demand of inFlight requests in flight.
func rep(state placement.State, inFlight float64, extra bool) residency.Replica {
	return residency.Replica{State: state, Extra: extra, Demand: placement.Demand{InFlight: inFlight, Rate: 10}}
}

func scaleSnapshot(t *testing.T, reps map[string]map[string]residency.Replica) residency.Snapshot {
	t.Helper()
	snap := snapshot(t,
		withWorker(worker("w1", 1, ort, 1000, 100), nil),
		withWorker(worker("w2", 2, ort, 1000, 950), nil), // no room for 100
		withWorker(worker("w3", 3, ort, 1000, 300), nil))
	snap.Registry = mustRegistry(t, scaleRegistry)
	for id, rs := range reps {
		for m, r := range rs {
			mv, err := placement.ParseModelVersion(m)
			if err != nil {
				t.Fatal(err)
			}
			snap.Replicas[id][mv] = r
		}
	}
	return *snap
}

func newTestScaler() *Scaler {
	return NewScaler(ScaleConfig{Policy: placement.ScalePolicy{TargetInFlight: 2, DownFraction: 0.5, UpAfter: 4 * time.Second, DownAfter: 30 * time.Second},
		MaxReplicas: 3}, nil, nil, nil, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
}

func TestScalerAddsAnExtraReplicaWhereThereIsRoom(t *testing.T) {
	t.Parallel()
	s := newTestScaler()
	t0 := time.Unix(1000, 0)
	snap := scaleSnapshot(t, map[string]map[string]residency.Replica{
		"w1": {"hot:1": rep(placement.StateReady, 5, false), "fixed:1": rep(placement.StateReady, 9, false)}})
	if steps := s.Plan(snap, t0); len(steps) != 0 {
		t.Fatalf("steps at the first sign of demand: %+v", steps)
	}
	steps := s.Plan(snap, t0.Add(4*time.Second))
	if len(steps) != 1 {
		t.Fatalf("after UpAfter: %+v, want one step (fixed has maxReplicas 1)", steps)
	}
	st := steps[0]
	if st.Direction != 1 || st.Target.Model != mv("hot", "1") || !st.Target.Extra {
		t.Fatalf("step %+v, want an extra replica of hot:1", st)
	}
	var ids []string
	for _, w := range st.Workers {
		ids = append(ids, w.ID)
	}
	if len(ids) != 1 || ids[0] != "w3" {
		t.Fatalf("places %v, want w3 only (w1 holds it, w2 has no room)", ids)
	}
	// The new replica loading counts: at maxReplicas nothing more is asked.
	snap = scaleSnapshot(t, map[string]map[string]residency.Replica{
		"w1": {"hot:1": rep(placement.StateReady, 5, false)}, "w3": {"hot:1": rep(placement.StateLoading, 0, true)}})
	if steps := s.Plan(snap, t0.Add(20*time.Second)); len(steps) != 0 {
		t.Fatalf("steps while the extra replica loads: %+v", steps)
	}
}

func TestScalerDrainsTheExtraReplicaWhenDemandFalls(t *testing.T) {
	t.Parallel()
	s := newTestScaler()
	t0 := time.Unix(1000, 0)
	snap := scaleSnapshot(t, map[string]map[string]residency.Replica{
		"w1": {"hot:1": rep(placement.StateReady, 0.2, false)}, "w3": {"hot:1": rep(placement.StateReady, 0.1, true)}})
	s.Plan(snap, t0)
	if steps := s.Plan(snap, t0.Add(29*time.Second)); len(steps) != 0 {
		t.Fatalf("scaled down before DownAfter: %+v", steps)
	}
	steps := s.Plan(snap, t0.Add(30*time.Second))
	if len(steps) != 1 || steps[0].Direction != -1 || steps[0].Workers[0].ID != "w3" {
		t.Fatalf("after DownAfter: %+v, want the extra replica on w3 drained", steps)
	}
	// Demand within the band keeps both.
	s = newTestScaler()
	snap = scaleSnapshot(t, map[string]map[string]residency.Replica{
		"w1": {"hot:1": rep(placement.StateReady, 1, false)}, "w3": {"hot:1": rep(placement.StateReady, 0.8, true)}})
	for i := range 40 {
		if steps := s.Plan(snap, t0.Add(time.Duration(i)*2*time.Second)); len(steps) != 0 {
			t.Fatalf("demand inside the hysteresis band changed the count: %+v", steps)
		}
	}
}

func TestScalerMakesTheLastExtraReplicaOrdinary(t *testing.T) {
	t.Parallel()
	s := newTestScaler()
	snap := scaleSnapshot(t, map[string]map[string]residency.Replica{
		"w1": {"hot:1": rep(placement.StateReady, 1, true)}, "w3": {"hot:1": rep(placement.StateDraining, 0, false)}})
	steps := s.Plan(snap, time.Unix(1000, 0))
	if len(steps) != 1 || steps[0].Direction != 0 || steps[0].Workers[0].ID != "w1" || steps[0].Target.Extra {
		t.Fatalf("steps %+v, want the copy on w1 made ordinary (an ordinary load)", steps)
	}
	// A model with no replica is cold: the scaler leaves it to the cold path.
	if steps := s.Plan(scaleSnapshot(t, nil), time.Unix(1000, 0)); len(steps) != 0 {
		t.Fatalf("steps for cold models: %+v", steps)
	}
}

func TestScalerDrainsReplicasOfUnregisteredModels(t *testing.T) {
	t.Parallel()
	s := newTestScaler()
	snap := scaleSnapshot(t, map[string]map[string]residency.Replica{
		"w1": {"gone:1": rep(placement.StateReady, 0, false), "hot:1": rep(placement.StateReady, 1, false), "hot:9": rep(placement.StateReady, 0, false)},
		"w3": {"gone:1": rep(placement.StateLoading, 0, false)}})
	steps := s.Plan(snap, time.Unix(1000, 0))
	var drained []string
	for _, st := range steps {
		if st.Direction == -1 {
			drained = append(drained, st.Workers[0].ID+" "+st.Target.Model.String())
		}
	}
	if len(drained) != 2 || drained[0] != "w1 gone:1" || drained[1] != "w1 hot:9" {
		t.Fatalf("drained %v, want the ready replicas of gone:1 and of hot's unregistered version 9 on w1", drained)
	}
}
