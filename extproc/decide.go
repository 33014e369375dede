package extproc

import (
	"fmt"
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
	Model placement.ModelVersion
	// Runtime and Format are the registry's: a worker must read Format and, when Runtime is
	// set, run it.
	Runtime, Format string
	// Files says where the worker fetches the model from.
	Files registry.Files
	// Size is the registry's declared size and the footprint learned at an earlier load.
	Size   placement.Size
	Pinned bool
	// Extra asks for a copy beside the model's other replicas, for its demand (the scaler):
	// the worker takes it only into free memory and evicts it first.
	Extra bool
}

// load is t as placement sees it.
func (t Target) load() placement.Load {
	return placement.Load{Model: t.Model, Runtime: t.Runtime, Format: t.Format, Size: t.Size}
}

// describeRuntime says which workers can hold t: "that reads format sklearn", "with runtime
// onnxruntime (format onnx)".
func (t Target) describeRuntime() string {
	switch {
	case t.Runtime == "":
		return "that reads format " + t.Format
	case t.Format == "":
		return "with runtime " + t.Runtime
	}
	return fmt.Sprintf("with runtime %s (format %s)", t.Runtime, t.Format)
}

func (t Target) describeSize() string {
	if t.Size.Declared > 0 {
		return fmt.Sprintf("%d bytes declared", t.Size.Declared)
	}
	return fmt.Sprintf("host %d and GPU %d bytes measured", t.Size.Learned.Host, t.Size.Learned.GPU)
}

// targetOf is the load of version v of model, with the size the mesh learned for it.
func targetOf(snap *residency.Snapshot, model registry.Model, v registry.Version) Target {
	m := placement.ModelVersion{Name: model.Name, Version: v.Version}
	return Target{Model: m, Runtime: model.Runtime, Format: model.Format, Files: v.Files, Pinned: model.Pinned,
		Size: placement.Size{Declared: v.MemoryBytes, Learned: snap.Sizes[m]}}
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
	t := targetOf(snap, model, v)
	if w, ok := ReadyWorker(snap, m); ok {
		return Decision{Kind: Route, Outcome: "routed_ready", Model: m, Endpoint: req.Endpoint(w), Worker: w, Target: t}, nil
	}
	cands := Candidates(snap, t)
	if len(cands) == 0 {
		if t.Size.Known() {
			return Decision{}, errorf(ErrNoWorker, "no live worker %s and capacity for model %s (%s)", t.describeRuntime(), m, t.describeSize())
		}
		return Decision{}, errorf(ErrNoWorker, "no live worker %s for model %s", t.describeRuntime(), m)
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

// ReadyWorker is the worker to route m to among those holding it ready (placement.Ready).
func ReadyWorker(snap *residency.Snapshot, m placement.ModelVersion) (residency.Worker, bool) {
	n, ok := placement.Ready(snap.Nodes(), m)
	return snap.Workers[n.ID], ok
}

// Candidates lists the live workers that can hold t, best first (placement.Candidates).
func Candidates(snap *residency.Snapshot, t Target) []residency.Worker {
	return workersOf(snap, placement.Candidates(snap.Nodes(), t.load()))
}

// workersOf are the snapshot's records of nodes, in order.
func workersOf(snap *residency.Snapshot, nodes []placement.Node) []residency.Worker {
	out := make([]residency.Worker, len(nodes))
	for i, n := range nodes {
		out[i] = snap.Workers[n.ID]
	}
	return out
}
