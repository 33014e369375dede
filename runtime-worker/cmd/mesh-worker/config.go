package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/modelmesh/mesh/internal/cli"
	"github.com/modelmesh/mesh/internal/placement"
)

// envPrefix: every flag --some-flag can also be set as MESH_WORKER_SOME_FLAG (internal/cli).
const envPrefix = "MESH_WORKER_"

// Config is the worker's whole configuration.
type Config struct {
	WorkerID        string
	Listen          string
	ManagementAddr  string
	AdvertiseHost   string
	AdvertiseAddr   string
	AdvertiseMgmt   string
	Storage         storageConfig
	Capacity        byteSize
	GPUCapacity     byteSizes
	LoadConcurrency int
	LoadTimeout     time.Duration
	EstimateFactor  float64
	DrainGrace      time.Duration
	DrainTimeout    time.Duration
	RouteSettle     time.Duration
	MinIdle         time.Duration
	FreeWatermark   watermark
	HalfLife        time.Duration
	Concurrency     int
	DemandWindow    time.Duration
	RedisAddr       string
	RedisPrefix     string
	Redis           cli.Redis
	Heartbeat       time.Duration
	Runtime         string
	ORTLibrary      string
	ORTThreads      int
	Triton          serverConfig
	TritonMetrics   string
	MLServer        serverConfig
	MLServerMetrics string
	CapacityReserve byteSize
	MaxBodyBytes    byteSize
	MaxModelLabels  int
	Labels          string
	Log             cli.Log
	Shutdown        cli.Shutdown
	Tracing         cli.Tracing
}

// RegisterFlags declares every setting on fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	host, _ := os.Hostname()
	fs.StringVar(&c.WorkerID, "worker-id", host, "worker id in Redis (default: host name)")
	fs.StringVar(&c.Listen, "listen", ":8000", "inference address: KServe v2 REST and gRPC on one port")
	fs.StringVar(&c.ManagementAddr, "management-listen", ":8010", "management address: meshv1 gRPC, /metrics, /healthz")
	fs.StringVar(&c.AdvertiseHost, "advertise-host", "127.0.0.1", "IP address (IPv4 or IPv6, no brackets; e.g. the pod's) others reach this worker at: the gateways' endpoints must be IPs. Joined with the ports of --listen, --management-listen and, for Triton and MLServer, --triton-grpc and --triton-http or --mlserver-grpc and --mlserver-http when those give no host")
	fs.StringVar(&c.AdvertiseAddr, "advertise-addr", "", "inference address others reach this worker at, host:port (default: --advertise-host with --listen's port)")
	fs.StringVar(&c.AdvertiseMgmt, "advertise-management-addr", "", "management address others reach this worker at, host:port (default: --advertise-host with --management-listen's port)")
	c.Storage.RegisterFlags(fs)
	c.Capacity = 1 << 30
	fs.Var(&c.Capacity, "capacity", "host memory budget for models, bytes or with KiB/MiB/GiB suffix")
	fs.Var(&c.GPUCapacity, "gpu-capacity", "triton: comma-separated GPU memory budgets for models, one per device in CUDA order (e.g. 22GiB,22GiB); empty: no GPUs, or from --triton-metrics")
	fs.IntVar(&c.LoadConcurrency, "load-concurrency", 2, "loads running at once")
	fs.DurationVar(&c.LoadTimeout, "load-timeout", 2*time.Minute, "longest one load may take")
	fs.Float64Var(&c.EstimateFactor, "estimate-factor", 2, "memory reserved per byte of model file when no size is declared or learned")
	fs.DurationVar(&c.DrainGrace, "drain-grace", time.Second, "at shutdown: how long the worker keeps serving, once the mesh stopped routing its models here, for requests already on their way (a drained or evicted model unloads once unrouted and idle, without it)")
	fs.DurationVar(&c.MinIdle, "eviction-min-idle", time.Second, "how long a model must go unused before it may be evicted")
	c.FreeWatermark = watermark{fraction: 0.1}
	fs.Var(&c.FreeWatermark, "free-watermark", "memory kept free ahead of demand in each budget (host, each GPU) by evicting idle models in the background: a fraction (10%, 0.1) or bytes (8MiB), at most half of each budget; 0: evict only when a load needs room")
	fs.DurationVar(&c.HalfLife, "eviction-half-life", 10*time.Minute, "age of a request at which it counts half for eviction (0: requests never age)")
	fs.IntVar(&c.Concurrency, "model-concurrency", -1, "onnxruntime: requests one replica runs at once, more wait in its queue (measured as its queue wait for scaling); 0: no bound (default: the CPUs this process may use over --ort-threads)")
	fs.DurationVar(&c.DemandWindow, "demand-window", 5*time.Second, "time constant of the per-replica demand figures (requests in flight, queued, arriving) published for ext_proc's replica scaler")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", 5*time.Second, "longest wait for the mesh to stop routing a draining model here")
	fs.DurationVar(&c.RouteSettle, "drain-settle", 100*time.Millisecond, "how long after a model turned ready the routed sets are first believed when they say the mesh does not route it here (a control plane may not have recorded the push that routes the new replica yet); more than the control plane's --batch plus one translation")
	fs.StringVar(&c.RedisAddr, "redis-addr", "", "Redis address for residency records (empty: run without Redis)")
	fs.StringVar(&c.RedisPrefix, "redis-prefix", "mesh", "prefix of every Redis key")
	c.Redis.RegisterFlags(fs)
	fs.DurationVar(&c.Heartbeat, "heartbeat", 2*time.Second, "interval of full state writes to Redis; the lease lasts three")
	fs.StringVar(&c.Runtime, "runtime", "onnxruntime", "model runtime: onnxruntime (embedded), triton (a Triton server beside the worker) or mlserver (an MLServer beside the worker)")
	fs.StringVar(&c.ORTLibrary, "ort-library", "", "onnxruntime: path of libonnxruntime.so")
	c.Triton.RegisterFlags(fs, "triton", "Triton", ":8001", ":8000")
	fs.StringVar(&c.TritonMetrics, "triton-metrics", "", "triton: Triton's metrics URL; when set, each GPU's budget is its memory less --capacity-reserve (instead of --gpu-capacity), or, on a server without GPUs, the host budget is host memory less the reserve (instead of --capacity)")
	fs.Var(&c.CapacityReserve, "capacity-reserve", "with --triton-metrics: memory kept back from models on each device (CUDA contexts, Triton, stubs)")
	c.MLServer.RegisterFlags(fs, "mlserver", "MLServer", ":8081", ":8080")
	fs.StringVar(&c.MLServerMetrics, "mlserver-metrics", "", "mlserver: MLServer's metrics URL (its metrics_port, e.g. http://127.0.0.1:8082/metrics), read for each model's last use; empty: a model counts as used only when loaded")
	fs.IntVar(&c.ORTThreads, "ort-threads", 1, "ONNX Runtime intra-op threads per model")
	c.MaxBodyBytes = 64 << 20
	fs.Var(&c.MaxBodyBytes, "max-body", "largest inference request, bytes or with KiB/MiB/GiB suffix")
	fs.IntVar(&c.MaxModelLabels, "metrics-max-models", 500, "distinct model label values in per-model metrics; more are counted as _other")
	fs.StringVar(&c.Labels, "labels", "", "comma-separated key=value labels recorded in Redis")
	c.Log.RegisterFlags(fs)
	c.Shutdown.RegisterFlags(fs, 20*time.Second, "longest graceful shutdown")
	c.Tracing.RegisterFlags(fs, "loads and inference requests")
}

