// Package triton is the worker's backend for NVIDIA Triton Inference Server running in
// explicit model-control mode: the worker owns Triton's model repository directory, installs
// a model's files there, and loads, unloads and inspects it through Triton's repository and
// statistics extensions over gRPC. Inference does not pass through the worker: the gateway
// routes to Triton's own ports.
package triton

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/proto/inference"
	"github.com/modelmesh/mesh/runtime-worker/agent"
	"github.com/modelmesh/mesh/runtime-worker/tensor"
)

var _ agent.Backend = (*Backend)(nil)

// ErrNotYet reports a figure Triton has not measured yet; ask again in a few seconds.
var ErrNotYet = errors.New("not measured yet")

// ErrServedByTriton answers Infer: Triton serves inference on its own ports.
var ErrServedByTriton = errors.New("inference for Triton models is served by Triton, not the worker")

// Config locates the Triton server the worker drives.
type Config struct {
	// Repository is the directory Triton was started with as --model-repository. The worker
	// owns it: it installs and removes model directories there.
	Repository string
	// GRPCAddr is Triton's gRPC address (host:port).
	GRPCAddr string
}

// Backend drives one Triton server. Safe for concurrent use; the agent never loads or
// unloads one model version concurrently with itself.
type Backend struct {
	cfg    Config
	conn   *grpc.ClientConn
	client inference.GRPCInferenceServiceClient
	log    *slog.Logger

	mu sync.Mutex
	// held maps a model name to the version Triton holds: a Triton worker holds one version
	// of a model at a time (its version policy loads every version directory present).
	held map[string]string
	// loading names the models whose Load is under way; reconciliation leaves them alone.
	loading map[string]bool
}

// New connects to Triton lazily (the first call dials); Close releases the connection.
func New(cfg Config, log *slog.Logger) (*Backend, error) {
	if cfg.Repository == "" || cfg.GRPCAddr == "" {
		return nil, errors.New("triton: repository directory and gRPC address are required")
	}
	if err := os.MkdirAll(cfg.Repository, 0o755); err != nil {
		return nil, fmt.Errorf("triton repository: %w", err)
	}
	conn, err := grpc.NewClient(cfg.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		return nil, fmt.Errorf("triton at %s: %w", cfg.GRPCAddr, err)
	}
	return &Backend{cfg: cfg, conn: conn, client: inference.NewGRPCInferenceServiceClient(conn), log: log,
		held: map[string]string{}, loading: map[string]bool{}}, nil
}

// Close releases the connection to Triton.
func (b *Backend) Close() error { return b.conn.Close() }

// Runtime names the backend in the worker's records.
func (b *Backend) Runtime() string { return "triton" }

// Capabilities: ONNX models and Triton repository entries (a config.pbtxt for one of the
// server's backends), in KServe's format names; one version of a model at a time, since a
// model's versions share its name in Triton's repository.
func (b *Backend) Capabilities() placement.Capabilities {
	return placement.Capabilities{OneVersion: true, Formats: []string{"onnx", "triton"}}
}

// Live reports whether Triton answers.
func (b *Backend) Live(ctx context.Context) bool {
	r, err := b.client.ServerLive(ctx, &inference.ServerLiveRequest{})
	return err == nil && r.GetLive()
}

