package kserve

import (
	"cmp"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/types"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/internal/registry"
)

// Reasons of a FailureInfo, as ModelMesh names them.
const (
	ReasonLoadFailed       = "ModelLoadFailed"
	ReasonRuntimeUnhealthy = "RuntimeUnhealthy"
	ReasonNoRuntime        = "NoSupportingRuntime"
	ReasonUnknownRuntime   = "RuntimeNotRecognized"
	ReasonInvalidSpec      = "InvalidPredictorSpec"
)

// Entry is one InferenceService as the mesh reads it: the model version it serves and
// where its files are, or, in Problem, why it serves none.
type Entry struct {
	Namespace, Name string
	// UID and ResourceVersion are the object's as read, Observed its status then.
	UID             types.UID
	ResourceVersion string
	Observed        *Status
	Model           placement.ModelVersion
	// Runtime is the mesh worker runtime of its ServingRuntime; Format the registry format
	// of its model: its modelFormat's name, or "triton" on Triton, whose adapter serves a
	// Triton repository entry whatever framework is inside.
	Runtime, Format string
	// MinReplicas is its modelmesh.io/min-replicas annotation (0: none).
	MinReplicas int
	Files       registry.Files
	Problem     *FailureInfo
}

// Key is namespace/name.
func (e Entry) Key() string { return e.Namespace + "/" + e.Name }

func invalid(reason, format string, args ...any) *FailureInfo {
	return &FailureInfo{Reason: reason, Message: fmt.Sprintf(format, args...)}
}

// Convert reads the InferenceServices in ModelMesh mode among isvcs, each against the
// ServingRuntimes of its namespace and the ClusterServingRuntimes, sorted by key.
// Two that claim one model version: the first by key serves it, the others get a problem.
func Convert(isvcs []InferenceService, runtimes, clusterRuntimes []ServingRuntime) []Entry {
	var out []Entry
	for _, isvc := range isvcs {
		if isvc.Annotations[DeploymentModeAnnotation] != ModelMeshMode {
			continue
		}
		out = append(out, convert(isvc, runtimes, clusterRuntimes))
	}
	slices.SortFunc(out, func(a, b Entry) int { return strings.Compare(a.Key(), b.Key()) })
	claimed := map[placement.ModelVersion]string{}
	runtimeOf := map[string]Entry{}
	for i := range out {
		e := &out[i]
		if e.Problem != nil {
			continue
		}
		if by, ok := claimed[e.Model]; ok {
			e.Problem = invalid(ReasonInvalidSpec, "model %s is served by InferenceService %s already", e.Model, by)
			continue
		}
		if other, ok := runtimeOf[e.Model.Name]; ok && (other.Runtime != e.Runtime || other.Format != e.Format) {
			e.Problem = invalid(ReasonInvalidSpec, "model %s: InferenceService %s serves another version of it on runtime %s (format %s), this one needs %s (format %s)",
				e.Model.Name, other.Key(), other.Runtime, other.Format, e.Runtime, e.Format)
			continue
		}
		claimed[e.Model] = e.Key()
		runtimeOf[e.Model.Name] = *e
	}
	return out
}

func convert(isvc InferenceService, runtimes, clusterRuntimes []ServingRuntime) Entry {
	e := Entry{Namespace: isvc.Namespace, Name: isvc.Name, UID: isvc.UID, ResourceVersion: isvc.ResourceVersion, Observed: isvc.Status}
	spec := isvc.Spec.Predictor.Model
	if spec == nil {
		e.Problem = invalid(ReasonInvalidSpec, "the predictor has no model: the mesh reads spec.predictor.model (not the per-framework forms)")
		return e
	}
	e.Model = placement.ModelVersion{Name: cmp.Or(isvc.Annotations[ModelAnnotation], isvc.Name), Version: cmp.Or(isvc.Annotations[VersionAnnotation], "1")}
	if err := e.Model.Validate(); err != nil {
		e.Problem = invalid(ReasonInvalidSpec, "model id %s: %v", e.Model, err)
		return e
	}
	if v, ok := isvc.Annotations[MinReplicasAnnotation]; ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			e.Problem = invalid(ReasonInvalidSpec, "%s %q: want a count, 0 or more", MinReplicasAnnotation, v)
			return e
		}
		e.MinReplicas = n
	}
	if spec.ModelFormat.Name == "" {
		e.Problem = invalid(ReasonInvalidSpec, "spec.predictor.model.modelFormat.name is empty")
		return e
	}
	rt, problem := selectRuntime(isvc.Namespace, *spec, runtimes, clusterRuntimes)
	if problem != nil {
		e.Problem = problem
		return e
	}
	if e.Runtime, problem = meshRuntime(rt); problem != nil {
		e.Problem = problem
		return e
	}
	e.Format = strings.ToLower(spec.ModelFormat.Name)
	if e.Runtime == "triton" {
		e.Format = "triton"
	}
	e.Files, e.Problem = files(isvc, *spec)
	return e
}