// ModelConcurrency is --model-concurrency with its default applied: the CPUs the process may
// use (GOMAXPROCS) over the threads each request takes, at least 1.
func (c *Config) ModelConcurrency() int {
	if c.Concurrency >= 0 {
		return c.Concurrency
	}
	return max(1, runtime.GOMAXPROCS(0)/max(1, c.ORTThreads))
}

// Validate checks the settings together.
func (c *Config) Validate() error {
	var errs []error
	if c.WorkerID == "" {
		errs = append(errs, errors.New("--worker-id is empty"))
	}
	if err := c.Storage.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.Concurrency < -1 {
		errs = append(errs, errors.New("--model-concurrency must not be negative"))
	}
	if c.DemandWindow <= 0 {
		errs = append(errs, errors.New("--demand-window must be positive"))
	}
	switch c.Runtime {
	case "onnxruntime", "mlserver":
		if c.TritonMetrics != "" || len(c.GPUCapacity) > 0 {
			errs = append(errs, fmt.Errorf("--triton-metrics and --gpu-capacity need --runtime triton (%s runs on the CPU here)", c.Runtime))
		}
		if c.Runtime == "mlserver" {
			if err := c.MLServer.Validate(); err != nil {
				errs = append(errs, err)
			}
		} else if c.ORTLibrary == "" {
			errs = append(errs, errors.New("--ort-library is required (libonnxruntime.so)"))
		}
	case "triton":
		if err := c.Triton.Validate(); err != nil {
			errs = append(errs, err)
		}
		if c.CapacityReserve < 0 {
			errs = append(errs, errors.New("--capacity-reserve must not be negative"))
		}
		if c.TritonMetrics != "" && len(c.GPUCapacity) > 0 {
			errs = append(errs, errors.New("--gpu-capacity and --triton-metrics both set the GPU budgets: give one"))
		}
		if slices.Contains(c.GPUCapacity, 0) {
			errs = append(errs, errors.New("--gpu-capacity: every device's budget must be positive"))
		}
	default:
		errs = append(errs, fmt.Errorf("--runtime %q: onnxruntime, triton or mlserver", c.Runtime))
	}
	if c.Capacity <= 0 {
		errs = append(errs, errors.New("--capacity must be positive"))
	}
	if net.ParseIP(c.AdvertiseHost) == nil {
		errs = append(errs, fmt.Errorf("--advertise-host %q: an IP address (IPv4 or IPv6, no brackets), as Envoy's endpoints need", c.AdvertiseHost))
	}
	if c.LoadConcurrency < 1 {
		errs = append(errs, errors.New("--load-concurrency must be at least 1"))
	}
	if c.LoadTimeout <= 0 || c.Heartbeat <= 0 || c.DrainGrace < 0 || c.DrainTimeout <= 0 {
		errs = append(errs, errors.New("--load-timeout, --heartbeat and --drain-timeout must be positive, --drain-grace not negative"))
	}
	if c.RouteSettle < 0 {
		errs = append(errs, errors.New("--drain-settle must not be negative"))
	}
	if c.HalfLife < 0 {
		errs = append(errs, errors.New("--eviction-half-life must not be negative"))
	}
	if c.EstimateFactor <= 0 {
		errs = append(errs, errors.New("--estimate-factor must be positive"))
	}
	if c.MaxBodyBytes <= 0 || c.MaxModelLabels < 1 {
		errs = append(errs, errors.New("--max-body and --metrics-max-models must be positive"))
	}
	if err := c.Log.Validate(); err != nil {
		errs = append(errs, err)
	}
	if _, err := parseLabels(c.Labels); err != nil {
		errs = append(errs, err)
	}
	if err := c.Tracing.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func parseLabels(s string) (map[string]string, error) {
	out := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		if kv = strings.TrimSpace(kv); kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--labels: %q is not key=value", kv)
		}
		out[k] = v
	}
	return out, nil
}

