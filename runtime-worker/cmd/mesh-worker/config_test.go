package main

import (
	"flag"
	"io"
	"strings"
	"testing"

	"github.com/modelmesh/mesh/internal/cli"
)

func TestByteSize(t *testing.T) {
	tests := []struct {
		give string
		want int64
		ok   bool
	}{
		{"1024", 1024, true},
		{"512MiB", 512 << 20, true},
		{"2GiB", 2 << 30, true},
		{"4KiB", 4 << 10, true},
		{"1.5GiB", 0, false},
		{"-1", 0, false},
		{"10GB", 0, false},
		{"", 0, false},
	}
	for _, tt := range tests {
		var b byteSize
		err := b.Set(tt.give)
		if (err == nil) != tt.ok || (tt.ok && int64(b) != tt.want) {
			t.Errorf("Set(%q) = %d, %v; want %d, ok=%v", tt.give, b, err, tt.want, tt.ok)
		}
	}
}

func TestEnvironmentSetsFlagsTheCommandLineLeaves(t *testing.T) {
	t.Setenv("MESH_WORKER_CAPACITY", "3GiB")
	t.Setenv("MESH_WORKER_MODEL_ROOTS", "/from/env")
	t.Setenv("MESH_WORKER_LOAD_CONCURRENCY", "7")
	var cfg Config
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cfg.RegisterFlags(fs)
	if err := fs.Parse([]string{"--model-roots", "/from/flag"}); err != nil {
		t.Fatal(err)
	}
	if err := cli.ApplyEnv(fs, envPrefix); err != nil {
		t.Fatal(err)
	}
	if cfg.Capacity != 3<<30 || cfg.LoadConcurrency != 7 || cfg.ModelRoots != "/from/flag" {
		t.Fatalf("capacity %d, load concurrency %d, roots %q", cfg.Capacity, cfg.LoadConcurrency, cfg.ModelRoots)
	}
}

func TestBadEnvironmentIsAnError(t *testing.T) {
	t.Setenv("MESH_WORKER_HEARTBEAT", "soon")
	var cfg Config
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	fs.Parse(nil)
	if err := cli.ApplyEnv(fs, envPrefix); err == nil || !strings.Contains(err.Error(), "MESH_WORKER_HEARTBEAT") {
		t.Fatalf("applyEnv = %v, want an error naming the variable", err)
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	var cfg Config
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	fs.Parse([]string{"--load-concurrency", "0", "--log-format", "xml", "--labels", "novalue"})
	err := cfg.Validate()
	if err == nil {
		t.Fatal("Validate accepted a config without roots or runtime library")
	}
	for _, want := range []string{"--model-roots", "--ort-library", "--load-concurrency", "--log-format", "--labels"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}
