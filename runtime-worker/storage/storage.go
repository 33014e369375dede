// Package storage fetches model files for the worker. It reads only from inside configured
// roots and copies what it fetches into a cache directory the worker owns, so a model file
// replaced at its source while a load runs can never be read half-written.
package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/modelmesh/mesh/internal/placement"
)

var (
	// ErrBadURI reports a storage URI the worker cannot use: wrong scheme, relative path,
	// traversal, or a path outside every root. The edge maps it to INVALID_ARGUMENT.
	ErrBadURI = errors.New("invalid storage uri")
	// ErrNotFound reports a URI inside the roots with no model behind it.
	ErrNotFound = errors.New("model files not found")
)

// ModelFile is the name looked for when a URI names a directory.
const ModelFile = "model.onnx"

// Store resolves file:// URIs against its roots and caches fetched models. Safe for
// concurrent use; Fetch and Remove for one model version must not race each other (the
// worker's agent serialises them per model).
type Store struct {
	roots    []string
	cacheDir string
}

// New returns a Store reading from roots and caching in cacheDir, which it creates.
func New(roots []string, cacheDir string) (*Store, error) {
	if len(roots) == 0 {
		return nil, errors.New("storage: at least one model root is needed")
	}
	s := &Store{cacheDir: cacheDir}
	for _, r := range roots {
		real, err := filepath.EvalSymlinks(r)
		if err != nil {
			return nil, fmt.Errorf("storage root %q: %w", r, err)
		}
		abs, err := filepath.Abs(real)
		if err != nil {
			return nil, fmt.Errorf("storage root %q: %w", r, err)
		}
		s.roots = append(s.roots, abs)
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return nil, fmt.Errorf("storage cache: %w", err)
	}
	return s, nil
}

// Resolve maps a URI to the real path of the model file or directory it names. It rejects
// any scheme but file, relative paths, ".." segments, percent-escapes that hide separators,
// and paths that, with every symlink followed, end outside the roots.
func (s *Store) Resolve(uri string) (string, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return "", fmt.Errorf("%w: %q: %v", ErrBadURI, uri, err)
	}
	switch {
	case u.Scheme != "file":
		return "", fmt.Errorf("%w: %q: scheme %q not supported (file:// only)", ErrBadURI, uri, u.Scheme)
	case u.Host != "" && u.Host != "localhost":
		return "", fmt.Errorf("%w: %q: file URIs name no host", ErrBadURI, uri)
	case u.RawQuery != "" || u.Fragment != "":
		return "", fmt.Errorf("%w: %q: query and fragment not allowed", ErrBadURI, uri)
	case strings.Contains(u.RawPath, "%2f") || strings.Contains(u.RawPath, "%2F") || strings.ContainsRune(u.Path, 0):
		return "", fmt.Errorf("%w: %q: escaped separators not allowed", ErrBadURI, uri)
	case !strings.HasPrefix(u.Path, "/"):
		return "", fmt.Errorf("%w: %q: path must be absolute", ErrBadURI, uri)
	}
	for _, seg := range strings.Split(u.Path, "/") {
		if seg == ".." {
			return "", fmt.Errorf("%w: %q: \"..\" not allowed", ErrBadURI, uri)
		}
	}
	clean := filepath.Clean(u.Path)
	if !s.inRoots(clean) {
		return "", fmt.Errorf("%w: %q is outside the model roots", ErrBadURI, uri)
	}
	real, err := filepath.EvalSymlinks(clean)
	if errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("%w: %s", ErrNotFound, clean)
	}
	if err != nil {
		return "", fmt.Errorf("%w: %q: %v", ErrBadURI, uri, err)
	}
	if !s.inRoots(real) {
		return "", fmt.Errorf("%w: %q resolves through a symlink to outside the model roots", ErrBadURI, uri)
	}
	fi, err := os.Stat(real)
	if err != nil {
		return "", fmt.Errorf("%w: %s: %v", ErrNotFound, clean, err)
	}
	if fi.IsDir() {
		return real, nil
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("%w: %q is not a regular file", ErrBadURI, uri)
	}
	return real, nil
}

func (s *Store) inRoots(p string) bool {
	for _, r := range s.roots {
		if p == r || strings.HasPrefix(p, r+string(filepath.Separator)) {
			return true
		}
	}
	return false
}

// Fetched is a model copied into the cache.
type Fetched struct {
	Path  string
	Bytes int64
}

// Fetch resolves uri and copies what it names into the cache under m's own directory: a
// file as ModelFile, a directory as a tree of its regular files (a Triton model directory,
// or a directory holding ModelFile). Symlinks inside a directory are refused. A reader never
// sees a partial copy: it is built beside and renamed into place. Cancelling ctx stops it.
func (s *Store) Fetch(ctx context.Context, uri string, m placement.ModelVersion) (Fetched, error) {
	src, err := s.Resolve(uri)
	if err != nil {
		return Fetched{}, err
	}
	dir := s.dir(m)
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return Fetched{}, fmt.Errorf("cache %s: %w", m, err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".fetch-*")
	if err != nil {
		return Fetched{}, fmt.Errorf("cache %s: %w", m, err)
	}
	defer os.RemoveAll(tmp) // nothing left after the rename
	var n int64
	fi, err := os.Stat(src)
	if err != nil {
		return Fetched{}, fmt.Errorf("%w: %v", ErrNotFound, err)
	}
	if fi.IsDir() {
		err = filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(src, p)
			switch {
			case d.IsDir():
				return os.MkdirAll(filepath.Join(tmp, rel), 0o755)
			case d.Type().IsRegular():
				c, err := copyFile(ctx, p, filepath.Join(tmp, rel))
				n += c
				return err
			}
			return fmt.Errorf("%w: %s is not a regular file or directory", ErrBadURI, p)
		})
	} else {
		n, err = copyFile(ctx, src, filepath.Join(tmp, ModelFile))
	}
	if err != nil {
		return Fetched{}, fmt.Errorf("copy %s into cache: %w", src, err)
	}
	os.RemoveAll(dir)
	if err := os.Rename(tmp, dir); err != nil {
		return Fetched{}, fmt.Errorf("cache %s: %w", m, err)
	}
	path := dir
	if !fi.IsDir() {
		path = filepath.Join(dir, ModelFile)
	}
	return Fetched{Path: path, Bytes: n}, nil
}

func copyFile(ctx context.Context, src, dst string) (int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(out, readerWithContext{ctx, in})
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return n, err
}

// Remove deletes m's cached files; removing what is not cached is not an error.
func (s *Store) Remove(m placement.ModelVersion) error {
	return os.RemoveAll(s.dir(m))
}

// dir is safe to build from ids: the id grammar has no separators and no "..".
func (s *Store) dir(m placement.ModelVersion) string {
	return filepath.Join(s.cacheDir, m.Name, m.Version)
}

type readerWithContext struct {
	ctx context.Context
	r   io.Reader
}

func (r readerWithContext) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}