// selectRuntime is the ServingRuntime the model goes to: the one it names (in its namespace,
// else a ClusterServingRuntime), which must support its format; else the first, by name,
// that is enabled, multi-model and auto-selects its format, namespaced ones first.
func selectRuntime(namespace string, spec ModelSpec, runtimes, clusterRuntimes []ServingRuntime) (ServingRuntime, *FailureInfo) {
	var mine []ServingRuntime
	for _, r := range runtimes {
		if r.Namespace == namespace {
			mine = append(mine, r)
		}
	}
	byName := func(rs []ServingRuntime) []ServingRuntime {
		rs = slices.Clone(rs)
		slices.SortFunc(rs, func(a, b ServingRuntime) int { return strings.Compare(a.Name, b.Name) })
		return rs
	}
	candidates := append(byName(mine), byName(clusterRuntimes)...)
	if spec.Runtime != "" {
		for _, r := range candidates {
			if r.Name != spec.Runtime {
				continue
			}
			if isTrue(r.Spec.Disabled) {
				return r, invalid(ReasonUnknownRuntime, "ServingRuntime %s is disabled", r.Name)
			}
			if !supports(r, spec.ModelFormat, false) {
				return r, invalid(ReasonNoRuntime, "ServingRuntime %s does not support model format %s", r.Name, describeFormat(spec.ModelFormat))
			}
			return r, nil
		}
		return ServingRuntime{}, invalid(ReasonUnknownRuntime, "no ServingRuntime or ClusterServingRuntime named %s", spec.Runtime)
	}
	for _, r := range candidates {
		if !isTrue(r.Spec.Disabled) && isTrue(r.Spec.MultiModel) && supports(r, spec.ModelFormat, true) {
			return r, nil
		}
	}
	return ServingRuntime{}, invalid(ReasonNoRuntime, "No ServingRuntime supports specified model type and/or protocol: model format %s", describeFormat(spec.ModelFormat))
}

func supports(r ServingRuntime, f ModelFormat, auto bool) bool {
	return slices.ContainsFunc(r.Spec.SupportedModelFormats, func(s SupportedModelFormat) bool {
		return strings.EqualFold(s.Name, f.Name) && (f.Version == "" || s.Version == "" || s.Version == f.Version) && (!auto || isTrue(s.AutoSelect))
	})
}

func describeFormat(f ModelFormat) string {
	if f.Version == "" {
		return f.Name
	}
	return f.Name + " " + f.Version
}

// meshRuntime is the worker runtime that serves r: its modelmesh.io/runtime annotation,
// else its built-in adapter's server type when the mesh's workers run that server (Triton,
// MLServer).
func meshRuntime(r ServingRuntime) (string, *FailureInfo) {
	if rt := r.Annotations[RuntimeAnnotation]; rt != "" {
		return rt, nil
	}
	if a := r.Spec.BuiltInAdapter; a != nil && (a.ServerType == "triton" || a.ServerType == "mlserver") {
		return a.ServerType, nil
	}
	server := "none"
	if a := r.Spec.BuiltInAdapter; a != nil {
		server = a.ServerType
	}
	return "", invalid(ReasonUnknownRuntime, "ServingRuntime %s: server type %s is not one the mesh's workers run (annotate it %s: onnxruntime, triton or mlserver)",
		r.Name, server, RuntimeAnnotation)
}

// files says where the model's files are: storageUri (with the secretKey annotation, an
// s3:// or gs:// URI read through that storage-config entry), or storage's key, path and
// bucket parameter.
func files(isvc InferenceService, spec ModelSpec) (registry.Files, *FailureInfo) {
	switch {
	case spec.StorageURI != "" && spec.Storage != nil:
		return registry.Files{}, invalid(ReasonInvalidSpec, "storageUri and storage are both set: give one")
	case spec.Storage != nil:
		if spec.Storage.Path == "" {
			return registry.Files{}, invalid(ReasonInvalidSpec, "storage has no path")
		}
		return registry.Files{Storage: &registry.Storage{Key: spec.Storage.Key, Bucket: spec.Storage.Parameters["bucket"], Path: spec.Storage.Path}}, nil
	case spec.StorageURI == "":
		return registry.Files{}, invalid(ReasonInvalidSpec, "the model has no storageUri or storage")
	}
	key := isvc.Annotations[SecretKeyAnnotation]
	if key == "" {
		return registry.Files{StorageURI: spec.StorageURI}, nil
	}
	u, err := url.Parse(spec.StorageURI)
	if err != nil || (u.Scheme != "s3" && u.Scheme != "gs") || u.Host == "" {
		return registry.Files{}, invalid(ReasonInvalidSpec, "%s %s needs an s3:// or gs:// storageUri with a bucket, not %s", SecretKeyAnnotation, key, spec.StorageURI)
	}
	return registry.Files{Storage: &registry.Storage{Key: key, Bucket: u.Host, Path: strings.TrimPrefix(u.Path, "/")}}, nil
}

// Models groups the entries that serve a model version into registry models: a version per
// entry, the runtime of the first.
func Models(entries []Entry) []registry.Model {
	var out []registry.Model
	index := map[string]int{}
	for _, e := range entries {
		if e.Problem != nil {
			continue
		}
		i, ok := index[e.Model.Name]
		if !ok {
			i = len(out)
			index[e.Model.Name] = i
			out = append(out, registry.Model{Name: e.Model.Name, Runtime: e.Runtime, Format: e.Format})
		}
		out[i].MinReplicas = max(out[i].MinReplicas, e.MinReplicas) // a model's bound, the highest its versions ask
		out[i].Versions = append(out[i].Versions, registry.Version{Version: e.Model.Version, Files: e.Files})
	}
	return out
}

func isTrue(b *bool) bool { return b != nil && *b }
