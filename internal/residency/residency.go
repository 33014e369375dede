// Package residency is the mesh's record in Redis of which worker holds which model version.
// Workers write it (Reporter); ext_proc and the control plane read it. docs/redis.md
// describes every key and its invariants.
package residency

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/redis/go-redis/v9"

	"github.com/modelmesh/mesh/internal/placement"
)

// Keys names the Redis keys under a prefix, so several meshes can share one Redis.
type Keys struct{ Prefix string }

// Worker is the worker's lease: a hash that expires unless heartbeats refresh it.
func (k Keys) Worker(id string) string { return k.Prefix + ":worker:" + id }

// Replicas is the hash of the worker's replicas, field "name:version"; it expires with the
// worker's lease.
func (k Keys) Replicas(id string) string { return k.Prefix + ":replicas:" + id }

// Workers is the sorted set of worker ids scored by lease expiry (Unix ms).
func (k Keys) Workers() string { return k.Prefix + ":workers" }

// Sizes is the hash of measured model sizes in bytes, field "name:version".
func (k Keys) Sizes() string { return k.Prefix + ":sizes" }

// Registry is the string holding the published model registry (canonical JSON).
func (k Keys) Registry() string { return k.Prefix + ":registry" }

// Lock is the string holding m's fleet-wide load lock, "<token> <generation>" with a PX
// expiry: the ext_proc replica loading m holds it (extproc.Locks).
func (k Keys) Lock(m placement.ModelVersion) string { return k.Prefix + ":lock:" + m.String() }

// Fence is the counter of m's lock acquisitions, INCR at each: the holder's fencing
// generation.
func (k Keys) Fence(m placement.ModelVersion) string { return k.Prefix + ":fence:" + m.String() }

// Routed is the set of model versions ("name:version") that the gateways of one control
// plane route to the worker, by their acknowledged configuration; each control plane writes
// its own after each push, since the gateways of two replicas may briefly disagree.
func (k Keys) Routed(id, controlPlane string) string {
	return k.Prefix + ":routed:" + id + ":" + controlPlane
}

// ControlPlanes is the sorted set of control plane ids scored by the end of their lease (Unix
// ms); each control plane renews its own while it runs.
func (k Keys) ControlPlanes() string { return k.Prefix + ":controlplanes" }

// Failures is the hash of the last failed load of each model version, field
// "name:version" → JSON Failure; ext_proc writes it when a cold load fails and deletes the
// field when one succeeds.
func (k Keys) Failures() string { return k.Prefix + ":failures" }

// Events is the channel on which every change is published as an Event.
func (k Keys) Events() string { return k.Prefix + ":events" }

// Worker is the content of a worker's lease hash.
type Worker struct {
	ID       string
	DataAddr string
	// GRPCAddr is where gRPC inference goes when it is not DataAddr (Triton serves REST and
	// gRPC on two ports); empty means DataAddr.
	GRPCAddr string
	MgmtAddr string
	Runtime  string
	// Caps is what the worker's runtime can do, as placement reads it.
	Caps placement.Capabilities
	// Capacity is the worker's budget and Used what its replicas and loads hold, by
	// dimension (host memory, each GPU).
	Capacity      placement.Memory
	Used          placement.Memory
	Labels        map[string]string
	StartedUnixMs int64
}

// fields renders the worker for HSET.
func (w Worker) fields(heartbeatMs int64) map[string]any {
	labels, _ := json.Marshal(w.Labels) // a map[string]string always marshals
	capacity, _ := json.Marshal(w.Capacity)
	caps, _ := json.Marshal(w.Caps) // plain struct
	used, _ := json.Marshal(w.Used)
	return map[string]any{
		"id": w.ID, "data_addr": w.DataAddr, "grpc_addr": w.GRPCAddr, "mgmt_addr": w.MgmtAddr, "runtime": w.Runtime,
		"capacity": string(capacity), "used": string(used), "labels": string(labels), "capabilities": string(caps),
		// Totals, as workers wrote them before memory had dimensions, for readers of that age
		// during a rolling upgrade.
		"capacity_bytes": w.Capacity.Total(), "used_bytes": w.Used.Total(),
		"started_unix_ms": w.StartedUnixMs, "heartbeat_unix_ms": heartbeatMs,
	}
}

// GRPC is the worker's gRPC inference address.
func (w Worker) GRPC() string {
	if w.GRPCAddr != "" {
		return w.GRPCAddr
	}
	return w.DataAddr
}

