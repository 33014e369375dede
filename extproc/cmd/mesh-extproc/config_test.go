package main

import (
	"context"
	"flag"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/modelmesh/mesh/internal/cli"
	"github.com/modelmesh/mesh/internal/otlptest"
	"github.com/modelmesh/mesh/internal/redistest"
)

func parse(t *testing.T, args ...string) (Config, error) {
	t.Helper()
	var cfg Config
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cfg.RegisterFlags(fs)
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if err := cli.ApplyEnv(fs, envPrefix); err != nil {
		return cfg, err
	}
	return cfg, cfg.Validate()
}

func TestDefaults(t *testing.T) {
	cfg, err := parse(t, "--redis-addr", "127.0.0.1:6379")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != ":9002" || cfg.MetricsListen != ":9003" || cfg.RedisPrefix != "mesh" || cfg.LoadDeadline != time.Minute ||
		cfg.MaxWaiting != 1000 || cfg.Resync != 5*time.Second || cfg.MaxMessageTimeout != 2*time.Minute ||
		cfg.Shutdown.Timeout != 15*time.Second || cfg.Log != (cli.Log{Format: "json", Level: "info"}) || cfg.Tracing.Endpoint != "" {
		t.Fatalf("defaults: %+v", cfg)
	}
}

func TestEnvironmentSetsFlagsTheCommandLineLeaves(t *testing.T) {
	t.Setenv("MESH_EXTPROC_REDIS_ADDR", "redis:6379")
	t.Setenv("MESH_EXTPROC_MAX_WAITING", "7")
	t.Setenv("MESH_EXTPROC_LOAD_DEADLINE", "30s")
	cfg, err := parse(t, "--load-deadline", "10s")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.RedisAddr != "redis:6379" || cfg.MaxWaiting != 7 || cfg.LoadDeadline != 10*time.Second {
		t.Fatalf("config %+v", cfg)
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"redis required", nil, "--redis-addr is required"},
		{"deadline below envoy's max", []string{"--redis-addr", "r:1", "--load-deadline", "2m"}, "must stay below --max-message-timeout"},
		{"bounded queue", []string{"--redis-addr", "r:1", "--max-waiting", "0"}, "--max-waiting"},
		{"log format", []string{"--redis-addr", "r:1", "--log-format", "xml"}, "--log-format"},
		{"log level", []string{"--redis-addr", "r:1", "--log-level", "loud"}, "--log-level"},
		{"otlp endpoint", []string{"--redis-addr", "r:1", "--otlp-endpoint", "collector"}, "--otlp-endpoint"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parse(t, tt.args...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one naming %q", err, tt.want)
			}
		})
	}
}

func TestBadEnvironmentIsAnError(t *testing.T) {
	t.Setenv("MESH_EXTPROC_RESYNC", "soon")
	if _, err := parse(t, "--redis-addr", "r:1"); err == nil || !strings.Contains(err.Error(), "MESH_EXTPROC_RESYNC") {
		t.Fatalf("error %v, want one naming the variable", err)
	}
}

// TestRunStopsCleanlyWhenCancelled, with tracing off and on: every goroutine ends (goleak).
func TestRunStopsCleanlyWhenCancelled(t *testing.T) {
	srv := redistest.Start(t)
	col := otlptest.Start(t)
	for _, extra := range [][]string{nil, {"--otlp-endpoint", col.Addr}} {
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		var stderr strings.Builder
		go func() {
			done <- run(ctx, append([]string{"--redis-addr", srv.Addr, "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"}, extra...), &syncWriter{w: &stderr})
		}()
		time.Sleep(300 * time.Millisecond)
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("run %v: %v", extra, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("run %v did not return after cancellation", extra)
		}
	}
}

type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
