package placement

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func node(id string, capacity, used int64, reps map[string]State) Node {
	n := Node{ID: id, Runtime: "onnxruntime", Capacity: HostMemory(capacity), Used: HostMemory(used),
		Replicas: map[ModelVersion]State{}, Serves: true, Loads: true}
	for mv, s := range reps {
		m, err := ParseModelVersion(mv)
		if err != nil {
			panic(err)
		}
		n.Replicas[m] = s
	}
	return n
}

func ids(nodes []Node) []string {
	out := []string{}
	for _, n := range nodes {
		out = append(out, n.ID)
	}
	return out
}

var iris = ModelVersion{Name: "iris", Version: "1"}

func TestReadyPrefersTheLeastFullThenTheLeastBusy(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		nodes []Node
		want  string
		found bool
	}{
		{"none holds it", []Node{node("a", 100, 0, nil)}, "", false},
		{"loading is not ready", []Node{node("a", 100, 0, map[string]State{"iris:1": StateLoading})}, "", false},
		{"draining is not ready", []Node{node("a", 100, 0, map[string]State{"iris:1": StateDraining})}, "", false},
		{"least full", []Node{node("a", 100, 90, map[string]State{"iris:1": StateReady}), node("b", 100, 10, map[string]State{"iris:1": StateReady})}, "b", true},
		{"equal use: fewer loads in progress", []Node{
			node("a", 100, 50, map[string]State{"iris:1": StateReady, "x:1": StateLoading}),
			node("b", 100, 50, map[string]State{"iris:1": StateReady})}, "b", true},
		{"no data address", []Node{func() Node {
			n := node("a", 100, 0, map[string]State{"iris:1": StateReady})
			n.Serves = false
			return n
		}()}, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, found := Ready(tt.nodes, iris)
			if found != tt.found || got.ID != tt.want {
				t.Errorf("Ready = %q, %v; want %q, %v", got.ID, found, tt.want, tt.found)
			}
		})
	}
}

func TestCandidatesOrder(t *testing.T) {
	t.Parallel()
	oneVersion := func(n Node) Node { n.Caps.OneVersion = true; return n }
	other := func(n Node) Node { n.Runtime = "triton"; return n }
	tests := []struct {
		name  string
		nodes []Node
		load  Load
		want  []string
	}{
		{"a load in progress first, then room, draining last", []Node{
			node("draining", 100, 0, map[string]State{"iris:1": StateDraining}),
			node("full", 100, 95, nil),
			node("room", 100, 0, nil),
			node("joining", 100, 95, map[string]State{"iris:1": StateLoading}),
		}, Load{Model: iris, Runtime: "onnxruntime", Size: Size{Declared: 10}}, []string{"joining", "room", "full", "draining"}},
		{"too big even when empty is left out", []Node{node("small", 5, 0, nil), node("big", 100, 0, nil)},
			Load{Model: iris, Runtime: "onnxruntime", Size: Size{Declared: 10}}, []string{"big"}},
		{"unknown size: any free byte is room", []Node{node("full", 100, 100, nil), node("free", 100, 99, nil)},
			Load{Model: iris, Runtime: "onnxruntime"}, []string{"free", "full"}},
		{"another runtime is left out", []Node{other(node("t", 100, 0, nil)), node("o", 100, 0, nil)},
			Load{Model: iris, Runtime: "onnxruntime"}, []string{"o"}},
		{"one version at a time is a capability, whatever the runtime", []Node{
			oneVersion(node("holds-v2", 100, 0, map[string]State{"iris:2": StateReady})),
			node("side-by-side", 100, 50, map[string]State{"iris:2": StateReady}),
		}, Load{Model: iris, Runtime: "onnxruntime"}, []string{"side-by-side"}},
		{"loads the caller has pending count as in progress", []Node{
			func() Node { n := node("asked", 100, 0, nil); n.Pending = 1; return n }(),
			node("not-asked", 100, 0, nil),
		}, Load{Model: iris, Runtime: "onnxruntime"}, []string{"not-asked", "asked"}},
		{"equal loads: the least full first", []Node{node("fuller", 100, 60, nil), node("emptier", 100, 10, nil)},
			Load{Model: iris, Runtime: "onnxruntime"}, []string{"emptier", "fuller"}},
		{"fewer loads in progress", []Node{
			node("busy", 100, 0, map[string]State{"a:1": StateLoading, "b:1": StateLoading}),
			node("idle", 100, 0, nil),
		}, Load{Model: iris, Runtime: "onnxruntime"}, []string{"idle", "busy"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if diff := cmp.Diff(tt.want, ids(Candidates(tt.nodes, tt.load))); diff != "" {
				t.Errorf("Candidates (-want +got):\n%s", diff)
			}
		})
	}
}

