// Package kserve reads KServe InferenceServices in ModelMesh deployment mode, and the
// ServingRuntimes and ClusterServingRuntimes they name, from the Kubernetes API as registry
// entries, and writes their status back as ModelMesh users read it, from the residency in
// Redis (docs/kserve.md). The KServe Go module is not a dependency: types.go holds the
// subset of KServe's documented API the mesh reads and writes.
package kserve

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// The resources read and written.
var (
	InferenceServices      = schema.GroupVersionResource{Group: "serving.kserve.io", Version: "v1beta1", Resource: "inferenceservices"}
	ServingRuntimes        = schema.GroupVersionResource{Group: "serving.kserve.io", Version: "v1alpha1", Resource: "servingruntimes"}
	ClusterServingRuntimes = schema.GroupVersionResource{Group: "serving.kserve.io", Version: "v1alpha1", Resource: "clusterservingruntimes"}
)

// Annotations and labels the mesh reads.
const (
	// DeploymentModeAnnotation selects the controller of an InferenceService; the mesh takes
	// those whose value is ModelMesh, as KServe ModelMesh does.
	DeploymentModeAnnotation = "serving.kserve.io/deploymentMode"
	ModelMeshMode            = "ModelMesh"
	// SecretKeyAnnotation names the storage-config entry of a storageUri (ModelMesh's).
	SecretKeyAnnotation = "serving.kserve.io/secretKey"
	// ModelAnnotation and VersionAnnotation (the mesh's) make an InferenceService one version
	// of a model that others serve too, so that traffic rules split between them; default
	// the InferenceService's name and "1".
	ModelAnnotation   = "modelmesh.io/model"
	VersionAnnotation = "modelmesh.io/version"
	// MinReplicasAnnotation (the mesh's) keeps that many replicas loaded, as the registry's
	// minReplicas does: a model that must answer its first request hot, as ModelMesh loads
	// every InferenceService at creation.
	MinReplicasAnnotation = "modelmesh.io/min-replicas"
	// RuntimeAnnotation on a ServingRuntime names the mesh worker runtime that serves it
	// (onnxruntime, triton); without it, spec.builtInAdapter.serverType decides.
	RuntimeAnnotation = "modelmesh.io/runtime"
)

// InferenceService is serving.kserve.io/v1beta1 InferenceService: the fields of its
// predictor that ModelMesh users set.
type InferenceService struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              InferenceServiceSpec `json:"spec"`
	// Status is as last read (the mesh's own writes included).
	Status *Status `json:"status,omitempty"`
}

// InferenceServiceSpec holds the predictor; transformers and explainers are not read.
type InferenceServiceSpec struct {
	Predictor Predictor `json:"predictor"`
}

// Predictor is the predictor component; the mesh reads its model.
type Predictor struct {
	Model *ModelSpec `json:"model,omitempty"`
}

// ModelSpec is the predictor's model: its format, an optional runtime, and where its files
// are (storageUri, or storage with a storage-config key and a path).
type ModelSpec struct {
	ModelFormat ModelFormat  `json:"modelFormat"`
	Runtime     string       `json:"runtime,omitempty"`
	StorageURI  string       `json:"storageUri,omitempty"`
	Storage     *StorageSpec `json:"storage,omitempty"`
}

// ModelFormat names the model's format, and optionally its version.
type ModelFormat struct {
	Name    string `json:"name"`
	Version string `json:"version,omitempty"`
}

// StorageSpec is KServe's storage spec: an entry of the storage-config Secret, a path in its
// bucket, and parameters (bucket overrides the entry's).
type StorageSpec struct {
	Key        string            `json:"key,omitempty"`
	Path       string            `json:"path,omitempty"`
	SchemaPath string            `json:"schemaPath,omitempty"`
	Parameters map[string]string `json:"parameters,omitempty"`
}

// ServingRuntime is serving.kserve.io/v1alpha1 ServingRuntime, and ClusterServingRuntime
// (the same spec, cluster-scoped): the formats a runtime accepts.
type ServingRuntime struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              ServingRuntimeSpec `json:"spec"`
}

// ServingRuntimeSpec is the part of a runtime's spec that selects it.
type ServingRuntimeSpec struct {
	SupportedModelFormats []SupportedModelFormat `json:"supportedModelFormats,omitempty"`
	MultiModel            *bool                  `json:"multiModel,omitempty"`
	Disabled              *bool                  `json:"disabled,omitempty"`
	BuiltInAdapter        *BuiltInAdapter        `json:"builtInAdapter,omitempty"`
}

// SupportedModelFormat is one format a runtime reads; AutoSelect lets InferenceServices that
// name no runtime be placed on it.
type SupportedModelFormat struct {
	Name       string `json:"name"`
	Version    string `json:"version,omitempty"`
	AutoSelect *bool  `json:"autoSelect,omitempty"`
}

// BuiltInAdapter is ModelMesh's adapter of a runtime; its serverType says which server it is.
type BuiltInAdapter struct {
	ServerType string `json:"serverType,omitempty"`
}

// Status is the InferenceService status the mesh writes.
type Status struct {
	URL         string                     `json:"url,omitempty"`
	Components  map[string]ComponentStatus `json:"components,omitempty"`
	Conditions  []Condition                `json:"conditions,omitempty"`
	ModelStatus ModelStatus                `json:"modelStatus"`
}

// ComponentStatus is a component's endpoints.
type ComponentStatus struct {
	URL     string `json:"url,omitempty"`
	RestURL string `json:"restUrl,omitempty"`
	GrpcURL string `json:"grpcUrl,omitempty"`
}

// Condition is one status condition (Ready, PredictorReady).
type Condition struct {
	Type    string `json:"type"`
	Status  string `json:"status"`
	Reason  string `json:"reason,omitempty"`
	Message string `json:"message,omitempty"`
}

// ModelStatus is ModelMesh's model status.
type ModelStatus struct {
	TransitionStatus string       `json:"transitionStatus"`
	States           ModelStates  `json:"states"`
	ModelCopies      ModelCopies  `json:"modelCopies"`
	LastFailureInfo  *FailureInfo `json:"lastFailureInfo,omitempty"`
}

// ModelStates is the active model's state: Pending, Standby, Loading, Loaded, FailedToLoad.
type ModelStates struct {
	ActiveModelState string `json:"activeModelState"`
	TargetModelState string `json:"targetModelState,omitempty"`
}

// ModelCopies counts the model's copies loaded, and those that failed recently.
type ModelCopies struct {
	FailedCopies int `json:"failedCopies"`
	TotalCopies  int `json:"totalCopies"`
}

// FailureInfo is the last failure: a reason (ModelLoadFailed, RuntimeUnhealthy,
// NoSupportingRuntime, RuntimeNotRecognized, InvalidPredictorSpec), where, and when.
type FailureInfo struct {
	Reason   string `json:"reason"`
	Message  string `json:"message,omitempty"`
	Location string `json:"location,omitempty"`
	ModelID  string `json:"modelId,omitempty"`
	Time     string `json:"time,omitempty"`
}
