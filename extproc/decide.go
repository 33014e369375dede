package extproc

import (
	"cmp"
	"fmt"
	"hash/fnv"
	"slices"
	"strings"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/internal/registry"
	"github.com/modelmesh/mesh/internal/residency"
)

// Request is what the decision needs from one request's headers. Header names are
// lower-case, as Envoy sends them.
type Request struct {
	// Path is the request path without its query (":path").
	Path string
	// Model and Version are x-model-id and x-model-version; Version may be empty.
	Model   string
	Version string
	// Header looks up any request header by lower-case name; the registry's traffic rules
	// match on it. May be nil.
	Header registry.Lookup
	// GRPC marks a gRPC request: it goes to a worker's gRPC address, which for Triton is
	// another port than REST.
	GRPC bool
}

// Endpoint is where req goes on worker w.
func (req Request) Endpoint(w residency.Worker) string {
	if req.GRPC {
		return w.GRPC()
	}
	return w.DataAddr
}

// Kind says what the server must do with a decision.
type Kind int

const (
	// Route: send the request to Endpoint now.
	Route Kind = iota + 1
	// Load: make Target resident on one of Candidates, then route there.
	Load
)

// Decision is the proto-free result of Decide.
type Decision struct {
	Kind Kind
	// Outcome is the metrics label of a Route decision: "routed_ready" or "server_level".
	Outcome string
	// Model is the chosen model version; empty for server-level calls.
	Model placement.ModelVersion
	// Endpoint is the worker's data address ("host:port") for Route.
	Endpoint string
	// Worker is the worker holding the ready replica, for routed_ready decisions.
	Worker residency.Worker
	// Target describes the load for Load decisions.
	Target Target
	// Candidates are the workers able to hold Target, best first (see Candidates).
	Candidates []residency.Worker
}

// Target is a model version to make resident, with what the worker's Load needs.
type Target struct {
	Model   placement.ModelVersion
	Runtime string
	// Files says where the worker fetches the model from.
	Files registry.Files
	// Declared is the registry's size (0: none); Learned the footprint measured at an
	// earlier load anywhere in the mesh (zero: never measured).
	Declared int64
	Learned  placement.Footprint
	Pinned   bool
}

// Footprint is what placement reserves for on worker w, as the worker counts it: the
// declared size (GPU memory on a worker with GPUs, host memory on one without), else the
// learned footprint; zero when unknown.
func (t Target) Footprint(w residency.Worker) placement.Footprint {
	switch {
	case t.Declared > 0 && len(w.Capacity.GPU) > 0:
		return placement.Footprint{GPU: t.Declared}
	case t.Declared > 0:
		return placement.Footprint{Host: t.Declared}
	}
	return t.Learned
}

// Known reports whether the model's size is declared or was measured.
func (t Target) Known() bool { return t.Declared > 0 || t.Learned.Total() > 0 }

func (t Target) describeSize() string {
	if t.Declared > 0 {
		return fmt.Sprintf("%d bytes declared", t.Declared)
	}
	return fmt.Sprintf("host %d and GPU %d bytes measured", t.Learned.Host, t.Learned.GPU)
}

// serverLevel lists the calls a worker answers about itself rather than about a model.
var serverLevel = map[string]bool{
	"/v2/health/live":  true,
	"/v2/health/ready": true,
	"/v2":              true,
	"/v2/":             true,
	"/inference.GRPCInferenceService/ServerLive":     true,
	"/inference.GRPCInferenceService/ServerReady":    true,
	"/inference.GRPCInferenceService/ServerMetadata": true,
}

// readinessProbe reports whether path asks if a model is ready: REST
// /v2/models/{name}[/versions/{v}]/ready or gRPC ModelReady.
func readinessProbe(path string) bool {
	return path == "/inference.GRPCInferenceService/ModelReady" ||
		(strings.HasPrefix(path, "/v2/models/") && strings.HasSuffix(path, "/ready"))
}

