package extproc

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/internal/redistest"
	"github.com/modelmesh/mesh/internal/registry"
	"github.com/modelmesh/mesh/internal/residency"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// mesh is a real Redis holding a registry and the records of fake workers, each written by
// a real residency.Reporter.
type mesh struct {
	t    *testing.T
	rdb  *redis.Client
	keys residency.Keys
	ctx  context.Context
	wg   sync.WaitGroup
}

func newMesh(t *testing.T, reg *registry.Registry) *mesh {
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	ctx, cancel := context.WithCancel(context.Background())
	m := &mesh{t: t, rdb: rdb, keys: residency.Keys{Prefix: "t"}, ctx: ctx}
	t.Cleanup(func() {
		cancel()
		m.wg.Wait()
		rdb.Close()
	})
	if err := residency.PublishRegistry(ctx, rdb, m.keys, reg); err != nil {
		t.Fatal(err)
	}
	return m
}

// fakeWorker is a worker's record in Redis, kept by a real Reporter.
type fakeWorker struct {
	w        residency.Worker
	mu       sync.Mutex
	replicas map[string]residency.Replica
	changed  chan struct{}
}

func (m *mesh) addWorker(w residency.Worker, replicas map[string]string) *fakeWorker {
	fw := &fakeWorker{w: w, replicas: map[string]residency.Replica{}, changed: make(chan struct{}, 1)}
	for k, v := range replicas {
		fw.replicas[k] = replicaIn(v)
	}
	rep := residency.NewReporter(m.rdb, m.keys, residency.ReporterConfig{Heartbeat: time.Second}, quiet)
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		rep.Run(m.ctx, fw.changed, fw.state)
	}()
	return fw
}

// replicaIn is a replica record in the named state.
func replicaIn(state string) residency.Replica {
	st, ok := placement.ParseState(state)
	if !ok {
		panic("state " + state)
	}
	return residency.Replica{State: st}
}

func (fw *fakeWorker) ready(model string) bool {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	return fw.replicas[model].State == placement.StateReady
}

func (fw *fakeWorker) state() residency.State {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	reps := make(map[string]residency.Replica, len(fw.replicas))
	for k, v := range fw.replicas {
		reps[k] = v
	}
	return residency.State{Worker: fw.w, Replicas: reps}
}

func (fw *fakeWorker) set(model, state string) {
	fw.mu.Lock()
	fw.replicas[model] = replicaIn(state)
	fw.mu.Unlock()
	select {
	case fw.changed <- struct{}{}:
	default:
	}
}

// fakeLoader counts Loads and, like a worker, reports the model ready after a successful one.
type fakeLoader struct {
	workers map[string]*fakeWorker
	delay   time.Duration
	block   bool             // wait until ctx ends
	fail    map[string]error // by worker id
	mu      sync.Mutex
	calls   []string // "worker/model:version"
	// confirms counts Loads of models already resident; each takes confirmDelay (a
	// replica that drains is waited out).
	confirms     int
	confirmDelay time.Duration
}

// Load records a load in calls, unless the worker already holds the model ready: then, as
// a real worker does, it answers at once and counts a confirmation.
func (l *fakeLoader) Load(ctx context.Context, w residency.Worker, t Target) error {
	if fw := l.workers[w.ID]; fw != nil && fw.ready(t.Model.String()) && l.fail[w.ID] == nil {
		l.mu.Lock()
		l.confirms++
		l.mu.Unlock()
		select {
		case <-time.After(l.confirmDelay):
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	l.mu.Lock()
	l.calls = append(l.calls, w.ID+"/"+t.Model.String())
	l.mu.Unlock()
	if l.block {
		<-ctx.Done()
		return ctx.Err()
	}
	select {
	case <-time.After(l.delay):
	case <-ctx.Done():
		return ctx.Err()
	}
	if err := l.fail[w.ID]; err != nil {
		return err
	}
	if fw := l.workers[w.ID]; fw != nil {
		fw.set(t.Model.String(), "ready")
	}
	return nil
}

func (l *fakeLoader) Calls() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.calls...)
}

// replica is one ext_proc server over a real gRPC connection, reading the mesh's Redis.
type replica struct {
	srv    *Server
	view   *View
	client extprocv3.ExternalProcessorClient
	reg    *prometheus.Registry
}

func (m *mesh) startReplica(cfg Config, loader Loader) *replica {
	t := m.t
	reg := prometheus.NewRegistry()
	metrics := NewMetrics(reg, 100)
	view := NewView(metrics.SnapshotRead)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		view.Run(ctx, residency.NewReader(m.rdb, m.keys, quiet), 5*time.Millisecond, 200*time.Millisecond)
	}()
	if cfg.LockPoll == 0 {
		cfg.LockPoll = 20 * time.Millisecond
	}
	if cfg.ProbeAfter == 0 {
		cfg.ProbeAfter = time.Hour // the fake workers have no management server to probe
	}
	if cfg.EndLease == nil {
		cfg.EndLease = func(ctx context.Context, id string) error { return residency.EndLease(ctx, m.rdb, m.keys, id) }
	}
	srv := New(cfg, view, loader, NewLocks(m.rdb, m.keys, 10*time.Second), quiet, metrics)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	extprocv3.RegisterExternalProcessorServer(gs, srv)
	served := make(chan struct{})
	go func() { defer close(served); gs.Serve(ln) }()
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		srv.Close()
		gs.Stop()
		<-served
		cancel()
		<-done
	})
	return &replica{srv: srv, view: view, client: extprocv3.NewExternalProcessorClient(conn), reg: reg}
}

// waitFor polls the replica's view until ok holds.
func (r *replica) waitFor(t *testing.T, ok func(*residency.Snapshot) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if s := r.view.Snapshot(); s != nil && ok(s) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("the replica's view never reached the expected state")
}

func workersLive(n int) func(*residency.Snapshot) bool {
	return func(s *residency.Snapshot) bool { return len(s.Workers) == n && s.Registry != nil }
}

// exchange is one request's ext_proc stream as Envoy sees it.
type exchange struct {
	extended time.Duration // override_message_timeout received before the answer, if any
	answer   *extprocv3.ProcessingResponse
}

// send plays Envoy: request headers out, then messages in until the answer.
func (r *replica) send(ctx context.Context, headers map[string]string) (exchange, error) {
	stream, err := r.client.Process(ctx)
	if err != nil {
		return exchange{}, err
	}
	defer stream.CloseSend()
	hm := &corev3.HeaderMap{}
	for k, v := range headers {
		hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: k, RawValue: []byte(v)})
	}
	if err := stream.Send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{
		RequestHeaders: &extprocv3.HttpHeaders{Headers: hm, EndOfStream: true}}}); err != nil {
		return exchange{}, err
	}
	var ex exchange
	for {
		resp, err := stream.Recv()
		if err != nil {
			return ex, err
		}
		if resp.Response == nil && resp.OverrideMessageTimeout != nil {
			if ex.extended != 0 {
				return ex, errors.New("override_message_timeout sent twice")
			}
			ex.extended = resp.OverrideMessageTimeout.AsDuration()
			continue
		}
		ex.answer = resp
		return ex, nil
	}
}
