package main

import (
	"errors"
	"flag"
	"fmt"
	"time"

	"github.com/modelmesh/mesh/internal/cli"
	"github.com/modelmesh/mesh/internal/placement"
)

// envPrefix: every flag --some-flag can also be set as MESH_EXTPROC_SOME_FLAG.
const envPrefix = "MESH_EXTPROC_"

// Config is the whole configuration of mesh-extproc.
type Config struct {
	Listen            string
	MetricsListen     string
	RedisAddr         string
	RedisPrefix       string
	Redis             cli.Redis
	LoadDeadline      time.Duration
	MaxMessageTimeout time.Duration
	MaxWaiting        int
	MaxModelLabels    int
	RetryAfter        time.Duration
	LockTTL           time.Duration
	Resync            time.Duration
	WarmInterval      time.Duration
	EventBatch        time.Duration
	ScaleInterval     time.Duration
	ScaleMaxReplicas  int
	Scale             placement.ScalePolicy
	Log               cli.Log
	Shutdown          cli.Shutdown
	Tracing           cli.Tracing
}

// RegisterFlags declares every setting on fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Listen, "listen", ":9002", "gRPC address of the ext_proc service")
	fs.StringVar(&c.MetricsListen, "metrics-listen", ":9003", "HTTP address of /metrics and /healthz")
	fs.StringVar(&c.RedisAddr, "redis-addr", "", "Redis address of the residency records (required)")
	fs.StringVar(&c.RedisPrefix, "redis-prefix", "mesh", "prefix of every Redis key")
	c.Redis.RegisterFlags(fs)
	fs.DurationVar(&c.LoadDeadline, "load-deadline", 60*time.Second, "longest a request is held while its model loads; below --max-message-timeout")
	fs.DurationVar(&c.MaxMessageTimeout, "max-message-timeout", 120*time.Second, "Envoy ext_proc max_message_timeout, the ceiling of the timeout override")
	fs.IntVar(&c.MaxWaiting, "max-waiting", 1000, "requests held per model version; more get 429")
	fs.IntVar(&c.MaxModelLabels, "metrics-max-models", 500, "distinct model label values in per-model metrics; more are counted as _other")
	fs.DurationVar(&c.RetryAfter, "retry-after", time.Second, "Retry-After of 503 and 429 answers (rounded up to seconds)")
	fs.DurationVar(&c.LockTTL, "lock-ttl", 10*time.Second, "life of the Redis load lock, renewed while loading")
	fs.DurationVar(&c.Resync, "resync", 5*time.Second, "interval of full residency reads from Redis")
	fs.DurationVar(&c.WarmInterval, "warm-interval", 10*time.Second, "interval of the check that models with minReplicas have that many replicas")
	fs.DurationVar(&c.ScaleInterval, "scale-interval", 2*time.Second, "how often the replica scaler reads demand and applies its policy (docs/extproc.md); 0: replicas do not follow demand")
	fs.IntVar(&c.ScaleMaxReplicas, "scale-max-replicas", 3, "replicas a model version may get for its demand when its registry entry sets no maxReplicas")
	fs.Float64Var(&c.Scale.TargetInFlight, "scale-target-in-flight", 2, "mean requests in flight one replica should carry; more asks for another replica")
	fs.DurationVar(&c.Scale.MaxQueueWait, "scale-max-queue-wait", 100*time.Millisecond, "mean wait for a slot on a replica's worker above which it asks for another replica (0: not used)")
	fs.Float64Var(&c.Scale.DownFraction, "scale-down-fraction", 0.5, "hysteresis: a replica goes only when the ones left would carry at most this fraction of --scale-target-in-flight")
	fs.DurationVar(&c.Scale.UpAfter, "scale-up-after", 4*time.Second, "how long demand must ask for another replica before one is added")
	fs.DurationVar(&c.Scale.DownAfter, "scale-down-after", 30*time.Second, "how long demand must allow one replica fewer before one is drained")
	fs.DurationVar(&c.EventBatch, "event-batch", 20*time.Millisecond, "the least time between two residency reads that events cause (a lone event is read at once)")
	c.Log.RegisterFlags(fs)
	c.Shutdown.RegisterFlags(fs, 15*time.Second, "longest wait for held requests at shutdown")
	c.Tracing.RegisterFlags(fs, "requests")
}

// Validate checks the settings together.
func (c *Config) Validate() error {
	var errs []error
	if c.RedisAddr == "" {
		errs = append(errs, errors.New("--redis-addr is required"))
	}
	if c.RedisPrefix == "" {
		errs = append(errs, errors.New("--redis-prefix is empty"))
	}
	if c.LoadDeadline <= 0 || c.MaxMessageTimeout <= 0 {
		errs = append(errs, errors.New("--load-deadline and --max-message-timeout must be positive"))
	} else if c.LoadDeadline >= c.MaxMessageTimeout {
		errs = append(errs, fmt.Errorf("--load-deadline %s must stay below --max-message-timeout %s (Envoy's max_message_timeout)", c.LoadDeadline, c.MaxMessageTimeout))
	}
	if c.MaxModelLabels < 1 {
		errs = append(errs, errors.New("--metrics-max-models must be positive"))
	}
	if c.MaxWaiting < 1 {
		errs = append(errs, errors.New("--max-waiting must be at least 1"))
	}
	if c.RetryAfter <= 0 || c.LockTTL <= 0 || c.Resync <= 0 || c.EventBatch <= 0 || c.Shutdown.Timeout <= 0 || c.WarmInterval <= 0 {
		errs = append(errs, errors.New("--retry-after, --lock-ttl, --resync, --event-batch, --shutdown-timeout and --warm-interval must be positive"))
	}
	if c.ScaleInterval < 0 || c.Scale.MaxQueueWait < 0 || c.Scale.UpAfter < 0 || c.Scale.DownAfter < 0 {
		errs = append(errs, errors.New("--scale-interval, --scale-max-queue-wait, --scale-up-after and --scale-down-after must not be negative"))
	}
	if c.ScaleMaxReplicas < 1 || c.Scale.TargetInFlight <= 0 {
		errs = append(errs, errors.New("--scale-max-replicas must be at least 1 and --scale-target-in-flight positive"))
	}
	if c.Scale.DownFraction <= 0 || c.Scale.DownFraction >= 1 {
		errs = append(errs, fmt.Errorf("--scale-down-fraction %g must be between 0 and 1 (exclusive)", c.Scale.DownFraction))
	}
	if err := c.Log.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.Tracing.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
