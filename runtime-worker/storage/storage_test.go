package storage

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
	s = newStore(t, []string{root}, 1<<20)
	return root, outside, s
}

// newStore is a Store over roots with a disk tier of diskBytes in a fresh directory.
func newStore(t testing.TB, roots []string, diskBytes int64) *Store {
	t.Helper()
	s, err := New(Options{Roots: roots, CacheDir: filepath.Join(t.TempDir(), "tier"), DiskBytes: diskBytes, Backoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func (s *Store) resolveFile(uri string) (string, error) {
	return s.remotes["file"].(*fileStore).resolve(uri)
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
			got, err := s.resolveFile(tt.give)
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
	s := newStore(f, []string{root}, 1<<20)
	for _, seed := range []string{"file://" + root + "/m", "file://" + root + "/../secret", "file:///etc/passwd", "file://" + root + "/m/%2e%2e/%2e%2e/secret"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, uri string) {
		got, err := s.resolveFile(uri)
		if err != nil {
			return
		}
		real, err := filepath.EvalSymlinks(got)
		if err != nil {
			t.Fatalf("Resolve(%q) = %q, which does not resolve: %v", uri, got, err)
		}
		if root := s.remotes["file"].(*fileStore).roots[0]; !strings.HasPrefix(real, root+string(filepath.Separator)) {
			t.Fatalf("Resolve(%q) = %q, outside the root %s", uri, real, root)
		}
	})
}