// Load installs the Triton model directory at path (its config.pbtxt and the directory of
// m's version) as m.Name in the repository and has Triton load it. Triton's own reason is in
// the error when it refuses the model; the repository is left as it was. With gpu >= 0 and a
// config.pbtxt that leaves instance placement to Triton, the installed config puts the
// model's instance on that GPU (see pinToGPU).
func (b *Backend) Load(ctx context.Context, m placement.ModelVersion, path string, gpu int) (agent.Loaded, error) {
	if v, err := strconv.ParseUint(m.Version, 10, 64); err != nil || v == 0 {
		return agent.Loaded{}, fmt.Errorf("model versions on Triton are positive integers, not %q", m.Version)
	}
	b.mu.Lock()
	other, busy := b.held[m.Name]
	if !busy {
		b.held[m.Name] = m.Version // claimed until the load ends
		b.loading[m.Name] = true
	}
	b.mu.Unlock()
	if busy {
		return agent.Loaded{}, fmt.Errorf("this Triton worker holds version %s of %s; one version per model", other, m.Name)
	}
	loaded, err := b.load(ctx, m, path, gpu)
	b.mu.Lock()
	delete(b.loading, m.Name)
	if err != nil {
		delete(b.held, m.Name)
	}
	b.mu.Unlock()
	return loaded, err
}

func (b *Backend) load(ctx context.Context, m placement.ModelVersion, path string, gpu int) (agent.Loaded, error) {
	dst := filepath.Join(b.cfg.Repository, m.Name)
	if err := install(path, dst, m.Version, gpu); err != nil {
		return agent.Loaded{}, err
	}
	if _, err := b.client.RepositoryModelLoad(ctx, &inference.RepositoryModelLoadRequest{ModelName: m.Name}); err != nil {
		// Triton goes on with a load whose caller gave up (a timeout): unload it, or it holds
		// memory nobody counts.
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		b.client.RepositoryModelUnload(uctx, &inference.RepositoryModelUnloadRequest{ModelName: m.Name})
		cancel()
		os.RemoveAll(dst)
		return agent.Loaded{}, fmt.Errorf("triton refused %s: %s", m, status.Convert(err).Message())
	}
	meta, err := b.metadata(ctx, m)
	if err != nil {
		b.unload(context.WithoutCancel(ctx), m)
		return agent.Loaded{}, err
	}
	mem, err := b.memory(ctx, m)
	if err != nil {
		b.log.WarnContext(ctx, "triton model statistics", "model", m.String(), "error", err)
	}
	if mem.IsZero() {
		mem = placement.HostMemory(stubMemory(dst))
	}
	return agent.Loaded{Metadata: meta, Memory: mem}, nil
}

// Unload has Triton unload the model and removes its directory from the repository.
func (b *Backend) Unload(ctx context.Context, m placement.ModelVersion) error {
	b.mu.Lock()
	delete(b.held, m.Name)
	b.mu.Unlock()
	return b.unload(ctx, m)
}

func (b *Backend) unload(ctx context.Context, m placement.ModelVersion) error {
	_, err := b.client.RepositoryModelUnload(ctx, &inference.RepositoryModelUnloadRequest{ModelName: m.Name})
	if rerr := os.RemoveAll(filepath.Join(b.cfg.Repository, m.Name)); err == nil {
		err = rerr
	}
	if err != nil {
		return fmt.Errorf("unload %s from triton: %w", m, err)
	}
	return nil
}

// Infer is not served by the worker for Triton models.
func (b *Backend) Infer(context.Context, placement.ModelVersion, *tensor.Request) (*tensor.Response, error) {
	return nil, ErrServedByTriton
}

// Reconcile brings Triton's loaded set in line with what the worker holds (nothing, at
// start): every model Triton has loaded that the worker does not hold is unloaded and its
// directory removed, so no orphan holds memory. It returns the names unloaded.
func (b *Backend) Reconcile(ctx context.Context) ([]string, error) {
	idx, err := b.client.RepositoryIndex(ctx, &inference.RepositoryIndexRequest{})
	if err != nil {
		return nil, fmt.Errorf("triton repository index: %w", err)
	}
	b.mu.Lock()
	held := make(map[string]bool, len(b.held)+len(b.loading))
	for n := range b.held {
		held[n] = true
	}
	for n := range b.loading {
		held[n] = true
	}
	b.mu.Unlock()
	var orphans []string
	seen := map[string]bool{}
	for _, mi := range idx.GetModels() {
		if held[mi.GetName()] || seen[mi.GetName()] {
			continue
		}
		seen[mi.GetName()] = true
		if _, err := b.client.RepositoryModelUnload(ctx, &inference.RepositoryModelUnloadRequest{ModelName: mi.GetName()}); err != nil {
			return orphans, fmt.Errorf("unload orphan %s: %w", mi.GetName(), err)
		}
		if err := os.RemoveAll(filepath.Join(b.cfg.Repository, mi.GetName())); err != nil {
			return orphans, err
		}
		orphans = append(orphans, mi.GetName())
	}
	return orphans, nil
}

