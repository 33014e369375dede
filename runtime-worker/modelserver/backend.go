// Package modelserver drives a model server that runs beside the worker and serves
// inference on its own ports (Triton, MLServer), through the KServe V2 repository extension
// over gRPC: the worker owns the server's model repository directory, installs a model's
// files there, has the server load and unload it by name, reconciles the server's loaded set
// with what the worker holds, and forgets the models when the server dies. What differs
// between servers (the files a model is installed as, how its memory is measured, how its
// use is read) is a Server; Backend does the rest.
package modelserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/proto/inference"
	"github.com/modelmesh/mesh/runtime-worker/agent"
	"github.com/modelmesh/mesh/runtime-worker/tensor"
)

var _ agent.Backend = (*Backend)(nil)

// ErrServedByServer answers Infer: the model server serves inference on its own ports.
var ErrServedByServer = errors.New("inference for this runtime's models is served by its model server, not the worker")

// Client is the gRPC client of the model server: KServe V2 inference with the repository
// extension.
type Client = inference.GRPCInferenceServiceClient

// Server is what one kind of model server does its own way.
type Server interface {
	// Runtime names the runtime in the worker's records ("triton", "mlserver").
	Runtime() string
	// Capabilities are what the server reads (the agent loads only models of its formats).
	Capabilities() placement.Capabilities
	// Install writes m's files into dir, a new directory the server will find the model in
	// by its name. The repository is not touched; Backend moves dir into place.
	Install(m placement.ModelVersion, f agent.Files, dir string) error
	// Measure runs load, the server's repository load of the model installed at dir, and
	// returns the memory the model holds once loaded: zero when the server cannot tell (the
	// agent then counts its estimate). A load error is returned as it is.
	Measure(ctx context.Context, c Client, m placement.ModelVersion, dir string, load func(context.Context) error) (placement.Memory, error)
	// Poll asks whether the server answers, and when each model it serves was last used as
	// far as it can tell. An error means the server did not answer.
	Poll(ctx context.Context, c Client) ([]Use, error)
	// Prepare readies a server that has just started answering (at the worker's start, or
	// after the server restarted), after orphans are unloaded and before it is reported up.
	Prepare(ctx context.Context, c Client, repository string) error
}

// Use is the last use of a model the server reported; an empty Version means the version
// the worker holds.
type Use struct {
	Model placement.ModelVersion
	Last  time.Time
}

// Config locates the model server the worker drives.
type Config struct {
	// Repository is the server's model repository directory. The worker owns it: it
	// installs and removes model directories there.
	Repository string
	// GRPCAddr is the server's gRPC address (host:port).
	GRPCAddr string
}

// Backend drives one model server. Safe for concurrent use; the agent never loads or
// unloads one model version concurrently with itself.
type Backend struct {
	cfg    Config
	server Server
	conn   *grpc.ClientConn
	client Client
	log    *slog.Logger

	mu sync.Mutex
	// held maps a model name to the version the server holds: both servers keep one
	// version of a model per name (Triton's version policy loads every version directory
	// present; MLServer reloads every version of a name when one is loaded).
	held map[string]string
	// loading names the models whose Load is under way; reconciliation leaves them alone.
	loading map[string]bool
	// up: the server answers, and was reconciled and prepared since it last did not (Watch).
	up atomic.Bool
}

// New connects to the server lazily (the first call dials); Close releases the connection.
func New(cfg Config, server Server, log *slog.Logger) (*Backend, error) {
	if cfg.Repository == "" || cfg.GRPCAddr == "" {
		return nil, fmt.Errorf("%s: repository directory and gRPC address are required", server.Runtime())
	}
	if err := os.MkdirAll(cfg.Repository, 0o755); err != nil {
		return nil, fmt.Errorf("%s repository: %w", server.Runtime(), err)
	}
	conn, err := grpc.NewClient(cfg.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		return nil, fmt.Errorf("%s at %s: %w", server.Runtime(), cfg.GRPCAddr, err)
	}
	return &Backend{cfg: cfg, server: server, conn: conn, client: inference.NewGRPCInferenceServiceClient(conn), log: log,
		held: map[string]string{}, loading: map[string]bool{}}, nil
}

// Close releases the connection to the server.
func (b *Backend) Close() error { return b.conn.Close() }

// Client is the gRPC client of the server.
func (b *Backend) Client() Client { return b.client }

// Runtime names the backend in the worker's records.
func (b *Backend) Runtime() string { return b.server.Runtime() }

// Capabilities are the server's while it is up; while it is down (and before Watch first
// found it up) it reads no format, so that the worker's record offers no room for loads it
// would fail.
func (b *Backend) Capabilities() placement.Capabilities {
	caps := b.server.Capabilities()
	if !b.up.Load() {
		caps.Formats = nil
	}
	return caps
}

// Live reports whether the server answers.
func (b *Backend) Live(ctx context.Context) bool {
	r, err := b.client.ServerLive(ctx, &inference.ServerLiveRequest{})
	return err == nil && r.GetLive()
}

// Load installs m's files as m.Name in the repository and has the server load it. The
// server's own reason is in the error when it refuses the model; the repository is left as
// it was.
func (b *Backend) Load(ctx context.Context, m placement.ModelVersion, f agent.Files) (agent.Loaded, error) {
	b.mu.Lock()
	other, busy := b.held[m.Name]
	if !busy {
		b.held[m.Name] = m.Version // claimed until the load ends
		b.loading[m.Name] = true
	}
	b.mu.Unlock()
	if busy {
		return agent.Loaded{}, fmt.Errorf("this %s worker holds version %s of %s; one version per model", b.Runtime(), other, m.Name)
	}
	loaded, err := b.load(ctx, m, f)
	b.mu.Lock()
	delete(b.loading, m.Name)
	if err != nil {
		delete(b.held, m.Name)
	}
	b.mu.Unlock()
	return loaded, err
}

