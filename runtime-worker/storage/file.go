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
	"strconv"
	"strings"
)

// ModelFile is the name a model stored as one file is given in its directory, and the name
// looked for when a directory is handed to the ONNX runtime.
const ModelFile = "model.onnx"

// fileStore reads file:// URIs inside its roots: a PVC mounted on every worker, or the demo
// models. Roots are kept with every symlink resolved.
type fileStore struct {
	roots []string
}

func newFileStore(roots []string) (*fileStore, error) {
	s := &fileStore{}
	for _, r := range roots {
		if r == "" {
			continue
		}
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
	return s, nil
}

// resolve maps a URI to the real path of the model file or directory it names. It rejects
// any scheme but file, relative paths, ".." segments, percent-escapes that hide separators,
// and paths that, with every symlink followed, end outside the roots.
func (s *fileStore) resolve(uri string) (string, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return "", fmt.Errorf("%w: %q: %v", ErrBadURI, uri, err)
	}
	switch {
	case u.Scheme != "file":
		return "", fmt.Errorf("%w: %q: scheme %q is not a file URI", ErrBadURI, uri, u.Scheme)
	case len(s.roots) == 0:
		return "", fmt.Errorf("%w: %q: this worker reads no local files (--model-roots is empty)", ErrBadURI, uri)
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
	if !fi.IsDir() && !fi.Mode().IsRegular() {
		return "", fmt.Errorf("%w: %q is not a regular file", ErrBadURI, uri)
	}
	return real, nil
}

func (s *fileStore) inRoots(p string) bool {
	for _, r := range s.roots {
		if p == r || strings.HasPrefix(p, r+string(filepath.Separator)) {
			return true
		}
	}
	return false
}

// list names the file, or every regular file of the directory; a symlink or other special
// file inside a directory is refused. A file's stamp is its size and modification time, so
// a model replaced in place is fetched again.
func (s *fileStore) list(_ context.Context, t target) ([]object, bool, error) {
	src, err := s.resolve(t.key)
	if err != nil {
		return nil, false, err
	}
	fi, err := os.Stat(src)
	if err != nil {
		return nil, false, fmt.Errorf("%w: %v", ErrNotFound, err)
	}
	if !fi.IsDir() {
		return []object{{rel: filepath.Base(src), key: src, size: fi.Size(), stamp: stamp(fi)}}, true, nil
	}
	var objs []object
	err = filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return nil
		case d.Type().IsRegular():
			info, err := d.Info()
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(src, p)
			objs = append(objs, object{rel: filepath.ToSlash(rel), key: p, size: info.Size(), stamp: stamp(info)})
			return nil
		}
		return fmt.Errorf("%w: %s is not a regular file or directory", ErrBadURI, p)
	})
	if err != nil {
		return nil, false, err
	}
	if len(objs) == 0 {
		return nil, false, fmt.Errorf("%w: directory %s holds no file", ErrNotFound, src)
	}
	return objs, false, nil
}

func (s *fileStore) open(_ context.Context, _ target, o object) (io.ReadCloser, checksum, error) {
	f, err := os.Open(o.key)
	if errors.Is(err, os.ErrNotExist) {
		return nil, checksum{}, fmt.Errorf("%w: %v", ErrNotFound, err)
	}
	return f, checksum{}, err
}

func stamp(fi fs.FileInfo) string {
	return strconv.FormatInt(fi.Size(), 10) + "@" + strconv.FormatInt(fi.ModTime().UnixNano(), 10)
}
