package istio

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const (
	irisVS = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: iris, namespace: models}\n" +
		"spec: {hosts: [iris], http: [{route: [{destination: {host: iris, subset: canary}}]}]}\n"
	irisDR = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: iris, namespace: models}\n" +
		"spec: {host: iris, subsets: [{name: canary, labels: {version: \"2\"}}]}\n"
)

func write(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// replace writes path the way editors do: a new file renamed over the old one.
func replace(t *testing.T, path, data string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(filepath.Dir(path)), "."+filepath.Base(path)+".tmp")
	write(t, tmp, data)
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// watchDir runs WatchDir on dir until the test ends, and returns its updates.
func watchDir(t *testing.T, dir string) <-chan Objects {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	updates := make(chan Objects, 64)
	done := make(chan error, 1)
	go func() { done <- WatchDir(ctx, dir, discard(), func(o Objects) { updates <- o }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return updates
}

// await reads updates until one satisfies ok, failing the test after a deadline.
func await(t *testing.T, updates <-chan Objects, what string, ok func(Objects) bool) Objects {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case o := <-updates:
			if ok(o) {
				return o
			}
		case <-deadline:
			t.Fatalf("no update with %s", what)
		}
	}
}

func names(o Objects) string {
	var out []string
	for _, vs := range o.VirtualServices {
		out = append(out, "vs:"+vs.Name+":"+vs.Spec.GetHttp()[0].GetRoute()[0].GetDestination().GetSubset())
	}
	for _, dr := range o.DestinationRules {
		out = append(out, "dr:"+dr.Name)
	}
	return strings.Join(out, ",")
}

func TestWatchDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "istio")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, "a.yaml"), irisVS)
	write(t, filepath.Join(dir, "b.yml"), strings.Replace(irisDR, "subsets", "subsetz", 1))
	write(t, filepath.Join(dir, "notes.txt"), "not read")
	updates := watchDir(t, dir)

	// A file that does not parse is reported with its name and reason; the other works.
	o := <-updates
	if names(o) != "vs:iris:canary" || len(o.Problems) != 1 || o.Problems[0].File != filepath.Join(dir, "b.yml") ||
		!strings.Contains(o.Problems[0].Error, "subsetz") {
		t.Fatalf("first read: objects %q, problems %+v", names(o), o.Problems)
	}

	// Fixed by an editor's rename: both files count, no problem left.
	replace(t, filepath.Join(dir, "b.yml"), irisDR)
	await(t, updates, "the fixed file", func(o Objects) bool { return names(o) == "vs:iris:canary,dr:iris" && len(o.Problems) == 0 })

	// Written in place.
	write(t, filepath.Join(dir, "a.yaml"), strings.Replace(irisVS, "canary", "stable", 1))
	await(t, updates, "the edit", func(o Objects) bool { return names(o) == "vs:iris:stable,dr:iris" })

	// The same object in a second file: the later file is reported, the first one stays.
	write(t, filepath.Join(dir, "c.yaml"), irisVS)
	o = await(t, updates, "the duplicate", func(o Objects) bool { return len(o.Problems) == 1 })
	if names(o) != "vs:iris:stable,dr:iris" || !strings.Contains(o.Problems[0].Error, "VirtualService models/iris is already defined in "+filepath.Join(dir, "a.yaml")) {
		t.Fatalf("duplicate: objects %q, problems %+v", names(o), o.Problems)
	}

	// The whole directory replaced by a rename.
	next := dir + ".next"
	if err := os.Mkdir(next, 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(next, "all.yaml"), irisDR+"---\n"+strings.Replace(irisVS, "canary", "v9", 1))
	if err := os.Rename(dir, dir+".old"); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(next, dir); err != nil {
		t.Fatal(err)
	}
	await(t, updates, "the new directory", func(o Objects) bool { return names(o) == "vs:iris:v9,dr:iris" && len(o.Problems) == 0 })
	// ...and watched in its turn.
	write(t, filepath.Join(dir, "all.yaml"), irisVS)
	await(t, updates, "an edit in the new directory", func(o Objects) bool { return names(o) == "vs:iris:canary" })

	// Removed: nothing is left in force, and the reason is given.
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	await(t, updates, "the removal", func(o Objects) bool {
		return names(o) == "" && len(o.Problems) == 1 && o.Problems[0].File == dir
	})
	// Created again: seen through the parent.
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, "a.yaml"), irisVS)
	await(t, updates, "the directory back", func(o Objects) bool { return names(o) == "vs:iris:canary" && len(o.Problems) == 0 })
}

// TestWatchDirConfigMap follows the layout of a Kubernetes ConfigMap volume: files are links
// through ..data, which the kubelet swaps atomically to a new directory.
func TestWatchDirConfigMap(t *testing.T) {
	dir := t.TempDir()
	mkVersion := func(name, vs string) {
		if err := os.Mkdir(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		write(t, filepath.Join(dir, name, "iris.yaml"), vs)
	}
	mkVersion("..v1", irisVS)
	if err := os.Symlink("..v1", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join("..data", "iris.yaml"), filepath.Join(dir, "iris.yaml")); err != nil {
		t.Fatal(err)
	}
	updates := watchDir(t, dir)
	if o := <-updates; names(o) != "vs:iris:canary" || len(o.Problems) != 0 {
		t.Fatalf("first read: objects %q, problems %+v", names(o), o.Problems)
	}
	mkVersion("..v2", strings.Replace(irisVS, "canary", "stable", 1))
	if err := os.Symlink("..v2", filepath.Join(dir, "..data_tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	await(t, updates, "the swapped ConfigMap", func(o Objects) bool { return names(o) == "vs:iris:stable" })
}

func TestWatchDirMissing(t *testing.T) {
	t.Parallel()
	err := WatchDir(context.Background(), filepath.Join(t.TempDir(), "none", "istio"), discard(), func(Objects) {})
	if err == nil || !strings.Contains(err.Error(), "watch") {
		t.Fatalf("err = %v, want the watch set-up to fail", err)
	}
}
