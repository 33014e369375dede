package kserve

import (
	"testing"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/internal/registry"
	"github.com/modelmesh/mesh/internal/residency"
)

func TestStatusOf(t *testing.T) {
	t.Parallel()
	iris := Entry{Namespace: "ns", Name: "iris", Model: mv("iris", "1"), Runtime: "onnxruntime", Files: registry.Files{StorageURI: "s3://m/i"}}
	reg, rejected := (&registry.Registry{}).WithModels(Models([]Entry{iris}))
	if len(rejected) != 0 {
		t.Fatal(rejected)
	}
	snap := func(states map[string]placement.State, failure *residency.Failure) residency.Snapshot {
		s := residency.Snapshot{Workers: map[string]residency.Worker{}, Replicas: map[string]map[placement.ModelVersion]residency.Replica{},
			Failures: map[placement.ModelVersion]residency.Failure{}}
		for w, st := range states {
			s.Workers[w] = residency.Worker{ID: w}
			s.Replicas[w] = map[placement.ModelVersion]residency.Replica{iris.Model: {State: st}}
		}
		if failure != nil {
			s.Failures[iris.Model] = *failure
		}
		return s
	}
	ep := Endpoints{REST: "http://gw:8080", GRPC: "grpc://gw:8080"}
	failed := &residency.Failure{Reason: ReasonLoadFailed, Message: "files not found", Worker: "w1", UnixMs: 1_700_000_000_000}
	tests := []struct {
		name                string
		entry               Entry
		reg                 *registry.Registry
		snap                residency.Snapshot
		state, ready, trans string
		copies              int
	}{
		{"not in the registry served yet", iris, &registry.Registry{}, snap(nil, nil), StatePending, "False", transLoading, 0},
		{"registered, loaded nowhere", iris, reg, snap(nil, nil), StateStandby, "True", transUpToDate, 0},
		{"loading", iris, reg, snap(map[string]placement.State{"w1": placement.StateLoading}, nil), StateLoading, "True", transLoading, 0},
		{"loaded on two", iris, reg, snap(map[string]placement.State{"w1": placement.StateReady, "w2": placement.StateReady}, nil), StateLoaded, "True", transUpToDate, 2},
		{"draining counts as no copy", iris, reg, snap(map[string]placement.State{"w1": placement.StateDraining}, nil), StateStandby, "True", transUpToDate, 0},
		{"last load failed", iris, reg, snap(nil, failed), StateFailed, "False", transBlocked, 0},
		{"failed once, loaded now", iris, reg, snap(map[string]placement.State{"w2": placement.StateReady}, failed), StateLoaded, "True", transUpToDate, 1},
		{"invalid spec", Entry{Namespace: "ns", Name: "x", Problem: invalid(ReasonNoRuntime, "no runtime")}, reg, snap(nil, nil), StateFailed, "False", transInvalid, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			st := StatusOf(tt.entry, tt.reg, tt.snap, ep)
			ms := st.ModelStatus
			if ms.States.ActiveModelState != tt.state || ms.TransitionStatus != tt.trans || ms.ModelCopies.TotalCopies != tt.copies {
				t.Fatalf("status %+v, want %s, %s, %d copies", ms, tt.state, tt.trans, tt.copies)
			}
			if len(st.Conditions) != 2 || st.Conditions[1].Type != "Ready" || st.Conditions[1].Status != tt.ready {
				t.Fatalf("conditions %+v, want Ready %s", st.Conditions, tt.ready)
			}
			if st.URL != ep.GRPC || st.Components["predictor"].RestURL != ep.REST {
				t.Fatalf("urls %+v", st)
			}
			if tt.state == StateFailed && (ms.LastFailureInfo == nil || ms.LastFailureInfo.Reason == "" || ms.LastFailureInfo.Message == "") {
				t.Fatalf("failed without lastFailureInfo: %+v", ms)
			}
		})
	}
}