// Decide is the whole per-request decision, without I/O: given the latest snapshot (nil when
// none was read yet) and the request, it routes the request, asks for a load, or fails with
// an *Error. rnd(n) returns a uniform number in [0, n); it picks the version by the traffic
// weights and the worker for server-level calls.
func Decide(snap *residency.Snapshot, req Request, rnd func(n uint64) uint64) (Decision, error) {
	if snap == nil {
		return Decision{}, errorf(ErrNoState, "mesh state not read from redis yet")
	}
	if req.Model == "" {
		if !serverLevel[req.Path] {
			return Decision{}, errorf(ErrNoModel, "no model named in the request (x-model-id, or a /v2/models/{name}/... path)")
		}
		live := liveWorkers(snap)
		if len(live) == 0 {
			return Decision{}, errorf(ErrNoWorker, "no live worker")
		}
		return Decision{Kind: Route, Outcome: "server_level", Endpoint: req.Endpoint(live[rnd(uint64(len(live)))])}, nil
	}
	var model registry.Model
	ok := false
	if snap.Registry != nil {
		model, ok = snap.Registry.Model(req.Model)
	}
	if !ok {
		return Decision{}, errorf(ErrNotRegistered, "model %s is not registered", req.Model)
	}
	version := req.Version
	if version == "" {
		header := req.Header
		if header == nil {
			header = registry.MapLookup(nil)
		}
		version = pickWeighted(model.Routes(req.Path, header), rnd)
	}
	v, ok := model.Version(version)
	if !ok {
		return Decision{}, errorf(ErrNotRegistered, "model %s version %s is not registered", req.Model, version)
	}
	m := placement.ModelVersion{Name: model.Name, Version: v.Version}
	if readinessProbe(req.Path) {
		// Readiness of a registered model is answered without loading it: by a worker that
		// holds it (ready), else by any live worker, which answers "not ready".
		if w, ok := ReadyWorker(snap, m); ok {
			return Decision{Kind: Route, Outcome: "server_level", Model: m, Endpoint: req.Endpoint(w)}, nil
		}
		live := liveWorkers(snap)
		if len(live) == 0 {
			return Decision{}, errorf(ErrNoWorker, "no live worker")
		}
		return Decision{Kind: Route, Outcome: "server_level", Model: m, Endpoint: req.Endpoint(live[rnd(uint64(len(live)))])}, nil
	}
	t := Target{Model: m, Runtime: model.Runtime, Files: v.Files, Declared: v.MemoryBytes, Learned: snap.Sizes[m], Pinned: model.Pinned}
	if w, ok := ReadyWorker(snap, m); ok {
		return Decision{Kind: Route, Outcome: "routed_ready", Model: m, Endpoint: req.Endpoint(w), Worker: w, Target: t}, nil
	}
	cands := Candidates(snap, t)
	if len(cands) == 0 {
		if t.Known() {
			return Decision{}, errorf(ErrNoWorker, "no live worker with runtime %s and capacity for model %s (%s)", t.Runtime, m, t.describeSize())
		}
		return Decision{}, errorf(ErrNoWorker, "no live worker with runtime %s for model %s", t.Runtime, m)
	}
	return Decision{Kind: Load, Model: m, Target: t, Candidates: cands}, nil
}

// pickWeighted chooses a version with probability weight/total; the split is never empty
// and its weights never all zero (the registry validates both).
func pickWeighted(split []registry.Weighted, rnd func(uint64) uint64) string {
	var total uint64
	for _, w := range split {
		total += uint64(w.Weight)
	}
	if total == 0 {
		return split[0].Version
	}
	r := rnd(total)
	for _, w := range split {
		if r < uint64(w.Weight) {
			return w.Version
		}
		r -= uint64(w.Weight)
	}
	return split[len(split)-1].Version
}

