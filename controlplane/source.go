// Package controlplane keeps the gateway Envoy's configuration equal to the mesh's state:
// it watches the registry file, publishes the registry to Redis, follows residency in Redis,
// and pushes every change through the xDS server.
package controlplane

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/modelmesh/mesh/internal/fswatch"
	"github.com/modelmesh/mesh/internal/registry"
)

// LoadRegistry reads and validates the registry file.
func LoadRegistry(path string) (*registry.Registry, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read registry: %w", err)
	}
	r, err := registry.Parse(b)
	if err != nil {
		return nil, fmt.Errorf("registry %s: %w", path, err)
	}
	return r, nil
}

// WatchRegistry calls onValid with the registry once the file at path is watched (so that
// no edit since the caller read it is missed) and each time it changes and validates, and
// onInvalid with the reason when it does not (the caller keeps the last good one). It watches the file's directory, so editors that replace the file and Kubernetes
// ConfigMap symlink swaps are both seen. Returns nil when ctx ends.
func WatchRegistry(ctx context.Context, path string, log *slog.Logger, onValid func(*registry.Registry), onInvalid func(error)) error {
	relevant := func(p string) bool {
		return filepath.Base(p) == filepath.Base(path) || filepath.Base(p) == "..data"
	}
	return fswatch.Watch(ctx, []string{filepath.Dir(path)}, relevant, log, func() {
		r, err := LoadRegistry(path)
		if err != nil {
			onInvalid(err)
			return
		}
		onValid(r)
	})
}
