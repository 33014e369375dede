//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"

	"github.com/modelmesh/mesh/kserve"
)

// inferenceService is an InferenceService in ModelMesh mode of an ONNX model at uri.
func inferenceService(name, uri string) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
		"metadata": map[string]any{"name": name, "namespace": "modelmesh",
			"annotations": map[string]any{kserve.DeploymentModeAnnotation: kserve.ModelMeshMode}},
		"spec": map[string]any{"predictor": map[string]any{"model": map[string]any{
			"modelFormat": map[string]any{"name": "onnx"}, "storageUri": uri}}},
	}}
}

// isvcState is an InferenceService's activeModelState and Ready condition (none for nil).
func isvcState(o *unstructured.Unstructured) (state, ready string) {
	if o == nil {
		return "", ""
	}
	state, _, _ = unstructured.NestedString(o.Object, "status", "modelStatus", "states", "activeModelState")
	conds, _, _ := unstructured.NestedSlice(o.Object, "status", "conditions")
	for _, c := range conds {
		if c, _ := c.(map[string]any); c["type"] == "Ready" {
			ready, _ = c["status"].(string)
		}
	}
	return state, ready
}

// stateWatch records every activeModelState an InferenceService's status takes.
type stateWatch struct {
	mu     sync.Mutex
	states []string
	last   *unstructured.Unstructured
}

func watchStates(t testing.TB, dyn dynamic.Interface, name string) *stateWatch {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	w, err := dyn.Resource(kserve.InferenceServices).Namespace("modelmesh").Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + name})
	must(t, err)
	sw := &stateWatch{}
	go func() {
		for ev := range w.ResultChan() {
			o, ok := ev.Object.(*unstructured.Unstructured)
			if !ok || ev.Type == watch.Deleted {
				continue
			}
			state, _ := isvcState(o)
			sw.mu.Lock()
			if state != "" && (len(sw.states) == 0 || sw.states[len(sw.states)-1] != state) {
				sw.states = append(sw.states, state)
			}
			sw.last = o
			sw.mu.Unlock()
		}
	}()
	return sw
}

func (w *stateWatch) seen() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.states)
}

func (w *stateWatch) latest() *unstructured.Unstructured {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last
}

