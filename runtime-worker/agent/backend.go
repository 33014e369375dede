// Package agent keeps a worker's models: it loads them on request within a memory budget,
// evicts idle ones to make room (in placement's cost-aware order, and ahead of demand down to
// a free-memory watermark), drains them before unloading, and counts requests in flight.
// Runtimes plug in behind Backend; storage behind Fetcher.
package agent

import (
	"context"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/runtime-worker/storage"
	"github.com/modelmesh/mesh/runtime-worker/tensor"
)

// Backend is a model runtime. The agent calls Load and Unload at most once at a time per
// model version, never Unload for a version whose Load has not returned successfully, and
// Infer only between the two. Different model versions may be handled concurrently.
//
// The shape follows Triton's explicit model control: Load makes a model ready (repository
// load), Unload releases it (repository unload), and Loaded.Memory carries what the runtime
// measured (Triton's per-model memory usage by device, or resident-memory growth).
type Backend interface {
	// Runtime names the runtime in the worker's Redis record ("onnxruntime", "triton",
	// "mlserver").
	Runtime() string
	// Capabilities is what the runtime can do, advertised in the worker's record for
	// placement.
	Capabilities() placement.Capabilities
	// Load makes the model in f servable; it blocks until ready or ctx ends.
	Load(ctx context.Context, m placement.ModelVersion, f Files) (Loaded, error)
	// Unload releases everything Load took.
	Unload(ctx context.Context, m placement.ModelVersion) error
	// Infer runs one request. Runtimes that serve inference on their own ports (Triton)
	// answer with an error; the gateway routes to them directly.
	Infer(ctx context.Context, m placement.ModelVersion, req *tensor.Request) (*tensor.Response, error)
}

// Files are a model version's files as the agent hands them to a backend.
type Files struct {
	// Path is the local file or directory the files were fetched to.
	Path string
	// Format is the model's format as the registry names it ("onnx", "sklearn", ...), one of
	// the backend's Capabilities().Formats; empty when the caller named none.
	Format string
	// GPU is the GPU device the agent reserved memory on, or -1 for host memory only; a
	// runtime that can choose the device places the model there.
	GPU int
}

// Loaded describes a model the backend has just loaded.
type Loaded struct {
	Metadata tensor.Metadata
	// Memory is what the runtime measured the model to hold, by dimension; zero when it
	// cannot tell.
	Memory placement.Memory
}

// Fetcher brings model files to local disk and keeps them there until the Fetched is
// released; *storage.Store is the implementation.
type Fetcher interface {
	Fetch(ctx context.Context, loc storage.Location, m placement.ModelVersion) (storage.Fetched, error)
}