// watermark is the memory kept free in each budget: a fraction of it, or bytes.
type watermark struct {
	fraction float64
	bytes    int64
}

func (w *watermark) String() string {
	if w.bytes > 0 {
		return strconv.FormatInt(w.bytes, 10)
	}
	return strconv.FormatFloat(w.fraction*100, 'f', -1, 64) + "%"
}

// Set reads "10%" or "0.1" (a fraction, at most one half) or a byte size ("8MiB").
func (w *watermark) Set(s string) error {
	s = strings.TrimSpace(s)
	if p, ok := strings.CutSuffix(s, "%"); ok || strings.Contains(s, ".") {
		f, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if ok {
			f /= 100
		}
		if err != nil || f < 0 || f > 0.5 {
			return fmt.Errorf("%q is not a fraction from 0 to one half (10%%, 0.1) or a size in bytes (8MiB)", s)
		}
		*w = watermark{fraction: f}
		return nil
	}
	var b byteSize
	if err := b.Set(s); err != nil {
		return err
	}
	*w = watermark{bytes: int64(b)}
	return nil
}

// of is the memory to keep free in each dimension of capacity: the fraction of each budget,
// or the bytes, at most half of each budget (more would leave the models little room).
func (w watermark) of(capacity placement.Memory) placement.Memory {
	keep := func(budget int64) int64 {
		if w.bytes > 0 {
			return min(w.bytes, budget/2)
		}
		return int64(w.fraction * float64(budget))
	}
	out := placement.Memory{Host: keep(capacity.Host)}
	for _, b := range capacity.GPU {
		out.GPU = append(out.GPU, keep(b))
	}
	return out
}

// byteSizes is a comma-separated list of byteSize values.
type byteSizes []int64

func (b *byteSizes) String() string {
	parts := make([]string, len(*b))
	for i, n := range *b {
		parts[i] = strconv.FormatInt(n, 10)
	}
	return strings.Join(parts, ",")
}

func (b *byteSizes) Set(s string) error {
	var out []int64
	for _, part := range strings.Split(s, ",") {
		if strings.TrimSpace(part) == "" {
			continue
		}
		var n byteSize
		if err := n.Set(strings.TrimSpace(part)); err != nil {
			return err
		}
		out = append(out, int64(n))
	}
	*b = out
	return nil
}

// byteSize is a flag value in bytes that accepts KiB, MiB and GiB suffixes.
type byteSize int64

func (b *byteSize) String() string { return strconv.FormatInt(int64(*b), 10) }

func (b *byteSize) Set(s string) error {
	mult := int64(1)
	for suffix, m := range map[string]int64{"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30} {
		if strings.HasSuffix(s, suffix) {
			s, mult = strings.TrimSuffix(s, suffix), m
			break
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return fmt.Errorf("%q is not a size in bytes (for example 512MiB)", s)
	}
	*b = byteSize(n * mult)
	return nil
}