// TestKubeInferenceService: models as KServe InferenceServices on a real API server, read by
// the control plane under its ServiceAccount (the kserve overlay's RBAC). An InferenceService
// created is routable; its first request through the gateway loads it, and its status goes
// Standby → Loading → Loaded with the gateway's URLs and its copies; one whose files do not
// exist answers 502 and reports FailedToLoad with the reason; one deleted is unrouted and
// unloaded.
func TestKubeInferenceService(t *testing.T) {
	k := startKubeAPI(t)
	applyManifests(t, k)
	ctx := context.Background()
	a := newApplier(t, k)
	for _, err := range a.applyAll(ctx, kustomizeBuild(t, filepath.Join("..", "manifests", "overlays", "kserve"))) {
		t.Fatalf("kserve overlay refused: %v", err)
	}
	sa := k.asServiceAccount(t, "modelmesh", "mesh-controlplane")
	m := startMesh(t, meshOptions{Registry: "models: []\n", ControlPlaneArgs: []string{"--kserve", "--kubeconfig", k.kubeconfig(t, sa),
		"--kserve-namespace", "modelmesh", "--kserve-endpoint", "mesh-gateway.modelmesh:8080"}})
	dyn, err := dynamic.NewForConfig(k.Admin)
	must(t, err)
	isvcs := dyn.Resource(kserve.InferenceServices).Namespace("modelmesh")

	// A model whose load takes long enough (32 MiB of weights) to be seen loading.
	created := time.Now()
	model := fmt.Sprintf("file://%s/synthetic-32mb/1/model.onnx", models(t))
	states := watchStates(t, dyn, "synthetic")
	_, err = isvcs.Create(ctx, inferenceService("synthetic", model), metav1.CreateOptions{})
	must(t, err)
	eventually(t, 30*time.Second, "synthetic in Standby, Ready", func() bool {
		o := states.latest()
		if o == nil {
			return false
		}
		state, ready := isvcState(o)
		return state == kserve.StateStandby && ready == "True"
	})
	registered := time.Since(created)
	o := states.latest()
	for path, want := range map[string]string{"url": "grpc://mesh-gateway.modelmesh:8080"} {
		if got, _, _ := unstructured.NestedString(o.Object, "status", path); got != want {
			t.Errorf("status.%s %q, want %q", path, got, want)
		}
	}
	if got, _, _ := unstructured.NestedString(o.Object, "status", "components", "predictor", "restUrl"); got != "http://mesh-gateway.modelmesh:8080" {
		t.Errorf("status.components.predictor.restUrl %q", got)
	}
	body := `{"inputs":[{"name":"input","datatype":"FP32","shape":[1,64],"data":[` + strings.TrimSuffix(strings.Repeat("1,", 64), ",") + `]}]}`
	first := time.Now()
	if code, out := inferREST(t, m.Gateway, "synthetic", body, nil); code != 200 {
		t.Fatalf("first request for the InferenceService: %d %v", code, out)
	}
	answered := time.Since(first)
	eventually(t, 30*time.Second, "synthetic Loaded with one copy", func() bool {
		o := states.latest()
		state, ready := isvcState(o)
		copies, _, _ := unstructured.NestedInt64(o.Object, "status", "modelStatus", "modelCopies", "totalCopies")
		return state == kserve.StateLoaded && ready == "True" && copies == 1
	})
	loaded := time.Since(first)
	seen := states.seen()
	t.Logf("created → Standby in status %v; first request answered in %v; Loaded in status %v after it; states %v",
		registered.Round(time.Millisecond), answered.Round(time.Millisecond), loaded.Round(time.Millisecond), seen)
	if !slices.Equal(seen, []string{kserve.StateStandby, kserve.StateLoading, kserve.StateLoaded}) &&
		!slices.Equal(seen, []string{kserve.StatePending, kserve.StateStandby, kserve.StateLoading, kserve.StateLoaded}) {
		t.Errorf("states %v, want Standby, Loading, Loaded (Pending first at most)", seen)
	}

	// Files that do not exist: 502 to the client, FailedToLoad with the reason in the status.
	broken := watchStates(t, dyn, "broken")
	_, err = isvcs.Create(ctx, inferenceService("broken", "file:///nonexistent/model.onnx"), metav1.CreateOptions{})
	must(t, err)
	eventually(t, 30*time.Second, "broken registered", func() bool {
		state, _ := isvcState(broken.latest())
		return state == kserve.StateStandby
	})
	if code, out := inferREST(t, m.Gateway, "broken", body, nil); code != 502 {
		t.Fatalf("request for an InferenceService without files: %d %v, want 502", code, out)
	}
	eventually(t, 30*time.Second, "broken FailedToLoad with its reason", func() bool {
		o := broken.latest()
		state, ready := isvcState(o)
		if o == nil {
			return false
		}
		reason, _, _ := unstructured.NestedString(o.Object, "status", "modelStatus", "lastFailureInfo", "reason")
		message, _, _ := unstructured.NestedString(o.Object, "status", "modelStatus", "lastFailureInfo", "message")
		return state == kserve.StateFailed && ready == "False" && reason == kserve.ReasonLoadFailed && strings.Contains(message, "nonexistent")
	})

	// Deleted: no longer routed (404 from the gateway), and unloaded from its worker.
	must(t, isvcs.Delete(ctx, "synthetic", metav1.DeleteOptions{}))
	eventually(t, 30*time.Second, "synthetic unrouted", func() bool {
		code, _ := rawPost(t, "http://"+m.Gateway+"/v2/models/synthetic/infer", body)
		return code == 404
	})
	eventually(t, 30*time.Second, "synthetic unloaded from its worker", func() bool {
		return len(m.replicasOf(t, "synthetic:1")) == 0
	})
}
