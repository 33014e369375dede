// Command mesh-controlplane serves the gateway Envoy's configuration over ADS, built from the
// model registry file and the residency records in Redis.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
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
	"google.golang.org/grpc/keepalive"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/modelmesh/mesh/controlplane"
	"github.com/modelmesh/mesh/controlplane/translate"
	"github.com/modelmesh/mesh/controlplane/xds"
	"github.com/modelmesh/mesh/internal/cli"
	"github.com/modelmesh/mesh/internal/residency"
	"github.com/modelmesh/mesh/istio"
	"github.com/modelmesh/mesh/kserve"
)

const envPrefix = "MESH_CONTROLPLANE_"

// Config is the control plane's whole configuration.
type Config struct {
	ID                string
	XDSListen         string
	MetricsListen     string
	RegistryPath      string
	RedisAddr         string
	RedisPrefix       string
	Redis             cli.Redis
	ListenerAddress   string
	ListenerPort      uint
	ExtProcAddr       string
	WasmPath          string
	WasmMaxModels     int
	RouteTimeout      time.Duration
	HotTryTimeout     time.Duration
	MessageTimeout    time.Duration
	MaxMessageTimeout time.Duration
	AckTimeout        time.Duration
	Batch             time.Duration
	Resync            time.Duration
	// TracingOTLPAddr, when set, turns on the gateway's tracing (translate.Tracing).
	TracingOTLPAddr      string
	TracingSamplePercent float64
	// Istio traffic rules (package istio), from a directory or from the Kubernetes API.
	IstioDir  string
	IstioKube bool
	// KServe InferenceServices as models (package kserve), from the Kubernetes API.
	KServe          bool
	KServeNamespace string
	KServeEndpoint  string
	Kubeconfig      string
	IstioNamespace  string
	IstioSelector   string
	Log             cli.Log
}

// RegisterFlags declares every setting on fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.ID, "id", "", "this replica's id among the control planes sharing a Redis (default: host name and xDS port)")
	fs.StringVar(&c.XDSListen, "xds-listen", ":18000", "ADS gRPC address the gateway Envoy connects to")
	fs.StringVar(&c.MetricsListen, "metrics-listen", ":18001", "address of /metrics, /healthz, /readyz and /status/virtualservices")
	fs.StringVar(&c.RegistryPath, "registry", "", "model registry YAML file (required; watched for changes)")
	fs.StringVar(&c.RedisAddr, "redis-addr", "", "Redis address (required)")
	fs.StringVar(&c.RedisPrefix, "redis-prefix", "mesh", "prefix of every Redis key")
	c.Redis.RegisterFlags(fs)
	fs.StringVar(&c.ListenerAddress, "gateway-address", "0.0.0.0", "address the gateway listener binds")
	fs.UintVar(&c.ListenerPort, "gateway-port", 8080, "port of the gateway listener")
	fs.StringVar(&c.ExtProcAddr, "extproc-addr", "127.0.0.1:9002", "ext_proc service address, host:port")
	fs.StringVar(&c.WasmPath, "wasm-path", "", "path of modelid.wasm on the Envoy host (required)")
	fs.IntVar(&c.WasmMaxModels, "wasm-max-models", 1000, "distinct models the wasm filter keeps stats for")
	fs.DurationVar(&c.RouteTimeout, "route-timeout", 60*time.Second, "upstream timeout of a routed request")
	fs.DurationVar(&c.HotTryTimeout, "hot-try-timeout", 20*time.Second, "longest one try of a hot request may take before it is retried on another replica or the cold path: what a hung worker costs a request, once (0: no bound but --route-timeout)")
	fs.DurationVar(&c.MessageTimeout, "extproc-message-timeout", time.Second, "Envoy's wait for an ext_proc answer before it fails the request with 504 (ext_proc extends it while a model loads)")
	fs.DurationVar(&c.MaxMessageTimeout, "extproc-max-message-timeout", 120*time.Second, "longest ext_proc may extend that wait while a model loads")
	fs.DurationVar(&c.AckTimeout, "ack-timeout", 5*time.Second, "longest wait for Envoy to acknowledge one push phase")
	fs.DurationVar(&c.Batch, "batch", 50*time.Millisecond, "the least time between two residency reads that events cause (a lone event is read at once)")
	fs.DurationVar(&c.Resync, "resync", 5*time.Second, "interval of full residency reads")
	fs.StringVar(&c.TracingOTLPAddr, "tracing-otlp-addr", "", "OTLP/gRPC collector, host:port, the gateway Envoy sends its spans to (empty: the gateway does not trace)")
	fs.Float64Var(&c.TracingSamplePercent, "tracing-sample-percent", 1, "with --tracing-otlp-addr: percent of requests the gateway traces (a request whose client sent an unsampled traceparent is never traced)")
	fs.StringVar(&c.IstioDir, "istio-dir", "", "directory of Istio VirtualService and DestinationRule YAML files whose rules replace the registry's traffic rules of the models they route (watched; empty: none)")
	fs.BoolVar(&c.IstioKube, "istio-kube", false, "read VirtualServices and DestinationRules from the Kubernetes API instead (in-cluster configuration unless --kubeconfig)")
	fs.StringVar(&c.Kubeconfig, "kubeconfig", "", "with --istio-kube or --kserve: kubeconfig file of the cluster (default: the in-cluster configuration)")
	fs.BoolVar(&c.KServe, "kserve", false, "add the models of KServe InferenceServices in ModelMesh mode, with their ServingRuntimes and ClusterServingRuntimes, to the registry's, and write their status (docs/kserve.md)")
	fs.StringVar(&c.KServeNamespace, "kserve-namespace", "", "with --kserve: namespace of the InferenceServices and ServingRuntimes to read (empty: all)")
	fs.StringVar(&c.KServeEndpoint, "kserve-endpoint", "mesh-gateway.modelmesh:8080", "with --kserve: host:port clients reach the gateway at, written into InferenceServices' status as their REST (http://) and gRPC (grpc://) URLs")
	fs.StringVar(&c.IstioNamespace, "istio-namespace", "", "with --istio-kube: namespace to read (empty: all namespaces)")
	fs.StringVar(&c.IstioSelector, "istio-selector", istio.DefaultSelector, "with --istio-kube: label selector of the objects to read")
	c.Log.RegisterFlags(fs)
}

