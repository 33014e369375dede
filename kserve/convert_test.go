package kserve

import (
	"strings"
	"testing"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/internal/registry"
)

func isvc(name string, annotations map[string]string, model *ModelSpec) InferenceService {
	i := InferenceService{Spec: InferenceServiceSpec{Predictor: Predictor{Model: model}}}
	i.Name, i.Namespace = name, "ns"
	i.Annotations = map[string]string{DeploymentModeAnnotation: ModelMeshMode}
	for k, v := range annotations {
		i.Annotations[k] = v
	}
	return i
}

func servingRuntime(name, namespace string, annotations map[string]string, adapter string, formats ...SupportedModelFormat) ServingRuntime {
	yes := true
	r := ServingRuntime{Spec: ServingRuntimeSpec{MultiModel: &yes, SupportedModelFormats: formats}}
	r.Name, r.Namespace, r.Annotations = name, namespace, annotations
	if adapter != "" {
		r.Spec.BuiltInAdapter = &BuiltInAdapter{ServerType: adapter}
	}
	return r
}

func format(name string, auto bool) SupportedModelFormat {
	return SupportedModelFormat{Name: name, AutoSelect: &auto}
}

func TestConvert(t *testing.T) {
	t.Parallel()
	onnx := servingRuntime("mesh-onnxruntime", "", map[string]string{RuntimeAnnotation: "onnxruntime"}, "", format("onnx", true))
	triton := servingRuntime("triton-2.x", "", nil, "triton", format("tensorflow", true), format("onnx", false))
	ovms := servingRuntime("ovms-1.x", "ns", nil, "ovms", format("openvino_ir", true))
	cluster := []ServingRuntime{onnx, triton}
	uri := func(f, u string) *ModelSpec { return &ModelSpec{ModelFormat: ModelFormat{Name: f}, StorageURI: u} }
	tests := []struct {
		name        string
		give        InferenceService
		wantModel   placement.ModelVersion
		wantRuntime string
		wantFiles   registry.Files
		wantProblem string // reason
	}{
		{"onnx auto-selected", isvc("iris", nil, uri("onnx", "s3://models/iris")), mv("iris", "1"), "onnxruntime", registry.Files{StorageURI: "s3://models/iris"}, ""},
		{"named runtime, format it does not auto-select", isvc("a", nil, &ModelSpec{ModelFormat: ModelFormat{Name: "onnx"}, Runtime: "triton-2.x", StorageURI: "s3://m/a"}),
			mv("a", "1"), "triton", registry.Files{StorageURI: "s3://m/a"}, ""},
		{"model and version annotations", isvc("iris-v2", map[string]string{ModelAnnotation: "iris", VersionAnnotation: "2"}, uri("onnx", "s3://m/i2")),
			mv("iris", "2"), "onnxruntime", registry.Files{StorageURI: "s3://m/i2"}, ""},
		{"storage spec", isvc("b", nil, &ModelSpec{ModelFormat: ModelFormat{Name: "onnx"}, Storage: &StorageSpec{Key: "local", Path: "b/1", Parameters: map[string]string{"bucket": "mb"}}}),
			mv("b", "1"), "onnxruntime", registry.Files{Storage: &registry.Storage{Key: "local", Bucket: "mb", Path: "b/1"}}, ""},
		{"storageUri with secretKey", isvc("c", map[string]string{SecretKeyAnnotation: "local"}, uri("onnx", "s3://bkt/c/1")),
			mv("c", "1"), "onnxruntime", registry.Files{Storage: &registry.Storage{Key: "local", Bucket: "bkt", Path: "c/1"}}, ""},
		{"no runtime for the format", isvc("d", nil, uri("pytorch", "s3://m/d")), mv("d", "1"), "", registry.Files{}, ReasonNoRuntime},
		{"unknown runtime", isvc("e", nil, &ModelSpec{ModelFormat: ModelFormat{Name: "onnx"}, Runtime: "nope", StorageURI: "s3://m/e"}), mv("e", "1"), "", registry.Files{}, ReasonUnknownRuntime},
		{"a server type the mesh does not run", isvc("f", nil, uri("openvino_ir", "s3://m/f")), mv("f", "1"), "", registry.Files{}, ReasonUnknownRuntime},
		{"no files", isvc("g", nil, &ModelSpec{ModelFormat: ModelFormat{Name: "onnx"}}), mv("g", "1"), "", registry.Files{}, ReasonInvalidSpec},
		{"no model", isvc("h", nil, nil), placement.ModelVersion{}, "", registry.Files{}, ReasonInvalidSpec},
		{"bad min-replicas", isvc("j", map[string]string{MinReplicasAnnotation: "-1"}, uri("onnx", "s3://m/j")), mv("j", "1"), "", registry.Files{}, ReasonInvalidSpec},
		{"secretKey with https", isvc("i", map[string]string{SecretKeyAnnotation: "k"}, uri("onnx", "https://h/i")), mv("i", "1"), "", registry.Files{}, ReasonInvalidSpec},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := Convert([]InferenceService{tt.give}, []ServingRuntime{ovms}, cluster)
			if len(got) != 1 {
				t.Fatalf("%d entries, want 1", len(got))
			}
			e := got[0]
			if tt.wantProblem != "" {
				if e.Problem == nil || e.Problem.Reason != tt.wantProblem || e.Problem.Message == "" {
					t.Fatalf("problem %+v, want reason %s with a message", e.Problem, tt.wantProblem)
				}
				return
			}
			if e.Problem != nil || e.Model != tt.wantModel || e.Runtime != tt.wantRuntime {
				t.Fatalf("entry %+v (problem %+v), want %s on %s", e, e.Problem, tt.wantModel, tt.wantRuntime)
			}
			if e.Files.StorageURI != tt.wantFiles.StorageURI || (tt.wantFiles.Storage != nil) != (e.Files.Storage != nil) ||
				(e.Files.Storage != nil && *e.Files.Storage != *tt.wantFiles.Storage) {
				t.Fatalf("files %+v, want %+v", e.Files, tt.wantFiles)
			}
		})
	}
}

