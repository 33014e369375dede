package controlplane

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/modelmesh/mesh/controlplane/translate"
	"github.com/modelmesh/mesh/internal/placement"
)

func TestRetentionKeepsAGoneClusterForTheRouteTimeout(t *testing.T) {
	t.Parallel()
	iris, fraud := placement.ModelVersion{Name: "iris", Version: "1"}, placement.ModelVersion{Name: "fraud", Version: "1"}
	state := func(ready ...placement.ModelVersion) translate.State {
		st := translate.State{Ready: map[placement.ModelVersion][]string{}, GRPC: map[string]string{"10.0.0.3:8000": "10.0.0.3:8001"}}
		for _, m := range ready {
			addr := "10.0.0.1:8000"
			if m == fraud {
				addr = "10.0.0.3:8000" // a worker with a gRPC port of its own: a twin cluster
			}
			st.Ready[m] = []string{addr}
		}
		return st
	}
	r := newRetention(time.Minute)
	t0 := time.Unix(1000, 0)
	steps := []struct {
		at    time.Duration
		state translate.State
		want  map[placement.ModelVersion]bool
	}{
		{0, state(iris, fraud), map[placement.ModelVersion]bool{}},
		{time.Second, state(), map[placement.ModelVersion]bool{iris: false, fraud: true}},
		{30 * time.Second, state(iris), map[placement.ModelVersion]bool{fraud: true}}, // iris back: routed, not retained
		{61 * time.Second, state(iris), map[placement.ModelVersion]bool{}},            // fraud's minute is up
		{62 * time.Second, state(), map[placement.ModelVersion]bool{iris: false}},
	}
	for _, s := range steps {
		if got := r.update(s.state, t0.Add(s.at)); !cmp.Equal(got, s.want) {
			t.Errorf("at %v: retained %v, want %v", s.at, got, s.want)
		}
	}
}
