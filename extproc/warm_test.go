package extproc

import "testing"

func TestWarmPlan(t *testing.T) {
	t.Parallel()
	reg := mustRegistry(t, `
models:
  - name: hot
    minReplicas: 2
    versions: [{version: "1", storageUri: "file:///m/hot"}]
  - name: lazy
    versions: [{version: "1", storageUri: "file:///m/lazy"}]
`)
	w1, w2, w3 := worker("w1", 1, ort, 1000, 0), worker("w2", 2, ort, 1000, 100), worker("w3", 3, ort, 1000, 900)
	tests := []struct {
		name      string
		reps      map[string]map[string]string // worker id -> replicas
		wantLoads int
	}{
		{"nothing loaded: two loads", nil, 2},
		{"one ready: one more", map[string]map[string]string{"w1": {"hot:1": "ready"}}, 1},
		{"loading counts", map[string]map[string]string{"w1": {"hot:1": "ready"}, "w3": {"hot:1": "loading"}}, 0},
		{"draining does not count", map[string]map[string]string{"w1": {"hot:1": "ready"}, "w2": {"hot:1": "draining"}}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			snap := snapshot(t, withWorker(w1, tt.reps["w1"]), withWorker(w2, tt.reps["w2"]), withWorker(w3, tt.reps["w3"]))
			snap.Registry = reg
			plan := WarmPlan(snap)
			if len(plan) != tt.wantLoads {
				t.Fatalf("%d loads, want %d: %+v", len(plan), tt.wantLoads, plan)
			}
			seen := map[string]bool{}
			for _, l := range plan {
				if l.Target.Model != mv("hot", "1") {
					t.Fatalf("a load of %v, which has no minReplicas", l.Target.Model)
				}
				if state := tt.reps[l.Worker.ID]["hot:1"]; state == "ready" || state == "loading" || seen[l.Worker.ID] {
					t.Fatalf("a second replica planned on %s", l.Worker.ID)
				}
				seen[l.Worker.ID] = true
			}
		})
	}
}
