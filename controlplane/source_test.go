package controlplane

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/internal/registry"
	"github.com/modelmesh/mesh/internal/residency"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const one = "models:\n  - name: iris\n    versions: [{version: \"1\", storageUri: \"file:///m\"}]\n"

func TestWatchRegistryKeepsTheLastGoodOne(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "registry.yaml")
	if err := os.WriteFile(path, []byte(one), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	valid := make(chan *registry.Registry, 4)
	invalid := make(chan error, 4)
	done := make(chan error, 1)
	go func() {
		done <- WatchRegistry(ctx, path, slog.New(slog.NewTextHandler(io.Discard, nil)),
			func(r *registry.Registry) { valid <- r }, func(err error) { invalid <- err })
	}()
	// The file as it is, once the watch is in place.
	select {
	case r := <-valid:
		if len(r.Models) != 1 {
			t.Fatalf("first read %d models, want 1", len(r.Models))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the file was not read once the watch was in place")
	}
	// An editor writes a broken file: rejected with the reason, nothing applied.
	if err := os.WriteFile(path, []byte("models:\n  - name: bad..name\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-invalid:
		if !strings.Contains(err.Error(), "bad..name") {
			t.Fatalf("rejection %v does not name the model", err)
		}
	case r := <-valid:
		t.Fatalf("a broken registry was applied: %v", r)
	case <-time.After(5 * time.Second):
		t.Fatal("no verdict on the broken file")
	}
	// Then replaces it atomically with a good one: applied.
	tmp := filepath.Join(dir, ".tmp")
	if err := os.WriteFile(tmp, []byte(one+"  - name: digits\n    versions: [{version: \"1\", storageUri: \"file:///d\"}]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-valid:
		if len(r.Models) != 2 {
			t.Fatalf("applied %d models, want 2", len(r.Models))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the good file was not applied")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestRoutedOfListsReadyRegisteredReplicas(t *testing.T) {
	reg, err := registry.Parse([]byte(one))
	if err != nil {
		t.Fatal(err)
	}
	iris := placement.ModelVersion{Name: "iris", Version: "1"}
	snap := residency.Snapshot{
		Workers: map[string]residency.Worker{"w1": {ID: "w1"}, "w2": {ID: "w2"}},
		Replicas: map[string]map[placement.ModelVersion]residency.Replica{
			"w1": {iris: {State: placement.StateReady}, {Name: "unregistered", Version: "1"}: {State: placement.StateReady}},
			"w2": {iris: {State: placement.StateDraining}},
		},
	}
	got := routedOf(reg, snap)
	if len(got["w1"]) != 1 || got["w1"][0] != "iris:1" || len(got["w2"]) != 0 {
		t.Fatalf("routed %v: want iris on w1 only (draining and unregistered are not routed)", got)
	}
}
