package manifests

import (
	"encoding/json"
	"fmt"
	"testing"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/yaml"

	"github.com/modelmesh/mesh/kserve"
)

const kserveGroup = "serving.kserve.io"

// servingRuntime is a ServingRuntime or ClusterServingRuntime of the manifests, as the
// control plane reads it.
type servingRuntime struct{ kserve.ServingRuntime }

// DeepCopyObject makes servingRuntime a runtime.Object; a JSON round trip is a deep copy.
func (s *servingRuntime) DeepCopyObject() runtime.Object {
	b, err := json.Marshal(s)
	if err != nil {
		panic(err)
	}
	var c servingRuntime
	if err := json.Unmarshal(b, &c); err != nil {
		panic(err)
	}
	return &c
}

// decodeKServe decodes a KServe runtime strictly, into the types the control plane reads.
func decodeKServe(doc []byte, gvk schema.GroupVersionKind) (runtime.Object, error) {
	if gvk.GroupVersion() != kserve.ServingRuntimes.GroupVersion() || (gvk.Kind != "ServingRuntime" && gvk.Kind != "ClusterServingRuntime") {
		return nil, fmt.Errorf("%s: not a KServe kind the manifests ship", gvk)
	}
	var r servingRuntime
	if err := yaml.UnmarshalStrict(doc, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// TestKServeRuntimeSelectsONNX: the ClusterServingRuntime the kserve component ships takes
// an ONNX InferenceService that names no runtime, to the mesh's ONNX Runtime workers.
func TestKServeRuntimeSelectsONNX(t *testing.T) {
	var runtimes []kserve.ServingRuntime
	for _, o := range build(t, "overlays/kserve") {
		if r, ok := o.(*servingRuntime); ok {
			runtimes = append(runtimes, r.ServingRuntime)
		}
	}
	isvc := kserve.InferenceService{Spec: kserve.InferenceServiceSpec{Predictor: kserve.Predictor{Model: &kserve.ModelSpec{
		ModelFormat: kserve.ModelFormat{Name: "onnx"}, StorageURI: "s3://models/iris"}}}}
	isvc.Name, isvc.Namespace = "iris", "modelmesh"
	isvc.Annotations = map[string]string{kserve.DeploymentModeAnnotation: kserve.ModelMeshMode}
	entries := kserve.Convert([]kserve.InferenceService{isvc}, nil, runtimes)
	if len(entries) != 1 || entries[0].Problem != nil || entries[0].Runtime != "onnxruntime" {
		t.Fatalf("entries %+v, want iris on onnxruntime", entries)
	}
}