// TestConvertFormats: the registry format is the InferenceService's modelFormat (lower
// case), except on Triton, which serves repository entries; an MLServer adapter is the
// mlserver runtime; versions of one model must agree on the format.
func TestConvertFormats(t *testing.T) {
	t.Parallel()
	mlserver := servingRuntime("mlserver-1.x", "", nil, "mlserver", format("sklearn", true), format("xgboost", true), format("lightgbm", true))
	triton := servingRuntime("triton-2.x", "", nil, "triton", format("onnx", true))
	uri := func(f, u string) *ModelSpec { return &ModelSpec{ModelFormat: ModelFormat{Name: f}, StorageURI: u} }
	got := Convert([]InferenceService{
		isvc("wine", nil, uri("SKLearn", "s3://m/wine")),
		isvc("fraud", nil, uri("onnx", "s3://m/fraud")),
		isvc("wine-v2", map[string]string{ModelAnnotation: "wine", VersionAnnotation: "2"}, uri("xgboost", "s3://m/wine2")),
	}, nil, []ServingRuntime{mlserver, triton})
	want := map[string][2]string{"ns/wine": {"mlserver", "sklearn"}, "ns/fraud": {"triton", "triton"}}
	for _, e := range got {
		if e.Key() == "ns/wine-v2" {
			if e.Problem == nil || e.Problem.Reason != ReasonInvalidSpec || !strings.Contains(e.Problem.Message, "format sklearn") {
				t.Errorf("a second version of another format: problem %+v", e.Problem)
			}
			continue
		}
		if e.Problem != nil || [2]string{e.Runtime, e.Format} != want[e.Key()] {
			t.Errorf("%s: runtime %q format %q (problem %+v), want %v", e.Key(), e.Runtime, e.Format, e.Problem, want[e.Key()])
		}
	}
	models := Models(got)
	if len(models) != 2 || models[1].Name != "wine" || models[1].Format != "sklearn" || len(models[1].Versions) != 1 {
		t.Errorf("registry models %+v", models)
	}
}

func TestConvertGroupsVersionsAndRefusesClaims(t *testing.T) {
	t.Parallel()
	onnx := servingRuntime("mesh-onnxruntime", "", map[string]string{RuntimeAnnotation: "onnxruntime"}, "", format("onnx", true))
	spec := func(u string) *ModelSpec { return &ModelSpec{ModelFormat: ModelFormat{Name: "onnx"}, StorageURI: u} }
	other := isvc("other", nil, spec("s3://m/o"))
	other.Annotations[DeploymentModeAnnotation] = "Serverless" // KServe's, not ours
	entries := Convert([]InferenceService{
		isvc("iris-v2", map[string]string{ModelAnnotation: "iris", VersionAnnotation: "2"}, spec("s3://m/2")),
		isvc("iris", nil, spec("s3://m/1")),
		isvc("iris-again", map[string]string{ModelAnnotation: "iris"}, spec("s3://m/x")), // claims iris:1 too
		other,
	}, nil, []ServingRuntime{onnx})
	if len(entries) != 3 {
		t.Fatalf("%d entries, want 3 (not the Serverless one)", len(entries))
	}
	if p := entries[1].Problem; entries[1].Name != "iris-again" || p == nil || p.Reason != ReasonInvalidSpec {
		t.Fatalf("the second claim of iris:1: %+v, want InvalidPredictorSpec", entries[1])
	}
	models := Models(entries)
	if len(models) != 1 || models[0].Name != "iris" || len(models[0].Versions) != 2 {
		t.Fatalf("models %+v, want iris with versions 1 and 2", models)
	}
	warm := Convert([]InferenceService{isvc("warm", map[string]string{MinReplicasAnnotation: "2"}, spec("s3://m/w"))}, nil, []ServingRuntime{onnx})
	if m := Models(warm); len(m) != 1 || m[0].MinReplicas != 2 {
		t.Fatalf("models %+v, want warm with minReplicas 2", m)
	}
}

func mv(name, version string) placement.ModelVersion {
	return placement.ModelVersion{Name: name, Version: version}
}
