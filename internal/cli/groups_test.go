package cli

import (
	"context"
	"encoding/json"
	"flag"
	"io"
	"strings"
	"testing"
	"time"
)

// parseGroup declares a group's flags with register, parses args and fills the rest from
// the environment under the prefix MESH_TEST_, as Parse does; it returns the flag set.
func parseGroup(t *testing.T, register func(*flag.FlagSet), args ...string) *flag.FlagSet {
	t.Helper()
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	register(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	if err := ApplyEnv(fs, "MESH_TEST_"); err != nil {
		t.Fatal(err)
	}
	return fs
}

func TestLogDefaultsToJSONAtInfo(t *testing.T) {
	var l Log
	parseGroup(t, l.RegisterFlags)
	if err := l.Validate(); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	log := l.Logger(&out)
	log.Debug("hidden")
	log.Info("shown", "model", "iris")
	var line map[string]any
	if err := json.Unmarshal([]byte(out.String()), &line); err != nil || line["msg"] != "shown" || line["model"] != "iris" {
		t.Fatalf("logged %q (%v), want one JSON line at info", out.String(), err)
	}
}

func TestLogFromFlagsAndEnvironment(t *testing.T) {
	t.Setenv("MESH_TEST_LOG_LEVEL", "debug")
	var l Log
	parseGroup(t, l.RegisterFlags, "--log-format", "text")
	if err := l.Validate(); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	l.Logger(&out).Debug("shown", "model", "iris")
	if got := out.String(); !strings.Contains(got, "level=DEBUG msg=shown model=iris") {
		t.Fatalf("logged %q, want a text line at debug", got)
	}
}

func TestLogValidate(t *testing.T) {
	tests := []struct {
		name string
		give Log
		want []string
	}{
		{"format", Log{Format: "xml", Level: "info"}, []string{`--log-format "xml"`}},
		{"level", Log{Format: "json", Level: "loud"}, []string{`--log-level "loud"`}},
		{"both", Log{Format: "xml", Level: "loud"}, []string{"--log-format", "--log-level"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := tt.give.Validate()
			for _, want := range tt.want {
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Errorf("Validate() = %v, want an error naming %s", err, want)
				}
			}
		})
	}
}

func TestTracing(t *testing.T) {
	t.Setenv("MESH_TEST_OTLP_ENDPOINT", "collector:4317")
	var tr Tracing
	fs := parseGroup(t, func(fs *flag.FlagSet) { tr.RegisterFlags(fs, "loads") })
	if got, want := fs.Lookup("otlp-endpoint").Usage, "OTLP/gRPC collector, host:port, for spans of loads whose trace is sampled (empty: no tracing)"; got != want {
		t.Errorf("help %q, want %q", got, want)
	}
	if err := tr.Validate(); err != nil {
		t.Fatal(err)
	}
	if got := tr.Config("mesh-worker", "w1"); got.Endpoint != "collector:4317" || got.Service != "mesh-worker" || got.Instance != "w1" {
		t.Fatalf("Config = %+v", got)
	}
	if err := (Tracing{}).Validate(); err != nil {
		t.Fatalf("no endpoint (tracing off): %v", err)
	}
	if err := (Tracing{Endpoint: "collector"}).Validate(); err == nil || !strings.Contains(err.Error(), "--otlp-endpoint") {
		t.Fatalf("an endpoint without a port: %v, want an error naming --otlp-endpoint", err)
	}
}

func TestShutdownFlag(t *testing.T) {
	var s Shutdown
	fs := parseGroup(t, func(fs *flag.FlagSet) { s.RegisterFlags(fs, 15*time.Second, "longest wait") })
	if f := fs.Lookup("shutdown-timeout"); s.Timeout != 15*time.Second || f.DefValue != "15s" || f.Usage != "longest wait" {
		t.Fatalf("default %s, flag %+v", s.Timeout, f)
	}
	t.Setenv("MESH_TEST_SHUTDOWN_TIMEOUT", "3s")
	parseGroup(t, func(fs *flag.FlagSet) { s.RegisterFlags(fs, 15*time.Second, "longest wait") })
	if s.Timeout != 3*time.Second {
		t.Fatalf("from the environment: %s, want 3s", s.Timeout)
	}
}

type key struct{}

// TestShutdownContext: the shutdown outlives the binary's context, keeps its values and
// ends at the timeout.
func TestShutdownContext(t *testing.T) {
	ctx, stop := context.WithCancel(context.WithValue(t.Context(), key{}, "v"))
	stop()
	sctx, cancel := Shutdown{Timeout: time.Hour}.Context(ctx)
	defer cancel()
	if sctx.Err() != nil || sctx.Value(key{}) != "v" {
		t.Fatalf("shutdown context: err %v, value %v; want running, with the binary's values", sctx.Err(), sctx.Value(key{}))
	}
	if deadline, ok := sctx.Deadline(); !ok || time.Until(deadline) < 59*time.Minute {
		t.Fatalf("deadline %v, %v; want an hour from now", deadline, ok)
	}
	sctx, cancel = Shutdown{Timeout: time.Millisecond}.Context(ctx)
	defer cancel()
	<-sctx.Done() // ends by itself at the timeout
	if sctx.Err() != context.DeadlineExceeded {
		t.Fatalf("after the timeout: %v", sctx.Err())
	}
}
