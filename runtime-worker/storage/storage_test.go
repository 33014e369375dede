package storage

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/modelmesh/mesh/internal/placement"
)

// tree makes a root with a model, a sibling directory outside it, and symlinks both ways.
func tree(t *testing.T) (root, outside string, s *Store) {
	t.Helper()
	base := t.TempDir()
	root = filepath.Join(base, "models")
	outside = filepath.Join(base, "secret")
	for _, d := range []string{filepath.Join(root, "iris", "1"), outside} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write := func(p, body string) {
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(root, "iris", "1", "model.onnx"), "onnx bytes")
	write(filepath.Join(outside, "model.onnx"), "not yours")
	must(t, os.Symlink(filepath.Join(outside, "model.onnx"), filepath.Join(root, "escape.onnx")))
	must(t, os.Symlink(outside, filepath.Join(root, "escape-dir")))
	must(t, os.Symlink(filepath.Join(root, "iris", "1", "model.onnx"), filepath.Join(root, "inside-link.onnx")))
	s, err := New([]string{root}, filepath.Join(base, "cache"))
	must(t, err)
	return root, outside, s
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestResolve(t *testing.T) {
	t.Parallel()
	root, outside, s := tree(t)
	model := filepath.Join(root, "iris", "1", "model.onnx")
	tests := []struct {
		name    string
		give    string
		want    string
		wantErr error
	}{
		{"file", "file://" + model, model, nil},
		{"directory with model.onnx", "file://" + filepath.Join(root, "iris", "1"), model, nil},
		{"localhost host", "file://localhost" + model, model, nil},
		{"symlink inside roots", "file://" + filepath.Join(root, "inside-link.onnx"), model, nil},
		{"dot-dot traversal", "file://" + root + "/iris/../../secret/model.onnx", "", ErrBadURI},
		{"dot-dot even when it stays inside", "file://" + root + "/iris/../iris/1/model.onnx", "", ErrBadURI},
		{"absolute path outside", "file://" + filepath.Join(outside, "model.onnx"), "", ErrBadURI},
		{"root prefix is not a root", "file://" + root + "-evil/model.onnx", "", ErrBadURI},
		{"symlink to a file outside", "file://" + filepath.Join(root, "escape.onnx"), "", ErrBadURI},
		{"symlink to a directory outside", "file://" + filepath.Join(root, "escape-dir", "model.onnx"), "", ErrBadURI},
		{"escaped separator", "file://" + root + "/iris%2F1/model.onnx", "", ErrBadURI},
		{"other scheme", "s3://bucket/model.onnx", "", ErrBadURI},
		{"no scheme", model, "", ErrBadURI},
		{"relative path", "file:models/iris", "", ErrBadURI},
		{"remote host", "file://example.org" + model, "", ErrBadURI},
		{"query", "file://" + model + "?x=1", "", ErrBadURI},
		{"missing file", "file://" + filepath.Join(root, "nope.onnx"), "", ErrNotFound},
		{"directory without model", "file://" + filepath.Join(root, "iris"), "", ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := s.Resolve(tt.give)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Resolve(%q) error = %v, want %v", tt.give, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("Resolve(%q) = %q, %v; want %q", tt.give, got, err, tt.want)
			}
		})
	}
}

func TestFetchCopiesIntoCacheAndRemove(t *testing.T) {
	t.Parallel()
	root, _, s := tree(t)
	m := placement.ModelVersion{Name: "iris", Version: "1"}
	f, err := s.Fetch(context.Background(), "file://"+filepath.Join(root, "iris", "1"), m)
	must(t, err)
	b, err := os.ReadFile(f.Path)
	must(t, err)
	if string(b) != "onnx bytes" || f.Bytes != int64(len(b)) {
		t.Fatalf("cached %q (%d bytes)", b, f.Bytes)
	}
	if !strings.HasPrefix(f.Path, s.cacheDir) {
		t.Fatalf("cached at %s, outside the cache %s", f.Path, s.cacheDir)
	}
	must(t, s.Remove(m))
	if _, err := os.Stat(f.Path); !os.IsNotExist(err) {
		t.Fatalf("cached file still there after Remove: %v", err)
	}
}

func TestFetchHonoursCancellation(t *testing.T) {
	t.Parallel()
	root, _, s := tree(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := s.Fetch(ctx, "file://"+filepath.Join(root, "iris", "1"), placement.ModelVersion{Name: "iris", Version: "1"})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Fetch with a cancelled context = %v", err)
	}
}

func FuzzResolve(f *testing.F) {
	base := f.TempDir()
	root := filepath.Join(base, "models")
	must := func(err error) {
		if err != nil {
			f.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "m"), 0o755))
	must(os.WriteFile(filepath.Join(root, "m", "model.onnx"), []byte("x"), 0o644))
	must(os.WriteFile(filepath.Join(base, "secret"), []byte("x"), 0o644))
	s, err := New([]string{root}, filepath.Join(base, "cache"))
	must(err)
	for _, seed := range []string{"file://" + root + "/m", "file://" + root + "/../secret", "file:///etc/passwd", "file://" + root + "/m/%2e%2e/%2e%2e/secret"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, uri string) {
		got, err := s.Resolve(uri)
		if err != nil {
			return
		}
		real, err := filepath.EvalSymlinks(got)
		if err != nil {
			t.Fatalf("Resolve(%q) = %q, which does not resolve: %v", uri, got, err)
		}
		if !strings.HasPrefix(real, s.roots[0]+string(filepath.Separator)) {
			t.Fatalf("Resolve(%q) = %q, outside the root %s", uri, real, s.roots[0])
		}
	})
}
