package triton

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/runtime-worker/agent"
)

var v1 = placement.ModelVersion{Name: "m", Version: "1"}

// modelDir writes a Triton model directory with version 1 holding model.py and a nested
// file, and returns it.
func modelDir(t *testing.T) string {
	t.Helper()
	src := filepath.Join(t.TempDir(), "m")
	for path, body := range map[string]string{
		"config.pbtxt":          "backend: \"python\"\n",
		"1/model.py":            "print('hi')\n",
		"1/assets/labels.txt":   "a\nb\n",
		"2/not-this-version.py": "x\n",
	} {
		must(t, os.MkdirAll(filepath.Dir(filepath.Join(src, path)), 0o755))
		must(t, os.WriteFile(filepath.Join(src, path), []byte(body), 0o644))
	}
	return src
}

func TestInstallCopiesTheVersionAndPinsTheConfig(t *testing.T) {
	src := modelDir(t)
	dst := filepath.Join(t.TempDir(), "m")
	must(t, Server{}.Install(v1, agent.Files{Path: src, GPU: 0}, dst))
	for path, want := range map[string]string{"1/model.py": "print('hi')\n", "1/assets/labels.txt": "a\nb\n"} {
		got, err := os.ReadFile(filepath.Join(dst, path))
		if err != nil || string(got) != want {
			t.Errorf("%s: %q, %v; want %q", path, got, err, want)
		}
	}
	config, err := os.ReadFile(filepath.Join(dst, "config.pbtxt"))
	if err != nil || !strings.Contains(string(config), "gpus: [ 0 ]") {
		t.Errorf("config.pbtxt %q, %v; want it pinned to GPU 0", config, err)
	}
	if _, err := os.Stat(filepath.Join(dst, "2")); !os.IsNotExist(err) {
		t.Errorf("another version installed: %v", err)
	}
	if err := (Server{}).Install(placement.ModelVersion{Name: "m", Version: "v1"}, agent.Files{Path: src, GPU: -1}, t.TempDir()+"/x"); err == nil ||
		!strings.Contains(err.Error(), "positive integers") {
		t.Errorf("a version Triton cannot name: %v", err)
	}
}

// TestInstallRefusesSymlinks: a link could lead out of the model's files, so install fails.
func TestInstallRefusesSymlinks(t *testing.T) {
	src := modelDir(t)
	outside := filepath.Join(t.TempDir(), "secret")
	must(t, os.WriteFile(outside, []byte("secret"), 0o600))
	must(t, os.Symlink(outside, filepath.Join(src, "1", "link")))
	err := Server{}.Install(v1, agent.Files{Path: src, GPU: -1}, filepath.Join(t.TempDir(), "m"))
	if err == nil || !strings.Contains(err.Error(), "only regular files are installed") {
		t.Fatalf("install with a symlink: %v, want a refusal", err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