// Validate checks the settings together.
func (c *Config) Validate() error {
	var errs []error
	if c.RegistryPath == "" {
		errs = append(errs, errors.New("--registry is required"))
	}
	if c.RedisAddr == "" {
		errs = append(errs, errors.New("--redis-addr is required"))
	}
	if c.WasmPath == "" {
		errs = append(errs, errors.New("--wasm-path is required"))
	}
	if c.ListenerPort == 0 || c.ListenerPort > 65535 {
		errs = append(errs, fmt.Errorf("--gateway-port %d out of range", c.ListenerPort))
	}
	if _, _, err := net.SplitHostPort(c.ExtProcAddr); err != nil {
		errs = append(errs, fmt.Errorf("--extproc-addr: %w", err))
	}
	if c.MessageTimeout <= 0 || c.MaxMessageTimeout < c.MessageTimeout {
		errs = append(errs, errors.New("--extproc-message-timeout must be positive and at most --extproc-max-message-timeout"))
	}
	if c.AckTimeout <= 0 || c.Batch <= 0 || c.Resync <= 0 || c.RouteTimeout <= 0 {
		errs = append(errs, errors.New("--ack-timeout, --batch, --resync and --route-timeout must be positive"))
	}
	if c.HotTryTimeout < 0 || c.HotTryTimeout >= c.RouteTimeout {
		errs = append(errs, errors.New("--hot-try-timeout must be 0 or positive and below --route-timeout"))
	}
	if c.TracingOTLPAddr != "" {
		if _, _, err := net.SplitHostPort(c.TracingOTLPAddr); err != nil {
			errs = append(errs, fmt.Errorf("--tracing-otlp-addr: %w", err))
		}
	}
	if c.TracingSamplePercent < 0 || c.TracingSamplePercent > 100 {
		errs = append(errs, fmt.Errorf("--tracing-sample-percent %g: between 0 and 100", c.TracingSamplePercent))
	}
	if c.IstioDir != "" && c.IstioKube {
		errs = append(errs, errors.New("--istio-dir and --istio-kube exclude each other"))
	}
	if c.Kubeconfig != "" && !c.IstioKube && !c.KServe {
		errs = append(errs, errors.New("--kubeconfig needs --istio-kube or --kserve"))
	}
	if _, _, err := net.SplitHostPort(c.KServeEndpoint); c.KServe && err != nil {
		errs = append(errs, fmt.Errorf("--kserve-endpoint: %w", err))
	}
	if _, err := labels.Parse(c.IstioSelector); err != nil {
		errs = append(errs, fmt.Errorf("--istio-selector: %w", err))
	}
	if err := c.Log.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// tracing is the gateway's tracing configuration, nil when off.
func (c *Config) tracing() *translate.Tracing {
	if c.TracingOTLPAddr == "" {
		return nil
	}
	return &translate.Tracing{CollectorAddress: c.TracingOTLPAddr, SamplePercent: c.TracingSamplePercent}
}

// The controller seeds Istio's rules from the registry published in Redis.
var _ controlplane.Seeder = (*istio.Traffic)(nil)

// trafficRules returns the Istio traffic rules the flags ask for, nil for none.
func (c *Config) trafficRules(log *slog.Logger, reg prometheus.Registerer) (*istio.Traffic, error) {
	switch {
	case c.IstioDir != "":
		dir := c.IstioDir
		return istio.NewTraffic(func(ctx context.Context, update func(istio.Objects)) error {
			return istio.WatchDir(ctx, dir, log, update)
		}, nil, log, reg), nil
	case c.IstioKube:
		client, err := istio.KubeClient(c.Kubeconfig)
		if err != nil {
			return nil, err
		}
		k, err := istio.NewKube(client, c.IstioNamespace, c.IstioSelector, log)
		if err != nil {
			return nil, err
		}
		klog.SetSlogLogger(log) // client-go's own messages (a watch refused, say) in our log
		return istio.NewTraffic(k.Watch, k, log, reg), nil
	}
	return nil, nil
}

// kserveSource is the InferenceServices' source the flags ask for.
func (c *Config) kserveSource(log *slog.Logger) (*kserve.Source, error) {
	rc, err := kubeConfig(c.Kubeconfig)
	if err != nil {
		return nil, err
	}
	// client-go's default of 5 requests a second would take minutes to write the first
	// statuses of a thousand InferenceServices.
	rc.QPS, rc.Burst = 100, 200
	client, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	klog.SetSlogLogger(log)
	return kserve.NewSource(client, c.KServeNamespace, kserve.Endpoints{REST: "http://" + c.KServeEndpoint, GRPC: "grpc://" + c.KServeEndpoint}, log), nil
}

// kubeConfig is the client configuration of the kubeconfig at path, or the in-cluster one
// when path is empty.
func kubeConfig(path string) (*rest.Config, error) {
	if path == "" {
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("kubernetes client config: %w", err)
		}
		return cfg, nil
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client config: %w", err)
	}
	return cfg, nil
}