// liveWorkers are the snapshot's workers with a data address, sorted by id.
func liveWorkers(snap *residency.Snapshot) []residency.Worker {
	var out []residency.Worker
	for _, w := range snap.Workers {
		if w.DataAddr != "" {
			out = append(out, w)
		}
	}
	slices.SortFunc(out, func(a, b residency.Worker) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// ReadyWorker picks the least-loaded worker holding m ready: lowest used/capacity, then
// fewest loads in progress, then a per-model hash of the worker id (so equal workers are
// shared out between models, the same way on every ext_proc replica), then the id.
func ReadyWorker(snap *residency.Snapshot, m placement.ModelVersion) (residency.Worker, bool) {
	var best residency.Worker
	found := false
	for _, id := range snap.Ready(m) {
		w, ok := snap.Workers[id]
		if !ok || w.DataAddr == "" {
			continue
		}
		if !found || compareLoad(snap, m, w, best) < 0 {
			best, found = w, true
		}
	}
	return best, found
}

func compareLoad(snap *residency.Snapshot, m placement.ModelVersion, a, b residency.Worker) int {
	if c := cmp.Compare(fullness(a), fullness(b)); c != 0 {
		return c
	}
	if c := cmp.Compare(loading(snap, a.ID), loading(snap, b.ID)); c != 0 {
		return c
	}
	return spread(m, a, b)
}

// fullness is used/capacity in the worker's fullest dimension; a worker without capacity
// counts as full.
func fullness(w residency.Worker) float64 {
	if w.Capacity.Total() <= 0 {
		return 1
	}
	full := 0.0
	used := w.Used.Dimensions()
	for i, c := range w.Capacity.Dimensions() {
		switch {
		case c.Bytes <= 0:
		case i < len(used):
			full = max(full, float64(used[i].Bytes)/float64(c.Bytes))
		}
	}
	return full
}

// loading counts the worker's loads in progress.
func loading(snap *residency.Snapshot, id string) int {
	n := 0
	for _, r := range snap.Replicas[id] {
		if r.State == placement.StateLoading.String() {
			n++
		}
	}
	return n
}

// spread orders two otherwise equal workers by rendezvous hashing of (model, worker): the
// order is deterministic, the same on every ext_proc replica, and differs between models.
func spread(m placement.ModelVersion, a, b residency.Worker) int {
	if c := cmp.Compare(rendezvous(m, b.ID), rendezvous(m, a.ID)); c != 0 {
		return c
	}
	return strings.Compare(a.ID, b.ID)
}

func rendezvous(m placement.ModelVersion, worker string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(m.String()))
	h.Write([]byte{0})
	h.Write([]byte(worker))
	return h.Sum64()
}

// Candidates lists the live workers that can hold t, best first:
//
//  1. workers where t is already loading (a Load there joins the load in progress);
//  2. workers with free room (capacity - used) for t's size; when the size is unknown, any
//     free byte counts as room;
//  3. fewest loads in progress;
//  4. spread: rendezvous hash of (model, worker), then id.
//
// Left out: workers of another runtime, workers whose whole capacity is below t's known
// size, workers without addresses. Workers where t is draining come last.
func Candidates(snap *residency.Snapshot, t Target) []residency.Worker {
	type cand struct {
		w                       residency.Worker
		joining, draining, room bool
		loads                   int
	}
	var cs []cand
	for id, w := range snap.Workers {
		if w.Runtime != t.Runtime || w.DataAddr == "" || w.MgmtAddr == "" {
			continue
		}
		f := t.Footprint(w)
		_, fits, possible := placement.Place(f, w.Capacity, w.Used)
		if t.Known() && !possible {
			continue // too big for this worker even empty, in some dimension
		}
		if w.Runtime == "triton" && holdsOtherVersion(snap.Replicas[id], t.Model) {
			continue // a Triton worker holds one version of a model at a time
		}
		rep, has := snap.Replicas[id][t.Model]
		cs = append(cs, cand{
			w:        w,
			joining:  has && rep.State == placement.StateLoading.String(),
			draining: has && rep.State == placement.StateDraining.String(),
			room:     (t.Known() && fits) || (!t.Known() && !w.Capacity.Minus(w.Used).Positive().IsZero()),
			loads:    loading(snap, id),
		})
	}
	slices.SortFunc(cs, func(a, b cand) int {
		switch {
		case a.draining != b.draining:
			return boolFirst(b.draining)
		case a.joining != b.joining:
			return boolFirst(a.joining)
		case a.room != b.room:
			return boolFirst(a.room)
		case a.loads != b.loads:
			return cmp.Compare(a.loads, b.loads)
		}
		return spread(t.Model, a.w, b.w)
	})
	out := make([]residency.Worker, len(cs))
	for i, c := range cs {
		out[i] = c.w
	}
	return out
}

// holdsOtherVersion reports whether reps include another version of m's model.
func holdsOtherVersion(reps map[placement.ModelVersion]residency.Replica, m placement.ModelVersion) bool {
	for k := range reps {
		if k.Name == m.Name && k.Version != m.Version {
			return true
		}
	}
	return false
}

// boolFirst orders a before b when first is true (a's flag set, b's not).
func boolFirst(first bool) int {
	if first {
		return -1
	}
	return 1
}
