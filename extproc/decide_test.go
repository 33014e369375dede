package extproc

import (
	"errors"
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/internal/registry"
	"github.com/modelmesh/mesh/internal/residency"
)

const testRegistry = `
models:
  - name: iris
    versions:
      - {version: "1", storageUri: "file:///m/iris/1", memoryBytes: 100}
      - {version: "2", storageUri: "file:///m/iris/2", memoryBytes: 100}
    traffic:
      - match: {x-canary: "yes"}
        split: [{version: "2", weight: 1}]
      - split: [{version: "1", weight: 90}, {version: "2", weight: 10}]
  - name: digits
    versions: [{version: "1", storageUri: "file:///m/digits/1"}]
  - name: big
    versions: [{version: "1", storageUri: "file:///m/big/1", memoryBytes: 500}]
  - name: fraud
    runtime: triton
    versions:
      - {version: "1", storageUri: "file:///m/fraud"}
      - {version: "2", storageUri: "file:///m/fraud"}
  - name: llm
    runtime: triton
    pinned: true
    versions: [{version: "7", storageUri: "file:///m/llm/7", memoryBytes: 10}]
  - name: wine
    format: sklearn
    versions: [{version: "1", storageUri: "file:///m/wine/1/model.joblib"}]
`

func mustRegistry(t testing.TB, yaml string) *registry.Registry {
	t.Helper()
	reg, err := registry.Parse([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return reg
}

// worker is a live worker record for tests: data port 1000+n, management port 2000+n. A
// triton worker advertises what the Triton backend does: one version of a model at a time.
// readsOf are the formats each runtime's workers advertise.
var readsOf = map[string][]string{"onnxruntime": {"onnx"}, "triton": {"triton"}, "mlserver": {"lightgbm", "sklearn", "xgboost"}}

func worker(id string, n int, runtime string, capacity, used int64) residency.Worker {
	return residency.Worker{ID: id, Runtime: runtime, Caps: placement.Capabilities{OneVersion: runtime != "onnxruntime", Formats: readsOf[runtime]},
		Capacity: placement.HostMemory(capacity), Used: placement.HostMemory(used),
		DataAddr: fmt.Sprintf("10.0.0.%d:8000", n), MgmtAddr: fmt.Sprintf("10.0.0.%d:8010", n)}
}

// gpuWorker is a live Triton worker record with GPUs: capacity and use per device.
func gpuWorker(id string, n int, host int64, gpus, used []int64) residency.Worker {
	w := worker(id, n, "triton", 0, 0)
	w.Capacity, w.Used = placement.Memory{Host: host, GPU: gpus}, placement.Memory{GPU: used}
	return w
}

type snapOpt func(*residency.Snapshot)

func withWorker(w residency.Worker, replicas map[string]string) snapOpt {
	return func(s *residency.Snapshot) {
		s.Workers[w.ID] = w
		reps := map[placement.ModelVersion]residency.Replica{}
		for mv, state := range replicas {
			m, err := placement.ParseModelVersion(mv)
			if err != nil {
				panic(err)
			}
			st, ok := placement.ParseState(state)
			if !ok {
				panic("state " + state)
			}
			reps[m] = residency.Replica{State: st}
		}
		s.Replicas[w.ID] = reps
	}
}

func withSize(mv string, n int64) snapOpt {
	return func(s *residency.Snapshot) {
		m, _ := placement.ParseModelVersion(mv)
		s.Sizes[m] = placement.Footprint{Host: n}
	}
}

func withGPUSize(mv string, host, gpu int64) snapOpt {
	return func(s *residency.Snapshot) {
		m, _ := placement.ParseModelVersion(mv)
		s.Sizes[m] = placement.Footprint{Host: host, GPU: gpu}
	}
}

func snapshot(t testing.TB, opts ...snapOpt) *residency.Snapshot {
	s := &residency.Snapshot{Workers: map[string]residency.Worker{}, Replicas: map[string]map[placement.ModelVersion]residency.Replica{},
		Sizes: map[placement.ModelVersion]placement.Footprint{}, Registry: mustRegistry(t, testRegistry)}
	for _, o := range opts {
		o(s)
	}
	return s
}

// fixed is a random source that always returns r (mod n).
func fixed(r uint64) func(uint64) uint64 { return func(n uint64) uint64 { return r % n } }

func mv(name, version string) placement.ModelVersion {
	return placement.ModelVersion{Name: name, Version: version}
}

// want is the comparable part of a decision.
type want struct {
	Kind       Kind
	Outcome    string
	Model      placement.ModelVersion
	Endpoint   string
	Candidates []string // worker ids, in order
	Err        error
}

func summary(d Decision, err error) want {
	var kind error
	if err != nil {
		for _, k := range []error{ErrNoState, ErrNoModel, ErrNotRegistered, ErrNoWorker} {
			if errors.Is(err, k) {
				kind = k
			}
		}
		return want{Err: kind}
	}
	w := want{Kind: d.Kind, Outcome: d.Outcome, Model: d.Model, Endpoint: d.Endpoint}
	for _, c := range d.Candidates {
		w.Candidates = append(w.Candidates, c.ID)
	}
	return w
}

func TestDecide(t *testing.T) {
	const ort = "onnxruntime"
	w1 := worker("w1", 1, ort, 1000, 0)
	w2 := worker("w2", 2, ort, 1000, 0)
	tests := []struct {
		name string
		snap *residency.Snapshot
		req  Request
		rnd  func(uint64) uint64
		want want
	}{
		{name: "no snapshot yet", snap: nil, req: Request{Model: "iris"}, want: want{Err: ErrNoState}},
		{name: "server live goes to a live worker", snap: snapshot(t, withWorker(w1, nil), withWorker(w2, nil)),
			req: Request{Path: "/v2/health/live"}, rnd: fixed(1), want: want{Kind: Route, Outcome: "server_level", Endpoint: w2.DataAddr}},
		{name: "server metadata", snap: snapshot(t, withWorker(w1, nil)),
			req: Request{Path: "/v2"}, want: want{Kind: Route, Outcome: "server_level", Endpoint: w1.DataAddr}},
		{name: "grpc server ready", snap: snapshot(t, withWorker(w1, nil)),
			req: Request{Path: "/inference.GRPCInferenceService/ServerReady"}, want: want{Kind: Route, Outcome: "server_level", Endpoint: w1.DataAddr}},
		{name: "server level without a live worker", snap: snapshot(t),
			req: Request{Path: "/v2/health/ready"}, want: want{Err: ErrNoWorker}},
		{name: "no model on another path", snap: snapshot(t, withWorker(w1, nil)),
			req: Request{Path: "/v2/models"}, want: want{Err: ErrNoModel}},
		{name: "unknown model", snap: snapshot(t, withWorker(w1, nil)),
			req: Request{Model: "nope"}, want: want{Err: ErrNotRegistered}},
		{name: "no registry published", snap: &residency.Snapshot{},
			req: Request{Model: "iris"}, want: want{Err: ErrNotRegistered}},
		{name: "unknown version", snap: snapshot(t, withWorker(w1, nil)),
			req: Request{Model: "iris", Version: "3"}, want: want{Err: ErrNotRegistered}},
		{name: "weighted split picks v1 below 90", snap: snapshot(t, withWorker(w1, map[string]string{"iris:1": "ready", "iris:2": "ready"})),
			req: Request{Model: "iris"}, rnd: fixed(89), want: want{Kind: Route, Outcome: "routed_ready", Model: mv("iris", "1"), Endpoint: w1.DataAddr}},
		{name: "weighted split picks v2 from 90", snap: snapshot(t, withWorker(w1, map[string]string{"iris:1": "ready", "iris:2": "ready"})),
			req: Request{Model: "iris"}, rnd: fixed(90), want: want{Kind: Route, Outcome: "routed_ready", Model: mv("iris", "2"), Endpoint: w1.DataAddr}},
		{name: "header rule sends canaries to v2", snap: snapshot(t, withWorker(w1, map[string]string{"iris:2": "ready"})),
			req: Request{Model: "iris", Header: registry.MapLookup(map[string]string{"x-canary": "yes"})}, rnd: fixed(0),
			want: want{Kind: Route, Outcome: "routed_ready", Model: mv("iris", "2"), Endpoint: w1.DataAddr}},
		{name: "explicit version beats the split", snap: snapshot(t, withWorker(w1, map[string]string{"iris:2": "ready"})),
			req: Request{Model: "iris", Version: "2"}, rnd: fixed(0), want: want{Kind: Route, Outcome: "routed_ready", Model: mv("iris", "2"), Endpoint: w1.DataAddr}},
		{name: "default version without rules", snap: snapshot(t, withWorker(w1, map[string]string{"digits:1": "ready"})),
			req: Request{Model: "digits"}, want: want{Kind: Route, Outcome: "routed_ready", Model: mv("digits", "1"), Endpoint: w1.DataAddr}},
		{name: "hot goes to the least full ready worker",
			snap: snapshot(t, withWorker(worker("w1", 1, ort, 1000, 800), map[string]string{"digits:1": "ready"}),
				withWorker(worker("w2", 2, ort, 1000, 100), map[string]string{"digits:1": "ready"}),
				withWorker(worker("w3", 3, ort, 1000, 0), map[string]string{"digits:1": "loading"})),
			req: Request{Model: "digits"}, want: want{Kind: Route, Outcome: "routed_ready", Model: mv("digits", "1"), Endpoint: "10.0.0.2:8000"}},
		{name: "gRPC goes to a worker's gRPC port (Triton)",
			snap: snapshot(t, withWorker(func() residency.Worker { w := w1; w.GRPCAddr = "10.0.0.1:8001"; return w }(), map[string]string{"digits:1": "ready"})),
			req:  Request{Model: "digits", GRPC: true},
			want: want{Kind: Route, Outcome: "routed_ready", Model: mv("digits", "1"), Endpoint: "10.0.0.1:8001"}},
		{name: "a Triton worker holding another version is not a candidate",
			snap: snapshot(t, withWorker(worker("t1", 1, "triton", 1000, 0), map[string]string{"fraud:1": "ready"}),
				withWorker(worker("t2", 2, "triton", 1000, 900), nil)),
			req:  Request{Model: "fraud", Version: "2"},
			want: want{Kind: Load, Model: mv("fraud", "2"), Candidates: []string{"t2"}}},
		{name: "readiness of a cold model is asked of a worker, not loaded", snap: snapshot(t, withWorker(w1, nil)),
			req: Request{Model: "digits", Path: "/v2/models/digits/ready"}, rnd: fixed(0),
			want: want{Kind: Route, Outcome: "server_level", Model: mv("digits", "1"), Endpoint: w1.DataAddr}},
		{name: "gRPC readiness of a cold model is asked of a worker", snap: snapshot(t, withWorker(w1, nil)),
			req: Request{Model: "digits", Path: "/inference.GRPCInferenceService/ModelReady"}, rnd: fixed(0),
			want: want{Kind: Route, Outcome: "server_level", Model: mv("digits", "1"), Endpoint: w1.DataAddr}},
		{name: "metadata of a cold model loads it", snap: snapshot(t, withWorker(w1, nil)),
			req:  Request{Model: "digits", Path: "/v2/models/digits"},
			want: want{Kind: Load, Model: mv("digits", "1"), Candidates: []string{"w1"}}},
		{name: "draining is not ready",
			snap: snapshot(t, withWorker(w1, map[string]string{"digits:1": "draining"})),
			req:  Request{Model: "digits"}, want: want{Kind: Load, Model: mv("digits", "1"), Candidates: []string{"w1"}}},
		{name: "cold: runtime must match",
			snap: snapshot(t, withWorker(w1, nil), withWorker(worker("t1", 9, "triton", 1000, 0), nil)),
			req:  Request{Model: "llm"}, want: want{Kind: Load, Model: mv("llm", "7"), Candidates: []string{"t1"}}},
		{name: "cold: only a worker that reads the format",
			snap: snapshot(t, withWorker(w1, nil), withWorker(worker("t1", 9, "triton", 1000, 0), nil), withWorker(worker("ml", 7, "mlserver", 1000, 0), nil)),
			req:  Request{Model: "wine"}, want: want{Kind: Load, Model: mv("wine", "1"), Candidates: []string{"ml"}}},
		{name: "cold: no worker reads the format",
			snap: snapshot(t, withWorker(w1, nil), withWorker(worker("t1", 9, "triton", 1000, 0), nil)),
			req:  Request{Model: "wine"}, want: want{Err: ErrNoWorker}},
		{name: "cold: an ONNX model is not placed on MLServer",
			snap: snapshot(t, withWorker(worker("ml", 7, "mlserver", 1000, 0), nil), withWorker(w1, nil)),
			req:  Request{Model: "digits"}, want: want{Kind: Load, Model: mv("digits", "1"), Candidates: []string{"w1"}}},
		{name: "cold: no worker of the runtime",
			snap: snapshot(t, withWorker(w1, nil)),
			req:  Request{Model: "llm"}, want: want{Err: ErrNoWorker}},
		{name: "cold: capacity below the declared size is never chosen",
			snap: snapshot(t, withWorker(worker("small", 1, ort, 400, 0), nil), withWorker(worker("large", 2, ort, 600, 550), nil)),
			req:  Request{Model: "big"}, want: want{Kind: Load, Model: mv("big", "1"), Candidates: []string{"large"}}},
		{name: "cold: nobody large enough",
			snap: snapshot(t, withWorker(worker("small", 1, ort, 400, 0), nil)),
			req:  Request{Model: "big"}, want: want{Err: ErrNoWorker}},
		{name: "cold: room before fewer loads",
			snap: snapshot(t, withWorker(worker("full", 1, ort, 1000, 950), nil),
				withWorker(worker("busy", 2, ort, 1000, 0), map[string]string{"a:1": "loading", "b:1": "loading"})),
			req: Request{Model: "iris", Version: "1"}, want: want{Kind: Load, Model: mv("iris", "1"), Candidates: []string{"busy", "full"}}},
		{name: "cold: learned size counts as the size",
			snap: snapshot(t, withSize("digits:1", 300), withWorker(worker("a", 1, ort, 1000, 800), nil),
				withWorker(worker("b", 2, ort, 1000, 600), map[string]string{"x:1": "loading"})),
			req: Request{Model: "digits"}, want: want{Kind: Load, Model: mv("digits", "1"), Candidates: []string{"b", "a"}}},
		{name: "cold: learned size above a worker's capacity excludes it",
			snap: snapshot(t, withSize("digits:1", 2000), withWorker(worker("a", 1, ort, 1000, 0), nil), withWorker(worker("b", 2, ort, 4000, 0), nil)),
			req:  Request{Model: "digits"}, want: want{Kind: Load, Model: mv("digits", "1"), Candidates: []string{"b"}}},
		{name: "cold: with room everywhere, fewest loads in progress",
			snap: snapshot(t, withWorker(worker("a", 1, ort, 1000, 0), map[string]string{"x:1": "loading"}),
				withWorker(worker("b", 2, ort, 1000, 500), map[string]string{"y:1": "ready"})),
			req: Request{Model: "iris", Version: "1"}, want: want{Kind: Load, Model: mv("iris", "1"), Candidates: []string{"b", "a"}}},
		{name: "cold: join a load already under way",
			snap: snapshot(t, withWorker(worker("a", 1, ort, 1000, 0), nil),
				withWorker(worker("b", 2, ort, 1000, 950), map[string]string{"iris:1": "loading"})),
			req: Request{Model: "iris", Version: "1"}, want: want{Kind: Load, Model: mv("iris", "1"), Candidates: []string{"b", "a"}}},
		{name: "cold on GPUs: a learned GPU footprint needs one device large enough, not the sum",
			snap: snapshot(t, withGPUSize("fraud:2", 100, 1500),
				withWorker(gpuWorker("two-small", 1, 10000, []int64{1000, 1000}, nil), nil),
				withWorker(gpuWorker("one-large", 2, 10000, []int64{2000}, []int64{1900}), nil)),
			req:  Request{Model: "fraud", Version: "2"},
			want: want{Kind: Load, Model: mv("fraud", "2"), Candidates: []string{"one-large"}}},
		{name: "cold on GPUs: room on any one device counts as room",
			snap: snapshot(t, withGPUSize("fraud:2", 100, 600),
				withWorker(gpuWorker("gpu0-full", 1, 10000, []int64{1000, 1000}, []int64{1000, 0}), map[string]string{"x:1": "loading"}),
				withWorker(gpuWorker("both-half", 2, 10000, []int64{1000, 1000}, []int64{500, 500}), nil)),
			req:  Request{Model: "fraud", Version: "2"},
			want: want{Kind: Load, Model: mv("fraud", "2"), Candidates: []string{"gpu0-full", "both-half"}}},
		{name: "cold on GPUs: host memory is a dimension of its own",
			snap: snapshot(t, withGPUSize("fraud:2", 5000, 100),
				withWorker(gpuWorker("host-small", 1, 4000, []int64{1000}, nil), nil),
				withWorker(gpuWorker("host-large", 2, 8000, []int64{1000}, []int64{950}), nil)),
			req:  Request{Model: "fraud", Version: "2"},
			want: want{Kind: Load, Model: mv("fraud", "2"), Candidates: []string{"host-large"}}},
		{name: "cold: unknown size, a full worker comes last",
			snap: snapshot(t, withWorker(worker("a", 1, ort, 1000, 1000), nil), withWorker(worker("b", 2, ort, 1000, 999), nil)),
			req:  Request{Model: "digits"}, want: want{Kind: Load, Model: mv("digits", "1"), Candidates: []string{"b", "a"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rnd := tt.rnd
			if rnd == nil {
				rnd = fixed(0)
			}
			got := summary(Decide(tt.snap, tt.req, rnd))
			if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b error) bool { return a == b })); diff != "" {
				t.Errorf("Decide (-want +got):\n%s", diff)
			}
		})
	}
}

