package istio

import (
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"

	"github.com/modelmesh/mesh/internal/fswatch"
)

// Objects is the full current set of Istio objects of a source.
type Objects struct {
	VirtualServices  []*networkingv1.VirtualService
	DestinationRules []*networkingv1.DestinationRule
	// Problems are the inputs that could not be read; the objects of the others are here.
	Problems []Problem
}

// Problem is an input that could not be read, e.g. a file that does not parse.
type Problem struct {
	File  string `json:"file"`
	Error string `json:"error"`
}

// WatchDir calls update with the objects of every *.yaml and *.yml file directly in dir
// (see Decode; hidden files are skipped), first once read and then after each change.
// A file that cannot be read or decoded is a Problem naming it, and the objects of the other
// files stay. Changes are seen when editors replace a file by a rename, when Kubernetes swaps
// a ConfigMap volume's ..data link, and when dir itself is removed or replaced (its parent
// is watched too); a dir that is gone reads as no objects and a Problem. update is called from
// the calling goroutine, only when some file changed. Returns nil when ctx ends; an error if
// dir cannot be watched at the start.
func WatchDir(ctx context.Context, dir string, log *slog.Logger, update func(Objects)) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	relevant := func(path string) bool {
		name := filepath.Base(path)
		return path == dir || filepath.Dir(path) == dir && (yamlFile(name) || name == "..data")
	}
	first, last := true, ""
	return fswatch.Watch(ctx, []string{filepath.Dir(dir), dir}, relevant, log, func() {
		objs, digest := readDir(dir)
		if first || digest != last {
			first, last = false, digest
			update(objs)
		}
	})
}

func yamlFile(name string) bool {
	return !strings.HasPrefix(name, ".") && (strings.HasSuffix(name, ".yaml") || strings.HasSuffix(name, ".yml"))
}

// readDir decodes the YAML files of dir, sorted by name. An object defined again in a later
// file is a Problem of that file. The digest changes whenever a file's name or content does.
func readDir(dir string) (Objects, string) {
	var objs Objects
	h := sha256.New()
	entries, err := os.ReadDir(dir)
	if err != nil {
		objs.Problems = append(objs.Problems, Problem{File: dir, Error: err.Error()})
		fmt.Fprintf(h, "%s\x00", err)
	}
	defined := map[string]string{} // kind namespace/name → file
	for _, e := range entries {
		path := filepath.Join(dir, e.Name())
		if !yamlFile(e.Name()) {
			continue
		}
		data, err := os.ReadFile(path) // follows ConfigMap symlinks; a directory fails here
		fmt.Fprintf(h, "%s\x00%d\x00%s\x00", e.Name(), len(data), data)
		if err != nil {
			objs.Problems = append(objs.Problems, Problem{File: path, Error: err.Error()})
			continue
		}
		vss, drs, err := Decode(data)
		if err == nil {
			err = unique(defined, path, vss, drs)
		}
		if err != nil {
			objs.Problems = append(objs.Problems, Problem{File: path, Error: err.Error()})
			continue
		}
		objs.VirtualServices = append(objs.VirtualServices, vss...)
		objs.DestinationRules = append(objs.DestinationRules, drs...)
	}
	return objs, fmt.Sprintf("%x", h.Sum(nil))
}

// unique records the objects of file in defined, or reports one defined before (in this or
// an earlier file), in which case none of the file's objects are recorded.
func unique(defined map[string]string, file string, vss []*networkingv1.VirtualService, drs []*networkingv1.DestinationRule) error {
	var keys []string
	for _, vs := range vss {
		keys = append(keys, KindVirtualService+" "+vs.Namespace+"/"+vs.Name)
	}
	for _, dr := range drs {
		keys = append(keys, KindDestinationRule+" "+dr.Namespace+"/"+dr.Name)
	}
	seen := map[string]bool{}
	for _, k := range keys {
		if prev, ok := defined[k]; ok {
			return fmt.Errorf("%s is already defined in %s", k, prev)
		}
		if seen[k] {
			return fmt.Errorf("%s is defined twice", k)
		}
		seen[k] = true
	}
	for _, k := range keys {
		defined[k] = file
	}
	return nil
}
