package mlserver

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/runtime-worker/agent"
)

// TestInstall: a one-file model is installed under its format's name (the disk tier keeps it
// as model.onnx whatever it is) beside settings naming the model, its version and the
// runtime of its format; a directory of one file points at that file.
func TestInstall(t *testing.T) {
	src := t.TempDir()
	for name, body := range map[string]string{"sk": "pickle", "js": " {\n \"learner\": {}}", "ub": "{L\x00\x00", "lg": "tree\n"} {
		if err := os.WriteFile(filepath.Join(src, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(src, "dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "dir", "booster.txt"), []byte("tree\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	m := placement.ModelVersion{Name: "m", Version: "3"}
	tests := []struct{ src, format, file, impl string }{
		{"sk", "sklearn", "model.joblib", "mlserver_sklearn.SKLearnModel"},
		{"js", "xgboost", "model.json", "mlserver_xgboost.XGBoostModel"},
		{"ub", "xgboost", "model.ubj", "mlserver_xgboost.XGBoostModel"},
		{"lg", "lightgbm", "model.txt", "mlserver_lightgbm.LightGBMModel"},
		{"dir", "lightgbm", "booster.txt", "mlserver_lightgbm.LightGBMModel"},
	}
	for _, tt := range tests {
		dir := filepath.Join(t.TempDir(), "m")
		if err := (&Server{}).Install(m, agent.Files{Path: filepath.Join(src, tt.src), Format: tt.format}, dir); err != nil {
			t.Fatalf("%s: %v", tt.src, err)
		}
		if _, err := os.Stat(filepath.Join(dir, tt.file)); err != nil {
			t.Errorf("%s: %v", tt.src, err)
		}
		body, err := os.ReadFile(filepath.Join(dir, "model-settings.json"))
		if err != nil {
			t.Fatal(err)
		}
		var got settings
		if err := json.Unmarshal(body, &got); err != nil {
			t.Fatal(err)
		}
		want := settings{Name: "m", Implementation: tt.impl, Parameters: parameters{URI: "./" + tt.file, Version: "3"}}
		if got != want {
			t.Errorf("%s: settings %+v, want %+v", tt.src, got, want)
		}
	}
	// A model-settings.json inside the model's files would be loaded by MLServer as a model
	// of its own, of any runtime class: refused.
	nested := filepath.Join(t.TempDir(), "nested")
	if err := os.MkdirAll(filepath.Join(nested, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	for path, body := range map[string]string{"model.joblib": "pickle", "sub/model-settings.json": `{"name": "other", "implementation": "evil.Model"}`} {
		if err := os.WriteFile(filepath.Join(nested, path), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	err := (&Server{}).Install(m, agent.Files{Path: nested, Format: "sklearn"}, filepath.Join(t.TempDir(), "m"))
	if err == nil || !strings.Contains(err.Error(), "sub/model-settings.json") {
		t.Errorf("a nested model-settings.json: %v, want a refusal naming it", err)
	}
	for format, want := range map[string]string{"": "needs the model's format", "onnx": `not "onnx"`} {
		err := (&Server{}).Install(m, agent.Files{Path: filepath.Join(src, "sk"), Format: format}, filepath.Join(t.TempDir(), "m"))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("format %q: %v, want %q", format, err, want)
		}
	}
}