// TestDecideFollowsConditions: a cold request gets the version of the rule the gateway's
// routes matched, conditions on header prefixes and on the path included.
func TestDecideFollowsConditions(t *testing.T) {
	const reg = `
models:
  - name: cancer
    versions:
      - {version: "1", storageUri: "file:///m/cancer/1"}
      - {version: "2", storageUri: "file:///m/cancer/2"}
      - {version: "3", storageUri: "file:///m/cancer/3"}
    traffic:
      - when: [{headers: {x-user: {prefix: beta-}}}]
        split: [{version: "2", weight: 1}]
      - when: [{uri: {regex: "/v2/models/cancer/(explain|infer)/v3"}}]
        split: [{version: "3", weight: 1}]
      - split: [{version: "1", weight: 1}]
`
	w1 := worker("w1", 1, "onnxruntime", 1000, 0)
	snap := snapshot(t, withWorker(w1, nil))
	snap.Registry = mustRegistry(t, reg)
	tests := []struct {
		name    string
		path    string
		headers map[string]string
		want    string
	}{
		{"header prefix", "/v2/models/cancer/infer", map[string]string{"x-user": "beta-alice"}, "2"},
		{"header without the prefix", "/v2/models/cancer/infer", map[string]string{"x-user": "alice-beta-"}, "1"},
		{"path regex", "/v2/models/cancer/explain/v3", nil, "3"},
		{"path regex matches the whole path only", "/v2/models/cancer/explain/v3/x", nil, "1"},
		{"first rule wins", "/v2/models/cancer/infer/v3", map[string]string{"x-user": "beta-bob"}, "2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			req := Request{Path: tt.path, Model: "cancer", Header: registry.MapLookup(tt.headers)}
			got := summary(Decide(snap, req, fixed(0)))
			want := want{Kind: Load, Model: mv("cancer", tt.want), Candidates: []string{"w1"}}
			if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b error) bool { return a == b })); diff != "" {
				t.Errorf("Decide (-want +got):\n%s", diff)
			}
		})
	}
}