// ParseWorker reads a lease hash as HGETALL returns it.
func ParseWorker(h map[string]string) Worker {
	w := Worker{ID: h["id"], DataAddr: h["data_addr"], GRPCAddr: h["grpc_addr"], MgmtAddr: h["mgmt_addr"], Runtime: h["runtime"]}
	// A worker of an older version wrote totals only: they read as host memory. Missing or
	// malformed memory reads as none: such a worker gets no loads until its next write.
	for _, f := range []struct {
		json, total string
		into        *placement.Memory
	}{{"capacity", "capacity_bytes", &w.Capacity}, {"used", "used_bytes", &w.Used}} {
		if err := json.Unmarshal([]byte(h[f.json]), f.into); err != nil {
			n, _ := strconv.ParseInt(h[f.total], 10, 64)
			*f.into = placement.HostMemory(n)
		}
	}
	if err := json.Unmarshal([]byte(h["capabilities"]), &w.Caps); err != nil {
		// A worker of an older version advertised no capabilities; of its runtimes only
		// Triton held one version of a model at a time, and each read its own format.
		w.Caps = placement.Capabilities{OneVersion: w.Runtime == "triton", Formats: legacyFormats[w.Runtime]}
	}
	w.StartedUnixMs, _ = strconv.ParseInt(h["started_unix_ms"], 10, 64)
	_ = json.Unmarshal([]byte(h["labels"]), &w.Labels) // missing labels read as none
	return w
}

// legacyFormats are the formats of the runtimes workers ran before they advertised
// capabilities.
var legacyFormats = map[string][]string{"onnxruntime": {"onnx"}, "triton": {"triton"}}

// Replica is one field of a worker's replicas hash, JSON-encoded.
type Replica struct {
	State placement.State `json:"state"`
	// Bytes is Memory's dimensions together.
	Bytes       int64            `json:"bytes"`
	Memory      placement.Memory `json:"memory"`
	SizeSource  string           `json:"size_source"`
	SinceUnixMs int64            `json:"since_unix_ms"`
	// Extra: a copy added for demand (agent.Spec.Extra), first to go under memory pressure.
	Extra bool `json:"extra,omitempty"`
	// Demand is what the replica serves, as its worker measured it at the write.
	Demand placement.Demand `json:"demand,omitzero"`
}

// Failure is a model version's last failed load, as the cold path saw it.
type Failure struct {
	// Reason is ModelMesh's word for it: ModelLoadFailed (the worker or its files),
	// RuntimeUnhealthy (no live worker of its runtime could take it).
	Reason  string `json:"reason"`
	Message string `json:"message"`
	// Worker is where it failed, when a worker was tried.
	Worker string `json:"worker,omitempty"`
	UnixMs int64  `json:"unix_ms"`
}

// RecordLoad writes the outcome of a cold load of m: failure, or nil for success (the
// version's last failure is then forgotten), and publishes a change event so that readers
// (the control plane's status) see it without waiting for a resync.
func RecordLoad(ctx context.Context, rdb redis.UniversalClient, keys Keys, m placement.ModelVersion, failure *Failure) error {
	var err error
	if failure == nil {
		var n int64
		if n, err = rdb.HDel(ctx, keys.Failures(), m.String()).Result(); err == nil && n == 0 {
			return nil // nothing was recorded: nothing changed
		}
	} else {
		b, _ := json.Marshal(failure) // plain struct
		err = rdb.HSet(ctx, keys.Failures(), m.String(), string(b)).Err()
	}
	if err != nil {
		return fmt.Errorf("record load of %s: %w", m, err)
	}
	b, _ := json.Marshal(Event{Kind: "failure", Model: m.String()}) // plain struct
	return rdb.Publish(ctx, keys.Events(), b).Err()
}

// Event is published on the events channel. Seq grows by one per event of one worker epoch
// (a worker process's start time), so a reader that sees a gap knows it missed one and
// resyncs by reading the keys.
type Event struct {
	Worker string `json:"worker"`
	Epoch  int64  `json:"epoch"`
	Seq    uint64 `json:"seq"`
	// Kind is "replica" for a replica's change, "worker" when the whole worker record was
	// (re)written or removed, "failure" when a model version's failure record changed.
	Kind string `json:"kind"`
	// Model is "name:version" for replica events.
	Model string `json:"model,omitempty"`
	// State is the replica's new state, or "" when it (or the worker) is gone.
	State string `json:"state"`
}
