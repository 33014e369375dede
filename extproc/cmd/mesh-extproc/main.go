// Command mesh-extproc is the Envoy ext_proc service on the mesh's cold path: it routes a
// request for a model that is not (yet) on the hot path to a worker that holds it, or has a
// worker load it once for all waiting requests and holds them until it is ready.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	"github.com/modelmesh/mesh/extproc"
	"github.com/modelmesh/mesh/internal/cli"
	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/internal/residency"
	"github.com/modelmesh/mesh/internal/tracing"
)

func main() { cli.Main("mesh-extproc", run) }

func run(ctx context.Context, args []string, stderr io.Writer) error {
	var cfg Config
	if err := cli.Parse("mesh-extproc", envPrefix, &cfg, args, stderr); err != nil {
		return err
	}
	log := cfg.Log.Logger(stderr)

	lns, err := cli.Listen([]string{"ext_proc", "metrics"}, []string{cfg.Listen, cfg.MetricsListen})
	if err != nil {
		return err
	}
	grpcLn, metricsLn := lns[0], lns[1]

	opts, err := cfg.Redis.Options(cfg.RedisAddr)
	if err != nil {
		return err
	}
	rdb := redis.NewClient(opts)
	defer rdb.Close()
	keys := residency.Keys{Prefix: cfg.RedisPrefix}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	tr, err := tracing.New(ctx, cfg.Tracing.Config("mesh-extproc", ""), log)
	if err != nil {
		return err
	}
	defer tr.Close(context.WithoutCancel(ctx))
	metrics := extproc.NewMetrics(reg, cfg.MaxModelLabels)
	view := extproc.NewView(metrics.SnapshotRead)
	loader := extproc.NewGRPCLoader(tr.GRPCClient()...)
	locks := extproc.NewLocks(rdb, keys, cfg.LockTTL)
	reader := residency.NewReader(rdb, keys, log)
	defer loader.Close()
	srv := extproc.New(extproc.Config{
		LoadDeadline: cfg.LoadDeadline, MaxMessageTimeout: cfg.MaxMessageTimeout, MaxWaiting: cfg.MaxWaiting,
		RetryAfter: cfg.RetryAfter, TracerProvider: tr.Provider(),
		EndLease: func(ctx context.Context, worker string) error { return residency.EndLease(ctx, rdb, keys, worker) },
		Refresh: func(ctx context.Context) error {
			snap, err := reader.Read(ctx)
			if err == nil {
				view.Set(snap)
			}
			return err
		},
		RecordLoad: func(ctx context.Context, m placement.ModelVersion, f *residency.Failure) error {
			return residency.RecordLoad(ctx, rdb, keys, m, f)
		},
	}, view, loader, locks, log, metrics)
	defer srv.Close()

	gs := grpc.NewServer()
	extprocv3.RegisterExternalProcessorServer(gs, srv)
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if view.Snapshot() == nil {
			http.Error(w, "no residency snapshot read from redis yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	log.InfoContext(ctx, "mesh-extproc started", "listen", grpcLn.Addr().String(), "metrics_listen", metricsLn.Addr().String(),
		"redis_addr", cfg.RedisAddr, "redis_prefix", cfg.RedisPrefix, "load_deadline", cfg.LoadDeadline.String())

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		return view.Run(gctx, reader, cfg.EventBatch, cfg.Resync)
	})
	g.Go(func() error { return loader.Prune(gctx, view, cfg.Resync) })
	g.Go(func() error { return srv.Warm(gctx, cfg.WarmInterval) })
	if cfg.ScaleInterval > 0 {
		scaler := extproc.NewScaler(extproc.ScaleConfig{Interval: cfg.ScaleInterval, Policy: cfg.Scale, MaxReplicas: cfg.ScaleMaxReplicas, Deadline: cfg.LoadDeadline},
			reader.Read, loader, locks, log, metrics)
		g.Go(func() error { return scaler.Run(gctx) })
	}
	g.Go(func() error { return gs.Serve(grpcLn) })
	g.Go(func() error {
		if err := hs.Serve(metricsLn); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		log.InfoContext(gctx, "shutting down")
		sctx, cancel := cfg.Shutdown.Context(gctx)
		defer cancel()
		// Held requests get their answer until the timeout; then loads under way are
		// cancelled (their requests get 503) and the remaining streams cut.
		done := make(chan struct{})
		go func() { gs.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-sctx.Done():
			srv.Close()
			gs.Stop()
			<-done
		}
		srv.Close()
		return hs.Shutdown(sctx)
	})
	return g.Wait()
}