// Usage is one model's use as Triton's statistics report it.
type Usage struct {
	Model placement.ModelVersion
	// LastInferenceMs is the Unix ms of the last inference; 0 if none.
	LastInferenceMs uint64
	InferenceCount  uint64
	// Memory is what Triton's memory_usage entries report, by device.
	Memory placement.Memory
}

// Stats reads every model's statistics: the least-recently-used order comes from here.
func (b *Backend) Stats(ctx context.Context) ([]Usage, error) {
	resp, err := b.client.ModelStatistics(ctx, &inference.ModelStatisticsRequest{})
	if err != nil {
		return nil, fmt.Errorf("triton statistics: %w", err)
	}
	var out []Usage
	for _, s := range resp.GetModelStats() {
		u := Usage{Model: placement.ModelVersion{Name: s.GetName(), Version: s.GetVersion()},
			LastInferenceMs: s.GetLastInference(), InferenceCount: s.GetInferenceCount()}
		u.Memory = memoryOf(s.GetMemoryUsage())
		out = append(out, u)
	}
	return out, nil
}

// memory is the model's memory as Triton reports it in its statistics' memory_usage: zero
// when Triton reports none, as it does for Python-backend models on CPU; Load then measures
// the model's stub processes (stubMemory).
func (b *Backend) memory(ctx context.Context, m placement.ModelVersion) (placement.Memory, error) {
	resp, err := b.client.ModelStatistics(ctx, &inference.ModelStatisticsRequest{Name: m.Name, Version: m.Version})
	if err != nil {
		return placement.Memory{}, err
	}
	var mem placement.Memory
	for _, s := range resp.GetModelStats() {
		mem = mem.Plus(memoryOf(s.GetMemoryUsage()))
	}
	return mem, nil
}

// memoryOf turns memory_usage entries into memory by dimension: "GPU" entries onto their
// device id, "CPU" and "CPU_PINNED" (page-locked host memory) onto host memory. Entries of
// another type, or with a device id out of range, count as host memory rather than not at
// all.
func memoryOf(usage []*inference.MemoryUsage) placement.Memory {
	var mem placement.Memory
	for _, u := range usage {
		n := int64(min(u.GetByteSize(), math.MaxInt64/4))
		if u.GetType() == "GPU" && u.GetId() >= 0 && u.GetId() < maxGPUs {
			at := placement.Memory{GPU: make([]int64, u.GetId()+1)}
			at.GPU[u.GetId()] = n
			mem = mem.Plus(at)
			continue
		}
		mem = mem.Plus(placement.HostMemory(n))
	}
	return mem
}

// maxGPUs bounds the device ids taken from Triton; no node has more.
const maxGPUs = 64

func (b *Backend) metadata(ctx context.Context, m placement.ModelVersion) (tensor.Metadata, error) {
	md, err := b.client.ModelMetadata(ctx, &inference.ModelMetadataRequest{Name: m.Name, Version: m.Version})
	if err != nil {
		return tensor.Metadata{}, fmt.Errorf("triton metadata of %s: %s", m, status.Convert(err).Message())
	}
	meta := tensor.Metadata{Platform: md.GetPlatform()}
	for _, t := range md.GetInputs() {
		meta.Inputs = append(meta.Inputs, tensor.Spec{Name: t.GetName(), Datatype: tensor.Datatype(t.GetDatatype()), Shape: t.GetShape()})
	}
	for _, t := range md.GetOutputs() {
		meta.Outputs = append(meta.Outputs, tensor.Spec{Name: t.GetName(), Datatype: tensor.Datatype(t.GetDatatype()), Shape: t.GetShape()})
	}
	return meta, nil
}

