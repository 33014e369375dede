// Package triton is the worker's backend for NVIDIA Triton Inference Server running in
// explicit model-control mode (modelserver does the repository calls): a model is a Triton
// repository entry (config.pbtxt and a version directory), pinned to the GPU the worker
// reserved its memory on; its memory and last use come from Triton's statistics extension.
package triton

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/proto/inference"
	"github.com/modelmesh/mesh/runtime-worker/agent"
	"github.com/modelmesh/mesh/runtime-worker/modelserver"
)

// New drives the Triton server cfg locates; Close releases the connection.
func New(cfg modelserver.Config, log *slog.Logger) (*modelserver.Backend, error) {
	return modelserver.New(cfg, Server{log: log}, log)
}

// Server is what Triton does its own way (modelserver.Server).
type Server struct{ log *slog.Logger }

var _ modelserver.Server = Server{}

// Runtime names the runtime in the worker's records.
func (Server) Runtime() string { return "triton" }

// Capabilities: Triton repository entries (a config.pbtxt for one of the server's
// backends), KServe's "triton" format; one version of a model at a time, since a model's
// versions share its name in Triton's repository.
func (Server) Capabilities() placement.Capabilities {
	return placement.Capabilities{OneVersion: true, Formats: []string{"triton"}}
}

// Install copies the Triton model directory at f.Path (its config.pbtxt and the directory
// of m's version) to dir. With f.GPU >= 0 the installed config.pbtxt is pinned to that GPU
// (pinToGPU). Only regular files and directories are copied.
func (Server) Install(m placement.ModelVersion, f agent.Files, dir string) error {
	if v, err := strconv.ParseUint(m.Version, 10, 64); err != nil || v == 0 {
		return fmt.Errorf("model versions on Triton are positive integers, not %q", m.Version)
	}
	if fi, err := os.Stat(filepath.Join(f.Path, "config.pbtxt")); err != nil || !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a Triton model directory: no config.pbtxt", f.Path)
	}
	if fi, err := os.Stat(filepath.Join(f.Path, m.Version)); err != nil || !fi.IsDir() {
		return fmt.Errorf("%s has no directory for version %s", f.Path, m.Version)
	}
	config, err := os.ReadFile(filepath.Join(f.Path, "config.pbtxt"))
	if err == nil {
		err = os.MkdirAll(dir, 0o755)
	}
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, "config.pbtxt"), pinToGPU(config, f.GPU), 0o644)
	}
	if err == nil {
		err = modelserver.CopyTree(filepath.Join(f.Path, m.Version), filepath.Join(dir, m.Version))
	}
	return err
}

// Measure loads the model and reads its memory from Triton's statistics (memory_usage, by
// device). Triton reports none for Python-backend models on CPU: their stub processes are
// measured instead (stubMemory).
func (s Server) Measure(ctx context.Context, c modelserver.Client, m placement.ModelVersion, dir string, load func(context.Context) error) (placement.Memory, error) {
	if err := load(ctx); err != nil {
		return placement.Memory{}, err
	}
	mem, err := memory(ctx, c, m)
	if err != nil {
		s.log.WarnContext(ctx, "triton model statistics", "model", m.String(), "error", err)
	}
	if mem.IsZero() {
		mem = placement.HostMemory(stubMemory(dir))
	}
	return mem, nil
}

// Poll reads every model's statistics: the last inference of each is its last use.
func (Server) Poll(ctx context.Context, c modelserver.Client) ([]modelserver.Use, error) {
	stats, err := Stats(ctx, c)
	if err != nil {
		return nil, err
	}
	var uses []modelserver.Use
	for _, u := range stats {
		if u.LastInferenceMs > 0 {
			uses = append(uses, modelserver.Use{Model: u.Model, Last: time.UnixMilli(int64(u.LastInferenceMs))})
		}
	}
	return uses, nil
}

// Prepare has nothing to do: Triton is ready once it answers.
func (Server) Prepare(context.Context, modelserver.Client, string) error { return nil }

// Usage is one model's use as Triton's statistics report it.
type Usage struct {
	Model placement.ModelVersion
	// LastInferenceMs is the Unix ms of the last inference; 0 if none.
	LastInferenceMs uint64
	InferenceCount  uint64
	// Memory is what Triton's memory_usage entries report, by device.
	Memory placement.Memory
}

// Stats reads every model's statistics from Triton.
func Stats(ctx context.Context, c modelserver.Client) ([]Usage, error) {
	resp, err := c.ModelStatistics(ctx, &inference.ModelStatisticsRequest{})
	if err != nil {
		return nil, fmt.Errorf("triton statistics: %w", err)
	}
	var out []Usage
	for _, s := range resp.GetModelStats() {
		out = append(out, Usage{Model: placement.ModelVersion{Name: s.GetName(), Version: s.GetVersion()},
			LastInferenceMs: s.GetLastInference(), InferenceCount: s.GetInferenceCount(), Memory: memoryOf(s.GetMemoryUsage())})
	}
	return out, nil
}

// memory is the model's memory as Triton reports it in its statistics' memory_usage: zero
// when Triton reports none, as it does for Python-backend models on CPU.
func memory(ctx context.Context, c modelserver.Client, m placement.ModelVersion) (placement.Memory, error) {
	resp, err := c.ModelStatistics(ctx, &inference.ModelStatisticsRequest{Name: m.Name, Version: m.Version})
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

// ErrNotYet reports a figure Triton has not measured yet; ask again in a few seconds.
var ErrNotYet = errors.New("not measured yet")
