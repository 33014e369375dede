// Command mesh-worker runs beside a model server: it loads models on request within a memory
// budget, serves them over the KServe v2 protocol, and records what it holds in Redis.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	"github.com/modelmesh/mesh/internal/cli"
	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/internal/residency"
	"github.com/modelmesh/mesh/internal/tracing"
	"github.com/modelmesh/mesh/proto/inference"
	"github.com/modelmesh/mesh/proto/meshv1"
	"github.com/modelmesh/mesh/runtime-worker/agent"
	"github.com/modelmesh/mesh/runtime-worker/modelserver"
	"github.com/modelmesh/mesh/runtime-worker/onnx"
	"github.com/modelmesh/mesh/runtime-worker/server"
	"github.com/modelmesh/mesh/runtime-worker/storage"
	"github.com/modelmesh/mesh/runtime-worker/triton"
)

const version = "0.1.0"

func main() { cli.Main("mesh-worker", run) }

func run(ctx context.Context, args []string, stderr io.Writer) error {
	var cfg Config
	if err := cli.Parse("mesh-worker", envPrefix, &cfg, args, stderr); err != nil {
		return err
	}
	log := cfg.Log.Logger(stderr).With("worker", cfg.WorkerID)
	tr, err := tracing.New(ctx, cfg.Tracing.Config("mesh-worker", cfg.WorkerID), log)
	if err != nil {
		return err
	}
	defer tr.Close(context.WithoutCancel(ctx))

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	cacheDir := cfg.Storage.CacheDir
	if cacheDir == "" {
		dir, err := os.MkdirTemp("", "mesh-worker-cache-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		cacheDir = dir
	}
	store, err := cfg.Storage.open(cacheDir, log, storage.NewMetrics(reg))
	if err != nil {
		return err
	}
	defer store.Close()
	var backend agent.Backend
	// beside is the model server beside the worker, which serves inference on its own ports.
	var beside *modelserver.Backend
	var serverCfg *serverConfig
	runtimeVersion := ""
	switch cfg.Runtime {
	case "triton", "mlserver":
		serverCfg = &cfg.Triton
		if cfg.Runtime == "mlserver" {
			serverCfg = &cfg.MLServer
		}
		beside, err = serverCfg.backend(log, cfg.MLServerMetrics)
		if err != nil {
			return err
		}
		defer beside.Close()
		backend = beside
		if cfg.TritonMetrics != "" && cfg.Runtime == "triton" {
			measured, metric, err := tritonCapacity(ctx, cfg.TritonMetrics, int64(cfg.CapacityReserve))
			if err != nil {
				return err
			}
			if len(measured.GPU) > 0 {
				cfg.GPUCapacity = measured.GPU
			} else {
				cfg.Capacity = byteSize(measured.Host)
			}
			log.InfoContext(ctx, "budget from triton's metrics", "metric", metric, "measured", measured.String(), "reserve_bytes", int64(cfg.CapacityReserve))
		}
	default:
		ort, err := onnx.New(onnx.Config{Library: cfg.ORTLibrary, IntraOpThreads: cfg.ORTThreads})
		if err != nil {
			return err
		}
		defer ort.Close()
		backend, runtimeVersion = ort, ort.Version()
	}

	var rdb *redis.Client
	var router agent.Router
	if cfg.RedisAddr != "" {
		opts, err := cfg.Redis.Options(cfg.RedisAddr)
		if err != nil {
			return err
		}
		rdb = redis.NewClient(opts)
		defer rdb.Close()
		router = residency.NewRoutes(rdb, residency.Keys{Prefix: cfg.RedisPrefix}, cfg.WorkerID)
	}
	capacity := placement.Memory{Host: int64(cfg.Capacity), GPU: cfg.GPUCapacity}
	models := agent.New(agent.Config{
		Capacity: capacity, LoadConcurrency: cfg.LoadConcurrency, LoadTimeout: cfg.LoadTimeout,
		EstimateFactor: cfg.EstimateFactor, DrainGrace: cfg.DrainGrace, DrainTimeout: cfg.DrainTimeout, RouteSettle: cfg.RouteSettle, MinIdle: cfg.MinIdle,
		FreeWatermark: cfg.FreeWatermark.of(capacity), HalfLife: cfg.HalfLife, TracerProvider: tr.Provider(),
		Concurrency: cfg.ModelConcurrency(), DemandWindow: cfg.DemandWindow,
	}, backend, store, router, log, agent.NewMetrics(reg, cfg.MaxModelLabels))

	lns, err := cli.Listen([]string{"inference", "management"}, []string{cfg.Listen, cfg.ManagementAddr})
	if err != nil {
		return err
	}
	dataLn, mgmtLn := lns[0], lns[1]

	infer := server.NewInference(models, log, server.NewMetrics(reg, cfg.MaxModelLabels), version, int64(cfg.MaxBodyBytes))
	inferGRPC := grpc.NewServer(append(tr.GRPCServer(), grpc.MaxRecvMsgSize(int(cfg.MaxBodyBytes)))...)
	inference.RegisterGRPCInferenceServiceServer(inferGRPC, infer)
	dataSrv := &http.Server{Handler: tr.HTTP(infer.REST()), ReadHeaderTimeout: 10 * time.Second}

	mgmtGRPC := grpc.NewServer(tr.GRPCServer()...)
	meshv1.RegisterWorkerServiceServer(mgmtGRPC, server.NewManagement(models, store, cfg.WorkerID))
	mgmtMux := http.NewServeMux()
	mgmtMux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mgmtMux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mgmtSrv := &http.Server{Handler: mgmtMux, ReadHeaderTimeout: 10 * time.Second}

	labels, _ := parseLabels(cfg.Labels) // validated
	self := residency.Worker{
		ID: cfg.WorkerID, Runtime: backend.Runtime(), Caps: backend.Capabilities(), Capacity: capacity, Labels: labels,
		DataAddr:      advertised(cfg.AdvertiseAddr, cfg.AdvertiseHost, dataLn.Addr().String()),
		MgmtAddr:      advertised(cfg.AdvertiseMgmt, cfg.AdvertiseHost, mgmtLn.Addr().String()),
		StartedUnixMs: time.Now().UnixMilli(),
	}
	if beside != nil {
		// The gateway sends inference straight to the server's ports, not through the worker.
		self.DataAddr, self.GRPCAddr = advertised("", cfg.AdvertiseHost, serverCfg.HTTP), advertised("", cfg.AdvertiseHost, serverCfg.GRPC)
	}
	log.InfoContext(ctx, "worker started", "inference_addr", self.DataAddr, "grpc_addr", self.GRPC(), "management_addr", mgmtLn.Addr().String(),
		"capacity", capacity.String(), "runtime", backend.Runtime(), "runtime_version", runtimeVersion)

	g, gctx := errgroup.WithContext(ctx)
	// The ports keep accepting connections after shutdown starts, until the mesh no longer
	// routes here: Envoy may open a new connection for a request it still sends.
	serving, stopServing := context.WithCancel(context.WithoutCancel(gctx))
	defer stopServing()
	servePort(g, serving, dataLn, inferGRPC, dataSrv)
	servePort(g, serving, mgmtLn, mgmtGRPC, mgmtSrv)
	if beside != nil {
		g.Go(func() error {
			return beside.Watch(gctx, serverCfg.Poll, models.Touch, func() {
				log.WarnContext(gctx, cfg.Runtime+" lost its models", "models", len(models.Lost(gctx)))
			}, models.Republish)
		})
	}
	if rdb != nil {
		reporter := residency.NewReporter(rdb, residency.Keys{Prefix: cfg.RedisPrefix}, residency.ReporterConfig{Heartbeat: cfg.Heartbeat}, log)
		g.Go(func() error {
			return reporter.Run(gctx, models.Changed(), func() residency.State { return stateOf(self, backend, models) })
		})
	}
	g.Go(func() error {
		<-gctx.Done()
		log.InfoContext(gctx, "shutting down")
		sctx, cancel := cfg.Shutdown.Context(gctx)
		defer cancel()
		// The reporter removes the worker's records as gctx ends; the control plane then stops
		// routing here. Serve until it has (each model's routed set in Redis is empty), so that
		// the gateway sends no request to a closed port, then let requests in flight finish.
		models.AwaitUnrouted(sctx)
		log.InfoContext(sctx, "the mesh no longer routes here; closing the listeners")
		stopServing()
		err := errors.Join(dataSrv.Shutdown(sctx), mgmtSrv.Shutdown(sctx))
		if errors.Is(err, context.DeadlineExceeded) {
			// Out of --shutdown-timeout with requests still running: they are cut, which is
			// logged, not a failure of the worker.
			log.WarnContext(sctx, "shutdown timeout: cutting the requests still in flight", "timeout", cfg.Shutdown.Timeout.String())
			err = nil
		}
		stopGRPC(sctx, inferGRPC)
		stopGRPC(sctx, mgmtGRPC)
		models.Close(sctx)
		return err
	})
	return g.Wait()
}

// tritonCapacity asks Triton for its memory, waiting (up to 30 s) for its first sample.
func tritonCapacity(ctx context.Context, url string, reserve int64) (placement.Memory, string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		capacity, metric, err := triton.Capacity(ctx, url, reserve)
		if err == nil || ctx.Err() != nil {
			return capacity, metric, err
		}
		select {
		case <-ctx.Done():
			return placement.Memory{}, metric, fmt.Errorf("budget from triton's metrics: %w", err)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// servePort serves gRPC (HTTP/2 connections, native transport) and HTTP/1.1 on one
// listener, each on a goroutine of g; both stop when ctx ends and the servers shut down.
func servePort(g *errgroup.Group, ctx context.Context, ln net.Listener, gs *grpc.Server, hs *http.Server) {
	split := server.NewSplit(ln)
	g.Go(func() error { return split.Run(ctx) })
	g.Go(func() error { return gs.Serve(split.H2) })
	g.Go(func() error {
		if err := hs.Serve(split.HTTP1); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
}

// stopGRPC lets calls in flight finish until ctx ends, then cuts the rest.
func stopGRPC(ctx context.Context, gs *grpc.Server) {
	done := make(chan struct{})
	go func() { gs.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		gs.Stop()
		<-done
	}
}

// advertised is the configured address, else addr with its host, when it names none or a
// wildcard, replaced by host. JoinHostPort brackets an IPv6 host.
func advertised(configured, host, addr string) string {
	if configured != "" {
		return configured
	}
	h, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(h); h == "" || ip != nil && ip.IsUnspecified() {
		return net.JoinHostPort(host, port)
	}
	return addr
}

// stateOf is the worker's record: self with what the models use and what the runtime reads
// now (a model server that is down reads nothing).
func stateOf(self residency.Worker, backend agent.Backend, models *agent.Agent) residency.State {
	replicas, used := models.Snapshot()
	self.Used, self.Caps = used, backend.Capabilities()
	st := residency.State{Worker: self, Replicas: make(map[string]residency.Replica, len(replicas)), Measured: map[string]placement.Footprint{}}
	for _, r := range replicas {
		st.Replicas[r.Model.String()] = residency.Replica{State: r.State, Bytes: r.Memory.Total(), Memory: r.Memory,
			SizeSource: string(r.Source), SinceUnixMs: r.Since.UnixMilli(), Extra: r.Extra, Demand: r.Demand}
		if r.Source == placement.SizeMeasured {
			st.Measured[r.Model.String()] = r.Memory.Footprint()
		}
	}
	return st
}