// install copies a Triton model directory (config.pbtxt and the version's directory) from
// src to dst, replacing dst atomically. Only regular files and directories are copied. With
// gpu >= 0 the installed config.pbtxt is pinned to that GPU (pinToGPU).
func install(src, dst, version string, gpu int) error {
	if fi, err := os.Stat(filepath.Join(src, "config.pbtxt")); err != nil || !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a Triton model directory: no config.pbtxt", src)
	}
	if fi, err := os.Stat(filepath.Join(src, version)); err != nil || !fi.IsDir() {
		return fmt.Errorf("%s has no directory for version %s", src, version)
	}
	tmp := dst + ".installing"
	os.RemoveAll(tmp)
	config, err := os.ReadFile(filepath.Join(src, "config.pbtxt"))
	if err == nil {
		err = os.MkdirAll(tmp, 0o755)
	}
	if err == nil {
		err = os.WriteFile(filepath.Join(tmp, "config.pbtxt"), pinToGPU(config, gpu), 0o644)
	}
	if err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("install %s: %w", filepath.Base(dst), err)
	}
	// os.CopyFS copies a symlink as a link, which could lead out of the model's files;
	// behind noLinks it refuses one, as it refuses any other special file.
	err = os.CopyFS(filepath.Join(tmp, version), noLinks{os.DirFS(filepath.Join(src, version))})
	if errors.Is(err, fs.ErrInvalid) {
		err = fmt.Errorf("%w: only regular files are installed", err)
	}
	if err == nil {
		os.RemoveAll(dst)
		err = os.Rename(tmp, dst)
	}
	if err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("install %s: %w", filepath.Base(dst), err)
	}
	return nil
}

// pinToGPU places a model on GPU device gpu, where the worker reserved its memory, by adding
// an instance group of kind KIND_GPU on that device to its config.pbtxt. A config with an
// instance_group of its own is left alone: its author chose the placement (a CPU instance, or
// several GPUs), and the memory Triton measures after the load is counted where it landed.
// So is an ensemble, which has no instances (Triton refuses an instance_group on one); its
// steps are models of their own. gpu < 0 leaves the config unchanged.
func pinToGPU(config []byte, gpu int) []byte {
	if gpu < 0 {
		return config
	}
	for _, line := range strings.Split(string(config), "\n") {
		code, _, _ := strings.Cut(line, "#") // text-format comments run to the end of the line
		if strings.Contains(code, "instance_group") || strings.Contains(code, "platform") && strings.Contains(code, `"ensemble"`) {
			return config
		}
	}
	out := append([]byte{}, config...)
	if len(out) > 0 && out[len(out)-1] != '\n' {
		out = append(out, '\n')
	}
	return fmt.Appendf(out, "# placed by mesh-worker on the GPU where it reserved the model's memory\ninstance_group [ { kind: KIND_GPU, count: 1, gpus: [ %d ] } ]\n", gpu)
}

// noLinks is a file system whose symbolic links cannot be read: os.CopyFS fails on one
// instead of copying it.
type noLinks struct{ fs.FS }

// downAfter is how many polls in a row must fail before Triton counts as gone.
const downAfter = 3