func main() { cli.Main("mesh-controlplane", run) }

func run(ctx context.Context, args []string, stderr io.Writer) error {
	var cfg Config
	if err := cli.Parse("mesh-controlplane", envPrefix, &cfg, args, stderr); err != nil {
		return err
	}
	log := cfg.Log.Logger(stderr)
	if cfg.ID == "" {
		host, _ := os.Hostname()
		_, port, _ := net.SplitHostPort(cfg.XDSListen)
		cfg.ID = host + ":" + port
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	srv := xds.New(xds.Config{AckTimeout: cfg.AckTimeout}, log, xds.NewMetrics(reg))
	opts, err := cfg.Redis.Options(cfg.RedisAddr)
	if err != nil {
		return err
	}
	rdb := redis.NewClient(opts)
	defer rdb.Close()
	traffic, err := cfg.trafficRules(log, reg)
	if err != nil {
		return err
	}
	ccfg := controlplane.Config{
		ID:           cfg.ID,
		RegistryPath: cfg.RegistryPath,
		Translate: translate.Config{
			ListenerAddress: cfg.ListenerAddress, ListenerPort: uint32(cfg.ListenerPort), ExtProcAddress: cfg.ExtProcAddr,
			WasmPath: cfg.WasmPath, WasmMaxModels: cfg.WasmMaxModels, RouteTimeout: cfg.RouteTimeout,
			HotTryTimeout: cfg.HotTryTimeout, ExtProcMessageTimeout: cfg.MessageTimeout, MaxMessageTimeout: cfg.MaxMessageTimeout,
			Tracing: cfg.tracing(),
		},
		Watch: residency.WatchConfig{Batch: cfg.Batch, Resync: cfg.Resync},
	}
	if traffic != nil {
		ccfg.Traffic = traffic
	}
	if cfg.KServe {
		models, err := cfg.kserveSource(log)
		if err != nil {
			return err
		}
		ccfg.Models, ccfg.Status = models, models
	}
	ctrl := controlplane.New(ccfg, rdb, residency.Keys{Prefix: cfg.RedisPrefix}, srv, log, reg)

	lns, err := cli.Listen([]string{"xDS", "metrics"}, []string{cfg.XDSListen, cfg.MetricsListen})
	if err != nil {
		return err
	}
	xdsLn, metricsLn := lns[0], lns[1]
	gs := grpc.NewServer(grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 5 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 15 * time.Second, PermitWithoutStream: true}))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	// Ready once a configuration was pushed: before that (the Kubernetes API or Redis not
	// reached yet) a gateway connecting here would get none.
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !ctrl.Ready() {
			http.Error(w, "no configuration pushed yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	if traffic != nil {
		mux.Handle("/status/virtualservices", traffic)
	}
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	log.InfoContext(ctx, "control plane started", "id", cfg.ID, "xds_addr", xdsLn.Addr().String(), "metrics_addr", metricsLn.Addr().String(), "registry", cfg.RegistryPath)

	g, gctx := errgroup.WithContext(ctx)
	srv.Register(gctx, gs)
	g.Go(func() error { return gs.Serve(xdsLn) })
	g.Go(func() error {
		if err := hs.Serve(metricsLn); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	g.Go(func() error { return ctrl.Run(gctx) })
	g.Go(func() error {
		<-gctx.Done()
		log.InfoContext(gctx, "shutting down")
		gs.Stop() // xDS streams are long-lived; Envoy keeps its configuration and reconnects
		sctx, cancel := cli.Shutdown{Timeout: 5 * time.Second}.Context(gctx)
		defer cancel()
		return hs.Shutdown(sctx)
	})
	return g.Wait()
}