func TestEqualNodesAreSharedOutBetweenModels(t *testing.T) {
	t.Parallel()
	nodes := []Node{node("a", 100, 0, nil), node("b", 100, 0, nil), node("c", 100, 0, nil)}
	first := map[string]int{}
	for i := range 60 {
		m := ModelVersion{Name: "m" + string(rune('a'+i%26)) + string(rune('a'+i/26)), Version: "1"}
		c := Candidates(nodes, Load{Model: m, Runtime: "onnxruntime"})
		if again := Candidates(nodes, Load{Model: m, Runtime: "onnxruntime"}); c[0].ID != again[0].ID {
			t.Fatalf("%s: first choice %s, then %s", m, c[0].ID, again[0].ID)
		}
		first[c[0].ID]++
	}
	for _, id := range []string{"a", "b", "c"} {
		if first[id] < 10 {
			t.Errorf("node %s came first for %d of 60 models, want a fair share: %v", id, first[id], first)
		}
	}
}

func TestWarmPlanTopsUpToTheMinimum(t *testing.T) {
	t.Parallel()
	nodes := []Node{
		node("ready", 100, 0, map[string]State{"iris:1": StateReady}),
		node("loading", 100, 0, map[string]State{"iris:1": StateLoading}),
		node("draining", 100, 0, map[string]State{"iris:1": StateDraining}),
		node("empty", 100, 0, nil),
	}
	load := Load{Model: iris, Runtime: "onnxruntime"}
	plan := WarmPlan([]Want{{Load: load, Min: 3}}, nodes)
	if len(plan) != 1 || plan[0].Node.ID != "empty" {
		t.Errorf("plan %v, want one load on empty (ready and loading count, draining does not and comes last)", plan)
	}
	if plan := WarmPlan([]Want{{Load: load, Min: 2}}, nodes); len(plan) != 0 {
		t.Errorf("plan %v with the minimum met, want none", plan)
	}
}

func TestSizeOn(t *testing.T) {
	t.Parallel()
	learned := Footprint{Host: 7, GPU: 9}
	tests := []struct {
		name   string
		size   Size
		gpus   bool
		want   Footprint
		source SizeSource
	}{
		{"declared is host memory without GPUs", Size{Declared: 5, Learned: learned}, false, Footprint{Host: 5}, SizeDeclared},
		{"declared is GPU memory with GPUs", Size{Declared: 5, Learned: learned}, true, Footprint{GPU: 5}, SizeDeclared},
		{"learned as measured", Size{Learned: learned}, true, learned, SizeLearned},
		{"unknown", Size{}, true, Footprint{}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, source := tt.size.On(tt.gpus)
			if got != tt.want || source != tt.source {
				t.Errorf("On = %v, %q; want %v, %q", got, source, tt.want, tt.source)
			}
		})
	}
}

func TestStateTextRoundTrip(t *testing.T) {
	t.Parallel()
	for _, s := range []State{StateLoading, StateReady, StateDraining} {
		b, _ := s.MarshalText()
		var got State
		if err := got.UnmarshalText(b); err != nil || got != s {
			t.Errorf("%v: read back %v, %v", s, got, err)
		}
	}
	var got State
	if err := got.UnmarshalText([]byte("hibernating")); err != nil || got != 0 {
		t.Errorf("an unknown state reads as %v, %v; want the zero State", got, err)
	}
}