// Watch polls Triton every interval until ctx ends. While Triton answers, it reports each
// model's last inference to touch, so the least-recently-used order comes from Triton's own
// statistics (inference does not pass through the worker). When Triton stops answering, it
// (downAfter polls in a row) forgets what Triton held and calls lost once; when Triton answers again it reconciles
// (removing what a restarted Triton or a dead worker left behind) before reporting again.
// Returns nil when ctx ends.
func (b *Backend) Watch(ctx context.Context, interval time.Duration, touch func(placement.ModelVersion, time.Time), lost func()) error {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	// Start as if Triton had just come back: the first answer reconciles, so models a
	// previous worker left loaded are unloaded before anything is reported.
	down := true
	failures := 0
	for {
		pctx, cancel := context.WithTimeout(ctx, interval)
		stats, err := b.Stats(pctx)
		cancel()
		if err != nil {
			failures++
		} else {
			failures = 0
		}
		switch {
		case err != nil && failures < downAfter:
			// One slow or failed poll (a busy Triton, a blip) is not a dead Triton.
		case err != nil && ctx.Err() == nil && !down: // up → down
			down = true
			b.mu.Lock()
			kept := map[string]string{}
			for n := range b.loading {
				kept[n] = b.held[n] // a load under way keeps its claim; it ends on its own
			}
			b.held = kept
			b.mu.Unlock()
			b.log.ErrorContext(ctx, "triton stopped answering; its models are gone from this worker", "error", err)
			lost()
		case err == nil && down:
			orphans, err := b.Reconcile(ctx)
			if err != nil {
				b.log.WarnContext(ctx, "reconcile triton after it came back", "error", err)
				break // still down for the mesh; try again at the next tick
			}
			b.log.InfoContext(ctx, "triton answers again", "orphans_unloaded", len(orphans))
			down = false
		case err == nil:
			for _, u := range stats {
				if u.LastInferenceMs > 0 {
					touch(u.Model, time.UnixMilli(int64(u.LastInferenceMs)))
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// Capacity reads the memory Triton can give models from its metrics endpoint (metricsURL,
// for example http://127.0.0.1:8002/metrics), less reserve per dimension (for CUDA
// contexts, Triton itself and the stubs): one budget per GPU from nv_gpu_memory_total_bytes,
// in the order Triton lists its GPUs; on a server without GPUs, a host budget from
// nv_cpu_memory_total_bytes. It reports which metric it used.
func Capacity(ctx context.Context, metricsURL string, reserve int64) (placement.Memory, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, metricsURL, nil)
	if err != nil {
		return placement.Memory{}, "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return placement.Memory{}, "", fmt.Errorf("triton metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return placement.Memory{}, "", fmt.Errorf("triton metrics: %s", resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return placement.Memory{}, "", fmt.Errorf("triton metrics: %w", err)
	}
	for _, metric := range []string{"nv_gpu_memory_total_bytes", "nv_cpu_memory_total_bytes"} {
		samples := metricSamples(string(body), metric)
		if len(samples) == 0 {
			continue
		}
		budgets := make([]int64, len(samples))
		for i, total := range samples {
			if total == 0 {
				// Triton samples memory every --metrics-interval-ms; it reads 0 until the first.
				return placement.Memory{}, metric, fmt.Errorf("%s not sampled yet: %w", metric, ErrNotYet)
			}
			if total-reserve <= 0 {
				return placement.Memory{}, metric, fmt.Errorf("%s is %d bytes, not more than the %d-byte reserve", metric, total, reserve)
			}
			budgets[i] = total - reserve
		}
		if metric == "nv_cpu_memory_total_bytes" {
			return placement.HostMemory(budgets[0]), metric, nil
		}
		return placement.Memory{GPU: budgets}, metric, nil
	}
	return placement.Memory{}, "", errors.New("triton metrics report neither GPU nor CPU memory")
}

// metricSamples lists the samples of a metric family in Prometheus text format, in order.
func metricSamples(text, name string) []int64 {
	var out []int64
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		fields := strings.Fields(line)
		v, err := strconv.ParseFloat(fields[len(fields)-1], 64)
		if err != nil || v < 0 || v > math.MaxInt64/2 {
			continue
		}
		out = append(out, int64(v))
	}
	return out
}
