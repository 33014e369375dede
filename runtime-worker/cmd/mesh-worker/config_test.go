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
	if cfg.Capacity != 3<<30 || cfg.LoadConcurrency != 7 || cfg.Storage.ModelRoots != "/from/flag" {
		t.Fatalf("capacity %d, load concurrency %d, roots %q", cfg.Capacity, cfg.LoadConcurrency, cfg.Storage.ModelRoots)
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
	fs.Parse([]string{"--load-concurrency", "0", "--log-format", "xml", "--log-level", "loud", "--labels", "novalue", "--otlp-endpoint", "collector", "--disk-cache-size", "0", "--storage-retries", "-1"})
	err := cfg.Validate()
	if err == nil {
		t.Fatal("Validate accepted a config without a runtime library")
	}
	for _, want := range []string{"--disk-cache-size", "--storage-retries", "--ort-library", "--load-concurrency", "--log-format", "--log-level", "--labels", "--otlp-endpoint"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}

func TestGPUCapacity(t *testing.T) {
	parse := func(args ...string) (Config, error) {
		var cfg Config
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		cfg.RegisterFlags(fs)
		if err := fs.Parse(append([]string{"--model-roots", "/m"}, args...)); err != nil {
			return cfg, err
		}
		return cfg, cfg.Validate()
	}
	triton := []string{"--runtime", "triton", "--triton-grpc", "h:1", "--triton-http", "h:2", "--triton-repository", "/r"}
	cfg, err := parse(append(triton, "--gpu-capacity", "22GiB, 10GiB")...)
	if err != nil || len(cfg.GPUCapacity) != 2 || cfg.GPUCapacity[0] != 22<<30 || cfg.GPUCapacity[1] != 10<<30 {
		t.Fatalf("--gpu-capacity 22GiB,10GiB: %v, %v", cfg.GPUCapacity, err)
	}
	bad := []struct {
		args []string
		want string
	}{
		{append(triton, "--gpu-capacity", "22GB"), "not a size"},
		{append(triton, "--gpu-capacity", "0,1GiB"), "must be positive"},
		{append(triton, "--gpu-capacity", "1GiB", "--triton-metrics", "http://h:3/metrics"), "give one"},
		{[]string{"--ort-library", "/l.so", "--gpu-capacity", "1GiB"}, "need --runtime triton"},
		{[]string{"--ort-library", "/l.so", "--advertise-host", "worker-0.workers"}, "an IP address"},
		{[]string{"--ort-library", "/l.so", "--advertise-host", "[fd00::5]"}, "no brackets"},
	}
	for _, tt := range bad {
		if _, err := parse(tt.args...); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v: %v, want an error containing %q", tt.args, err, tt.want)
		}
	}
}

func TestAdvertised(t *testing.T) {
	tests := []struct {
		configured, host, addr, want string
	}{
		{"10.0.0.9:9000", "10.0.0.2", "[::]:8000", "10.0.0.9:9000"}, // given whole, taken as is
		{"", "10.0.0.2", "[::]:8000", "10.0.0.2:8000"},              // a wildcard listener
		{"", "10.0.0.2", "0.0.0.0:8010", "10.0.0.2:8010"},
		{"", "fd00::5", ":8001", "[fd00::5]:8001"},           // Triton beside the worker, IPv6 pod
		{"", "10.0.0.2", "127.0.0.1:8000", "127.0.0.1:8000"}, // a specific address stays
		{"", "fd00::5", "10.0.0.3:8001", "10.0.0.3:8001"},
	}
	for _, tt := range tests {
		if got := advertised(tt.configured, tt.host, tt.addr); got != tt.want {
			t.Errorf("advertised(%q, %q, %q) = %q, want %q", tt.configured, tt.host, tt.addr, got, tt.want)
		}
	}
}