func (b *Backend) load(ctx context.Context, m placement.ModelVersion, f agent.Files) (agent.Loaded, error) {
	dst := filepath.Join(b.cfg.Repository, m.Name)
	if err := b.install(m, f, dst); err != nil {
		return agent.Loaded{}, err
	}
	mem, err := b.server.Measure(ctx, b.client, m, dst, func(ctx context.Context) error {
		_, err := b.client.RepositoryModelLoad(ctx, &inference.RepositoryModelLoadRequest{ModelName: m.Name})
		return err
	})
	if err != nil {
		// The server goes on with a load whose caller gave up (a timeout): unload it, or it
		// holds memory nobody counts.
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		b.client.RepositoryModelUnload(uctx, &inference.RepositoryModelUnloadRequest{ModelName: m.Name})
		cancel()
		os.RemoveAll(dst)
		return agent.Loaded{}, fmt.Errorf("%s refused %s: %s", b.Runtime(), m, status.Convert(err).Message())
	}
	meta, err := b.metadata(ctx, m)
	if err != nil {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		b.unload(uctx, m)
		cancel()
		return agent.Loaded{}, err
	}
	return agent.Loaded{Metadata: meta, Memory: mem}, nil
}

// install has the server write m's files into a staging directory of the repository, then
// moves it to dst in one rename, replacing what was there. The staging directory's name
// starts with a dot, which no model name does and which servers skip when they scan the
// repository (MLServer's search for model-settings.json files ignores hidden directories).
func (b *Backend) install(m placement.ModelVersion, f agent.Files, dst string) error {
	tmp := filepath.Join(b.cfg.Repository, stagingPrefix+m.Name)
	os.RemoveAll(tmp)
	err := b.server.Install(m, f, tmp)
	if err == nil {
		os.RemoveAll(dst)
		err = os.Rename(tmp, dst)
	}
	if err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("install %s: %w", m.Name, err)
	}
	return nil
}

// stagingPrefix starts the names of directories being installed.
const stagingPrefix = ".installing-"

// Unload has the server unload the model and removes its directory from the repository.
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
		return fmt.Errorf("unload %s from %s: %w", m, b.Runtime(), err)
	}
	return nil
}

// Infer is not served by the worker: the gateway routes to the server's own ports.
func (b *Backend) Infer(context.Context, placement.ModelVersion, *tensor.Request) (*tensor.Response, error) {
	return nil, ErrServedByServer
}

// Reconcile brings the server's loaded set in line with what the worker holds (nothing, at
// start): every model the server knows that the worker does not hold is unloaded and its
// directory removed, so no orphan holds memory; so are directories a worker left half
// installed (first, so that a server that refuses to unload one of those does not keep the
// rest). A name in the server's index that is no model id (a stray settings file's) is
// unloaded, but no path is made of it. It returns the names unloaded.
func (b *Backend) Reconcile(ctx context.Context) ([]string, error) {
	b.removeStaging()
	idx, err := b.client.RepositoryIndex(ctx, &inference.RepositoryIndexRequest{})
	if err != nil {
		return nil, fmt.Errorf("%s repository index: %w", b.Runtime(), err)
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
		name := mi.GetName()
		if held[name] || seen[name] || strings.HasPrefix(name, stagingPrefix) || strings.HasPrefix(name, "_") {
			continue
		}
		seen[name] = true
		// A server lists what its repository holds, loaded or not (MLServer after a restart):
		// one it does not have loaded answers NOT_FOUND, and only its files are left.
		if _, err := b.client.RepositoryModelUnload(ctx, &inference.RepositoryModelUnloadRequest{ModelName: name}); err != nil && status.Code(err) != codes.NotFound {
			return orphans, fmt.Errorf("unload orphan %s: %w", name, err)
		}
		if placement.ValidateID(name) == nil {
			if err := os.RemoveAll(filepath.Join(b.cfg.Repository, name)); err != nil {
				return orphans, err
			}
		}
		orphans = append(orphans, name)
	}
	return orphans, nil
}

// removeStaging removes the repository entries that are the worker's own and not in use:
// staging directories of loads no longer under way, and those starting with "_" (model
// names start with a letter or a digit).
func (b *Backend) removeStaging() {
	entries, err := os.ReadDir(b.cfg.Repository)
	if err != nil {
		return
	}
	for _, e := range entries {
		n := e.Name()
		if !strings.HasPrefix(n, stagingPrefix) && !strings.HasPrefix(n, "_") {
			continue
		}
		b.mu.Lock()
		installing := b.loading[strings.TrimPrefix(n, stagingPrefix)]
		b.mu.Unlock()
		if !installing {
			os.RemoveAll(filepath.Join(b.cfg.Repository, n))
		}
	}
}

func (b *Backend) metadata(ctx context.Context, m placement.ModelVersion) (tensor.Metadata, error) {
	md, err := b.client.ModelMetadata(ctx, &inference.ModelMetadataRequest{Name: m.Name, Version: m.Version})
	if err != nil {
		return tensor.Metadata{}, fmt.Errorf("%s metadata of %s: %s", b.Runtime(), m, status.Convert(err).Message())
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
