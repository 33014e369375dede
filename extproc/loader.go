package extproc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/internal/residency"
	"github.com/modelmesh/mesh/proto/meshv1"
)

// Loader makes a model version resident on a worker. Load blocks until the model is ready
// on w or the load failed, bounded by ctx; it returns an error wrapping ErrNoRoom when the
// worker cannot make room for the model. Implementations must be safe for concurrent use.
type Loader interface {
	Load(ctx context.Context, w residency.Worker, t Target) error
}

// GRPCLoader calls the worker management API (meshv1.WorkerService/Load) at the worker's
// MgmtAddr over plaintext gRPC, keeping one client connection per address. Safe for
// concurrent use; Close releases the connections.
type GRPCLoader struct {
	opts  []grpc.DialOption
	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

var _ Loader = (*GRPCLoader)(nil)

// NewGRPCLoader returns a loader with no connections yet; opts are added to every
// connection's (the tracing instrumentation, which carries the trace context to the worker).
func NewGRPCLoader(opts ...grpc.DialOption) *GRPCLoader {
	return &GRPCLoader{opts: opts, conns: map[string]*grpc.ClientConn{}}
}

// Load implements Loader.
func (l *GRPCLoader) Load(ctx context.Context, w residency.Worker, t Target) error {
	conn, err := l.conn(w.MgmtAddr)
	if err != nil {
		return err
	}
	req := &meshv1.LoadRequest{
		Model:            &meshv1.ModelRef{Name: t.Model.Name, Version: t.Model.Version},
		StorageUri:       t.Files.StorageURI,
		Sha256:           t.Files.SHA256,
		MemoryBytes:      t.Size.Declared,
		LearnedHostBytes: t.Size.Learned.Host,
		LearnedGpuBytes:  t.Size.Learned.GPU,
		Pinned:           t.Pinned,
		Extra:            t.Extra,
		Format:           t.Format,
	}
	if st := t.Files.Storage; st != nil {
		req.StorageKey, req.StorageBucket, req.StoragePath = st.Key, st.Bucket, st.Path
	}
	_, err = meshv1.NewWorkerServiceClient(conn).Load(ctx, req)
	if err == nil {
		return nil
	}
	st := status.Convert(err)
	if st.Code() == codes.Unavailable && refuses(ctx, w.MgmtAddr) {
		return fmt.Errorf("%w: worker %s: its management port %s refuses connections", ErrWorkerGone, w.ID, w.MgmtAddr)
	}
	if st.Code() == codes.ResourceExhausted {
		return fmt.Errorf("%w: worker %s: %s", ErrNoRoom, w.ID, st.Message())
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == meshv1.ErrorDomainStorage && meshv1.PermanentStorageReason(info.GetReason()) {
			return fmt.Errorf("%w: worker %s: %s", ErrModelFiles, w.ID, st.Message())
		}
	}
	return fmt.Errorf("worker %s: %s", w.ID, status.Convert(err).Message())
}

// Drain asks worker w to drain model version m (meshv1.WorkerService/Drain): out of the
// gateway's routes, then unloaded once nothing is in flight on it. Blocks until it is gone
// or ctx ends (the drain goes on).
func (l *GRPCLoader) Drain(ctx context.Context, w residency.Worker, m placement.ModelVersion) error {
	conn, err := l.conn(w.MgmtAddr)
	if err != nil {
		return err
	}
	if _, err := meshv1.NewWorkerServiceClient(conn).Drain(ctx, &meshv1.DrainRequest{Model: &meshv1.ModelRef{Name: m.Name, Version: m.Version}}); err != nil {
		return fmt.Errorf("drain %s on worker %s: %s", m, w.ID, status.Convert(err).Message())
	}
	return nil
}

// refuses reports whether a TCP connection to addr fails at once: nothing listens there
// (the worker process is gone). A worker that answers UNAVAILABLE itself (draining,
// shutting down) still accepts connections.
func refuses(ctx context.Context, addr string) bool {
	ctx, cancel := context.WithTimeout(ctx, 250*time.Millisecond)
	defer cancel()
	c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return ctx.Err() == nil || errors.Is(err, syscall.ECONNREFUSED)
	}
	c.Close()
	return false
}

// answers reports whether the worker management server at addr answers GET /healthz with
// 200 within timeout.
func answers(ctx context.Context, addr string, timeout time.Duration) bool {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/healthz", nil)
	if err != nil {
		return false
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func (l *GRPCLoader) conn(addr string) (*grpc.ClientConn, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if c, ok := l.conns[addr]; ok {
		return c, nil
	}
	c, err := grpc.NewClient(addr, append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, l.opts...)...)
	if err != nil {
		return nil, fmt.Errorf("connect to worker management %s: %w", addr, err)
	}
	l.conns[addr] = c
	return c, nil
}

// Prune closes, every interval until ctx ends, the connections to workers that left the
// mesh: those whose management address is in none of view's workers. Nothing is closed
// before view's first snapshot. A worker that comes back is dialled again at its next load.
// Returns nil when ctx ends.
func (l *GRPCLoader) Prune(ctx context.Context, view *View, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if snap := view.Snapshot(); snap != nil {
			live := make(map[string]bool, len(snap.Workers))
			for _, w := range snap.Workers {
				live[w.MgmtAddr] = true
			}
			l.forget(live)
		}
	}
}

// forget closes the connections to addresses not in live.
func (l *GRPCLoader) forget(live map[string]bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for addr, c := range l.conns {
		if !live[addr] {
			c.Close()
			delete(l.conns, addr)
		}
	}
}

// Close closes every connection.
func (l *GRPCLoader) Close() error {
	l.forget(nil)
	return nil
}