func TestWeightedChoiceFollowsTheWeights(t *testing.T) {
	snap := snapshot(t, withWorker(worker("w1", 1, "onnxruntime", 1000, 0), map[string]string{"iris:1": "ready", "iris:2": "ready"}))
	counts := map[string]int{}
	for r := uint64(0); r < 100; r++ {
		d, err := Decide(snap, Request{Model: "iris"}, fixed(r))
		if err != nil {
			t.Fatal(err)
		}
		counts[d.Model.Version]++
	}
	if counts["1"] != 90 || counts["2"] != 10 {
		t.Fatalf("versions over every draw: %v, want 90 v1 and 10 v2", counts)
	}
}

func TestEqualWorkersAreSharedOutDeterministically(t *testing.T) {
	var opts []snapOpt
	yaml := "models:\n"
	for i := range 40 {
		yaml += fmt.Sprintf("  - name: m%d\n    versions: [{version: \"1\", storageUri: \"file:///m\"}]\n", i)
	}
	for i, id := range []string{"a", "b", "c"} {
		opts = append(opts, withWorker(worker(id, i, "onnxruntime", 1000, 0), nil))
	}
	snap := snapshot(t, opts...)
	snap.Registry = mustRegistry(t, yaml)
	first := map[string]int{}
	for i := range 40 {
		req := Request{Model: fmt.Sprintf("m%d", i)}
		d1, err := Decide(snap, req, fixed(0))
		if err != nil {
			t.Fatal(err)
		}
		d2, _ := Decide(snap, req, fixed(7))
		if diff := cmp.Diff(summary(d1, nil), summary(d2, nil)); diff != "" {
			t.Fatalf("two decisions on one snapshot differ:\n%s", diff)
		}
		first[d1.Candidates[0].ID]++
	}
	if len(first) != 3 {
		t.Fatalf("40 cold models went first to %v; want all three equal workers used", first)
	}
}
