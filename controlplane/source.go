// Package controlplane keeps the gateway Envoy's configuration equal to the mesh's state:
// it watches the registry file, publishes the registry to Redis, follows residency in Redis,
// and pushes every change through the xDS server.
package controlplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"

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

// WatchRegistry calls onValid with the registry each time the file at path changes and
// validates, and onInvalid with the reason when it does not (the caller keeps the last good
// one). It watches the file's directory, so editors that replace the file and Kubernetes
// ConfigMap symlink swaps are both seen. Returns nil when ctx ends.
func WatchRegistry(ctx context.Context, path string, log *slog.Logger, onValid func(*registry.Registry), onInvalid func(error)) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	defer w.Close()
	if err := w.Add(filepath.Dir(path)); err != nil {
		return fmt.Errorf("watch %s: %w", filepath.Dir(path), err)
	}
	var pending <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return errors.New("registry watcher closed")
			}
			if filepath.Base(ev.Name) == filepath.Base(path) || filepath.Base(ev.Name) == "..data" {
				// Writers touch a file several times; read once they are done.
				pending = time.After(100 * time.Millisecond)
			}
		case err, ok := <-w.Errors:
			if !ok {
				return errors.New("registry watcher closed")
			}
			log.WarnContext(ctx, "registry watcher", "error", err)
		case <-pending:
			pending = nil
			r, err := LoadRegistry(path)
			if err != nil {
				onInvalid(err)
				continue
			}
			onValid(r)
		}
	}
}
