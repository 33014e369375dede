package server

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/proto/meshv1"
	"github.com/modelmesh/mesh/runtime-worker/agent"
	"github.com/modelmesh/mesh/runtime-worker/storage"
)

// Agent is what the management API needs from the worker's agent.
type Agent interface {
	Load(ctx context.Context, spec agent.Spec) (agent.LoadResult, error)
	Unload(ctx context.Context, m placement.ModelVersion) error
	Drain(ctx context.Context, m placement.ModelVersion) error
	Snapshot() ([]agent.Replica, placement.Memory)
	Capacity() placement.Memory
}

// DiskTier reports the disk tier of fetched model files; *storage.Store is one.
type DiskTier interface {
	Usage() storage.Usage
}

// Management serves meshv1.WorkerService. It must listen only on the management port.
type Management struct {
	meshv1.UnimplementedWorkerServiceServer
	agent    Agent
	disk     DiskTier
	workerID string
}

var _ meshv1.WorkerServiceServer = (*Management)(nil)

// NewManagement returns the management API of worker workerID; disk may be nil.
func NewManagement(a Agent, disk DiskTier, workerID string) *Management {
	return &Management{agent: a, disk: disk, workerID: workerID}
}

// Load implements meshv1.
func (s *Management) Load(ctx context.Context, r *meshv1.LoadRequest) (*meshv1.LoadResponse, error) {
	res, err := s.agent.Load(ctx, agent.Spec{
		Model: modelOf(r.GetModel()), DeclaredBytes: r.GetMemoryBytes(),
		Storage: storage.Location{URI: r.GetStorageUri(), Key: r.GetStorageKey(), Bucket: r.GetStorageBucket(),
			Path: r.GetStoragePath(), SHA256: r.GetSha256()},
		Learned: placement.Footprint{Host: r.GetLearnedHostBytes(), GPU: r.GetLearnedGpuBytes()}, Pinned: r.GetPinned(),
		Extra: r.GetExtra(), Format: r.GetFormat(),
	})
	if span := trace.SpanFromContext(ctx); span.IsRecording() {
		span.SetAttributes(attribute.String("mesh.model", r.GetModel().GetName()), attribute.String("mesh.version", r.GetModel().GetVersion()),
			attribute.Bool("mesh.loaded", res.Loaded), attribute.Int("mesh.evicted", len(res.Evicted)))
	}
	if err != nil {
		return nil, grpcError(err)
	}
	out := &meshv1.LoadResponse{Replica: replicaProto(res.Replica), Loaded: res.Loaded}
	for _, m := range res.Evicted {
		out.Evicted = append(out.Evicted, refOf(m))
	}
	return out, nil
}

// Unload implements meshv1.
func (s *Management) Unload(ctx context.Context, r *meshv1.UnloadRequest) (*meshv1.UnloadResponse, error) {
	if err := s.agent.Unload(ctx, modelOf(r.GetModel())); err != nil {
		return nil, grpcError(err)
	}
	return &meshv1.UnloadResponse{}, nil
}

// Drain implements meshv1.
func (s *Management) Drain(ctx context.Context, r *meshv1.DrainRequest) (*meshv1.DrainResponse, error) {
	if err := s.agent.Drain(ctx, modelOf(r.GetModel())); err != nil {
		return nil, grpcError(err)
	}
	return &meshv1.DrainResponse{}, nil
}

// List implements meshv1.
func (s *Management) List(context.Context, *meshv1.ListRequest) (*meshv1.ListResponse, error) {
	replicas, used := s.agent.Snapshot()
	out := &meshv1.ListResponse{WorkerId: s.workerID, Capacity: memoryProto(s.agent.Capacity()), Used: memoryProto(used)}
	for _, r := range replicas {
		out.Replicas = append(out.Replicas, replicaProto(r))
	}
	if s.disk != nil {
		u := s.disk.Usage()
		out.DiskCache = &meshv1.DiskCache{CapacityBytes: u.Capacity, UsedBytes: u.Used}
		for _, e := range u.Entries {
			out.DiskCache.Entries = append(out.DiskCache.Entries, &meshv1.DiskCacheEntry{
				Source: e.Source, Bytes: e.Bytes, LastUsedUnixMs: e.LastUsed.UnixMilli(), InUse: e.InUse})
		}
	}
	return out, nil
}

func modelOf(r *meshv1.ModelRef) placement.ModelVersion {
	return placement.ModelVersion{Name: r.GetName(), Version: r.GetVersion()}
}

func refOf(m placement.ModelVersion) *meshv1.ModelRef {
	return &meshv1.ModelRef{Name: m.Name, Version: m.Version}
}

func replicaProto(r agent.Replica) *meshv1.Replica {
	var lastUsed int64
	if !r.LastUsed.IsZero() {
		lastUsed = r.LastUsed.UnixMilli()
	}
	return &meshv1.Replica{
		Model: refOf(r.Model), State: stateProto(r.State), MemoryBytes: r.Memory.Total(), Memory: memoryProto(r.Memory), SizeSource: string(r.Source),
		SinceUnixMs: r.Since.UnixMilli(), LastUsedUnixMs: lastUsed, InFlight: int64(r.InFlight), Pinned: r.Pinned,
		Extra: r.Extra, DemandInFlight: r.Demand.InFlight, DemandQueued: r.Demand.Queued, DemandRate: r.Demand.Rate,
	}
}

func memoryProto(m placement.Memory) *meshv1.Memory {
	return &meshv1.Memory{HostBytes: m.Host, GpuBytes: m.GPU}
}

func stateProto(s placement.State) meshv1.ReplicaState {
	switch s {
	case placement.StateLoading:
		return meshv1.ReplicaState_REPLICA_STATE_LOADING
	case placement.StateReady:
		return meshv1.ReplicaState_REPLICA_STATE_READY
	case placement.StateDraining:
		return meshv1.ReplicaState_REPLICA_STATE_DRAINING
	}
	return meshv1.ReplicaState_REPLICA_STATE_UNSPECIFIED
}
