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
		{"directory", "file://" + filepath.Join(root, "iris", "1"), filepath.Join(root, "iris", "1"), nil},
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
	f, err := s.Fetch(context.Background(), "file://"+filepath.Join(root, "iris", "1", "model.onnx"), m)
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

func TestFetchCopiesADirectoryTree(t *testing.T) {
	t.Parallel()
	root, _, s := tree(t)
	must(t, os.MkdirAll(filepath.Join(root, "tri", "1"), 0o755))
	must(t, os.WriteFile(filepath.Join(root, "tri", "config.pbtxt"), []byte("backend: \"python\""), 0o644))
	must(t, os.WriteFile(filepath.Join(root, "tri", "1", "model.py"), []byte("import numpy"), 0o644))
	m := placement.ModelVersion{Name: "tri", Version: "1"}
	f, err := s.Fetch(context.Background(), "file://"+filepath.Join(root, "tri"), m)
	must(t, err)
	b, err := os.ReadFile(filepath.Join(f.Path, "1", "model.py"))
	must(t, err)
	if string(b) != "import numpy" || f.Bytes != int64(len("backend: \"python\"")+len("import numpy")) {
		t.Fatalf("copied %q, %d bytes", b, f.Bytes)
	}
	// A symlink inside a directory is refused, and nothing is left in the cache.
	must(t, os.Symlink("/etc/passwd", filepath.Join(root, "tri", "1", "leak")))
	m2 := placement.ModelVersion{Name: "tri", Version: "2"}
	if _, err := s.Fetch(context.Background(), "file://"+filepath.Join(root, "tri"), m2); !errors.Is(err, ErrBadURI) {
		t.Fatalf("tree with a symlink: %v", err)
	}
	if _, err := os.Stat(s.dir(m2)); !os.IsNotExist(err) {
		t.Fatalf("a refused fetch left %s behind", s.dir(m2))
	}
}

func TestFetchHonoursCancellation(t *testing.T) {
	t.Parallel()
	root, _, s := tree(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := s.Fetch(ctx, "file://"+filepath.Join(root, "iris", "1", "model.onnx"), placement.ModelVersion{Name: "iris", Version: "1"})
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
