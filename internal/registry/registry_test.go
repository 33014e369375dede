package registry

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const good = `
models:
  - name: iris
    versions:
      - version: "1"
        storageUri: file:///models/iris/1
  - name: digits
    runtime: triton
    pinned: true
    minReplicas: 1
    labels: {team: vision}
    versions:
      - {version: "2", storageUri: "file:///models/digits/2", memoryBytes: 1048576}
      - {version: "10", storageUri: "file:///models/digits/10"}
    traffic:
      - match: {x-canary: "yes"}
        split: [{version: "10", weight: 1}]
      - split: [{version: "2", weight: 90}, {version: "10", weight: 10}]
        mirror: {version: "10", percent: 5}
`

func TestParse(t *testing.T) {
	t.Parallel()
	r, err := Parse([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if got := []string{r.Models[0].Name, r.Models[1].Name}; !cmp.Equal(got, []string{"digits", "iris"}) {
		t.Fatalf("models not sorted by name: %v", got)
	}
	iris, _ := r.Model("iris")
	if iris.Runtime != DefaultRuntime || iris.DefaultVersion != "1" {
		t.Fatalf("iris defaults: %+v", iris)
	}
	digits, ok := r.Model("digits")
	if !ok || digits.DefaultVersion != "10" {
		t.Fatalf("digits default version %q, want the newest, 10", digits.DefaultVersion)
	}
	if diff := cmp.Diff([]Weighted{{"10", 1}}, digits.Routes("/v2/models/digits/infer", MapLookup(map[string]string{"x-canary": "yes"}))); diff != "" {
		t.Fatalf("canary header rule: %s", diff)
	}
	if diff := cmp.Diff([]Weighted{{"2", 90}, {"10", 10}}, digits.Routes("/v2/models/digits/infer", MapLookup(nil))); diff != "" {
		t.Fatalf("default rule: %s", diff)
	}
	if diff := cmp.Diff([]Weighted{{"1", 100}}, iris.Routes("/", MapLookup(nil))); diff != "" {
		t.Fatalf("no rules: %s", diff)
	}
	if diff := cmp.Diff([]string{"10", "2"}, digits.ServedVersions()); diff != "" {
		t.Fatal(diff)
	}
	if _, ok := r.Model("nope"); ok {
		t.Fatal("found an unregistered model")
	}
}

func TestEncodeIsCanonical(t *testing.T) {
	t.Parallel()
	a, err := Parse([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	// The same registry written in another order encodes to the same bytes.
	reordered := strings.Replace(good, "  - name: iris\n    versions:\n      - version: \"1\"\n        storageUri: file:///models/iris/1\n", "", 1) +
		"  - name: iris\n    versions:\n      - version: \"1\"\n        storageUri: file:///models/iris/1\n"
	b, err := Parse([]byte(reordered))
	if err != nil {
		t.Fatal(err)
	}
	if a.Digest() != b.Digest() || string(a.Encode()) != string(b.Encode()) {
		t.Fatalf("reordered registry encodes differently:\n%s\n%s", a.Encode(), b.Encode())
	}
	back, err := Decode(a.Encode())
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(a, back); diff != "" {
		t.Fatalf("decode(encode) differs: %s", diff)
	}
}

func TestParseRejects(t *testing.T) {
	t.Parallel()
	model := func(body string) string { return "models:\n  - name: m\n" + body }
	v1 := "    versions: [{version: \"1\", storageUri: \"file:///m/1\"}]\n"
	tests := []struct {
		name, give, want string
	}{
		{"not YAML", "models: [", "invalid registry"},
		{"unknown field", "models:\n  - name: m\n    colour: red\n" + v1, "colour"},
		{"bad name", "models:\n  - name: ../m\n" + v1, `model "../m"`},
		{"no versions", model(""), "no versions"},
		{"bad version", model("    versions: [{version: \"v 1\", storageUri: \"file:///m\"}]\n"), "version \"v 1\""},
		{"twice", "models:\n  - name: m\n" + v1 + "  - name: m\n" + v1, "registered twice"},
		{"duplicate version", model("    versions: [{version: \"1\", storageUri: \"file:///a\"}, {version: \"1\", storageUri: \"file:///b\"}]\n"), "listed twice"},
		{"other scheme", model("    versions: [{version: \"1\", storageUri: \"ftp://b/m\"}]\n"), "want file://, s3://"},
		{"no scheme", model("    versions: [{version: \"1\", storageUri: \"/m/1\"}]\n"), "want file://, s3://"},
		{"no files", model("    versions: [{version: \"1\"}]\n"), "no storageUri or storage"},
		{"uri and storage", model("    versions: [{version: \"1\", storageUri: \"s3://b/m\", storage: {path: m}}]\n"), "exclusive"},
		{"storage without path", model("    versions: [{version: \"1\", storage: {key: k}}]\n"), "no path"},
		{"bad sha256", model("    versions: [{version: \"1\", storageUri: \"s3://b/m\", sha256: ABC}]\n"), "64 lower-case hex"},
		{"negative memory", model("    versions: [{version: \"1\", storageUri: \"file:///m\", memoryBytes: -1}]\n"), "negative"},
		{"unknown default", model(v1 + "    defaultVersion: \"2\"\n"), "defaultVersion"},
		{"split to unknown version", model(v1 + "    traffic: [{split: [{version: \"9\", weight: 1}]}]\n"), "not registered"},
		{"zero weights", model(v1 + "    traffic: [{split: [{version: \"1\", weight: 0}]}]\n"), "add up to 0"},
		{"upper-case header", model(v1 + "    traffic: [{match: {X-Canary: \"1\"}, split: [{version: \"1\", weight: 1}]}]\n"), "lower-case"},
		{"bad mirror", model(v1 + "    traffic: [{split: [{version: \"1\", weight: 1}], mirror: {version: \"1\", percent: 150}}]\n"), "mirror"},
		{"negative min replicas", model(v1 + "    minReplicas: -1\n"), "negative"},
		{"negative max replicas", model(v1 + "    maxReplicas: -1\n"), "maxReplicas -1 is negative"},
		{"max below min", model(v1 + "    minReplicas: 3\n    maxReplicas: 2\n"), "maxReplicas 2 is below minReplicas 3"},
		{"unknown format", model(v1 + "    format: pytorch\n"), `format "pytorch" is not one the mesh reads (lightgbm, onnx, sklearn, triton, xgboost)`},
		{"unknown runtime", model(v1 + "    runtime: tfserving\n"), `runtime "tfserving" is not one the mesh runs (mlserver, onnxruntime, triton)`},
		{"mlserver without a format", model(v1 + "    runtime: mlserver\n"), "runtime mlserver reads several formats: say which in format (lightgbm, sklearn, xgboost)"},
		{"runtime that does not read the format", model(v1 + "    runtime: onnxruntime\n    format: sklearn\n"), "runtime onnxruntime does not read format sklearn (mlserver does)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := Parse([]byte(tt.give))
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want ErrInvalid mentioning %q", err, tt.want)
			}
		})
	}
}

// TestFormatDefaults: a model that names neither a runtime nor a format is an ONNX model for
// ONNX Runtime, as before formats existed; a runtime alone implies its format; a format alone
// leaves the runtime to whichever reads it.
func TestFormatDefaults(t *testing.T) {
	t.Parallel()
	v1 := "    versions: [{version: \"1\", storageUri: \"file:///m/1\"}]\n"
	tests := []struct{ give, runtime, format string }{
		{"", "onnxruntime", "onnx"},
		{"    runtime: triton\n", "triton", "triton"},
		{"    runtime: onnxruntime\n", "onnxruntime", "onnx"},
		{"    format: sklearn\n", "", "sklearn"},
		{"    format: onnx\n", "", "onnx"},
		{"    runtime: mlserver\n    format: lightgbm\n", "mlserver", "lightgbm"},
	}
	for _, tt := range tests {
		r, err := Parse([]byte("models:\n  - name: m\n" + tt.give + v1))
		if err != nil {
			t.Fatalf("%q: %v", tt.give, err)
		}
		if m := r.Models[0]; m.Runtime != tt.runtime || m.Format != tt.format {
			t.Errorf("%q: runtime %q format %q, want %q %q", tt.give, m.Runtime, m.Format, tt.runtime, tt.format)
		}
	}
}

func TestParseReportsEveryProblem(t *testing.T) {
	t.Parallel()
	_, err := Parse([]byte("models:\n  - name: a\n  - name: b\n    versions: [{version: \"1\", storageUri: \"ftp://x\"}]\n"))
	if err == nil || !strings.Contains(err.Error(), `model "a": no versions`) || !strings.Contains(err.Error(), `model "b"`) {
		t.Fatalf("error %v, want both models' problems", err)
	}
}

func TestParseStorageForms(t *testing.T) {
	t.Parallel()
	sum := strings.Repeat("ab", 32)
	r, err := Parse([]byte(`models:
  - name: m
    versions:
      - {version: "1", storageUri: "s3://models/m/1/model.onnx", sha256: "` + sum + `"}
      - {version: "2", storage: {key: localMinIO, path: m/2}}
      - {version: "3", storage: {bucket: other, path: /m/3.tar.gz}}
`))
	if err != nil {
		t.Fatal(err)
	}
	m, _ := r.Model("m")
	want := []Files{
		{StorageURI: "s3://models/m/1/model.onnx", SHA256: sum},
		{Storage: &Storage{Key: "localMinIO", Path: "m/2"}},
		{Storage: &Storage{Bucket: "other", Path: "/m/3.tar.gz"}},
	}
	for i, v := range m.Versions {
		if diff := cmp.Diff(want[i], v.Files); diff != "" {
			t.Errorf("version %s: %s", v.Version, diff)
		}
	}
	// The published form carries them to ext_proc unchanged.
	back, err := Decode(r.Encode())
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(r, back); diff != "" {
		t.Fatal(diff)
	}
}

func TestWithModels(t *testing.T) {
	t.Parallel()
	base, err := Parse([]byte("models:\n  - name: iris\n    versions: [{version: \"1\", storageUri: \"file:///m/iris\"}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	files := Files{StorageURI: "file:///m/x"}
	out, rejected := base.WithModels([]Model{
		{Name: "digits", Versions: []Version{{Version: "2", Files: files}, {Version: "10", Files: files}}},
		{Name: "iris", Versions: []Version{{Version: "1", Files: files}}}, // taken by the file
		{Name: "bad", Versions: []Version{{Version: "1"}}},                // no files
	})
	if len(out.Models) != 2 || out.Models[0].Name != "digits" || out.Models[1].Name != "iris" {
		t.Fatalf("models %+v, want digits and the file's iris", out.Models)
	}
	if d := out.Models[0]; d.Runtime != DefaultRuntime || d.DefaultVersion != "10" {
		t.Errorf("digits not normalised as a file's model: runtime %q, default version %q", d.Runtime, d.DefaultVersion)
	}
	if !errors.Is(rejected["iris"], ErrInvalid) || !strings.Contains(rejected["iris"].Error(), "twice") ||
		!strings.Contains(fmt.Sprint(rejected["bad"]), "no storageUri") || len(rejected) != 2 {
		t.Errorf("rejected %v, want iris (taken) and bad (no files)", rejected)
	}
	if len(base.Models) != 1 {
		t.Error("the registry it was called on changed")
	}
}
