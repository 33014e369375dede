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

// kserveMesh is a real API server with the manifests and the kserve overlay applied, and a
// mesh whose control plane reads InferenceServices and, with istio, VirtualServices there
// under its ServiceAccount's token.
func kserveMesh(t testing.TB, istio bool) (*kubeAPI, *mesh, dynamic.ResourceInterface) {
	t.Helper()
	k := startKubeAPI(t)
	applyManifests(t, k)
	a := newApplier(t, k)
	for _, err := range a.applyAll(context.Background(), kustomizeBuild(t, filepath.Join("..", "manifests", "overlays", "kserve"))) {
		t.Fatalf("kserve overlay refused: %v", err)
	}
	args := []string{"--kserve", "--kubeconfig", k.kubeconfig(t, k.asServiceAccount(t, "modelmesh", "mesh-controlplane")), "--kserve-namespace", "modelmesh"}
	if istio {
		args = append(args, "--istio-kube", "--istio-namespace", "modelmesh")
	}
	m := startMesh(t, meshOptions{Registry: "models: []\n", ControlPlaneArgs: args})
	dyn, err := dynamic.NewForConfig(k.Admin)
	must(t, err)
	return k, m, dyn.Resource(kserve.InferenceServices).Namespace("modelmesh")
}

// versionOf is an InferenceService serving version of model.
func versionOf(name, model, version, uri string) *unstructured.Unstructured {
	o := inferenceService(name, uri)
	o.SetAnnotations(map[string]string{kserve.DeploymentModeAnnotation: kserve.ModelMeshMode,
		kserve.ModelAnnotation: model, kserve.VersionAnnotation: version})
	return o
}

// TestKubeInferenceServicesSplitByVirtualService: two InferenceServices serve versions 1
// and 2 of breast-cancer; a VirtualService and DestinationRule send 10% to version 2, on the
// hot path, as between registry versions.
func TestKubeInferenceServicesSplitByVirtualService(t *testing.T) {
	k, m, isvcs := kserveMesh(t, true)
	ctx := context.Background()
	for _, o := range []*unstructured.Unstructured{
		versionOf("bc-stable", "breast-cancer", "1", fmt.Sprintf("file://%s/breast-cancer/1/model.onnx", models(t))),
		versionOf("bc-canary", "breast-cancer", "2", fmt.Sprintf("file://%s/breast-cancer/2/model.onnx", models(t))),
	} {
		_, err := isvcs.Create(ctx, o, metav1.CreateOptions{})
		must(t, err)
	}
	a := newApplier(t, k)
	must(t, a.apply(ctx, inNamespace(t, bcDestinationRule, "modelmesh")))
	must(t, a.apply(ctx, inNamespace(t, bcVirtualService(90, 10, 0), "modelmesh")))
	row := testsetRow(t, "breast-cancer")
	for _, v := range []string{"1", "2"} {
		eventually(t, 30*time.Second, "version "+v+" served", func() bool {
			code, _ := inferREST(t, m.Gateway, "breast-cancer/versions/"+v, row, nil)
			return code == 200
		})
		m.waitHot(t, "breast-cancer", v)
	}
	eventually(t, 30*time.Second, "the tester pinned to the canary (the VirtualService in force)", func() bool {
		_, out := inferREST(t, m.Gateway, "breast-cancer", row, map[string]string{"x-tester": "alice"})
		v, _ := out["model_version"].(string)
		return v == "2"
	})
	decisions := m.decisions(t)
	const n = 1000
	canary := 0
	for range n {
		code, out := inferREST(t, m.Gateway, "breast-cancer", row, nil)
		if code != 200 {
			t.Fatalf("breast-cancer: %d %v", code, out)
		}
		if v, _ := out["model_version"].(string); v == "2" {
			canary++
		}
	}
	t.Logf("%d of %d requests to the 10%% InferenceService", canary, n)
	if canary < 62 || canary > 138 { // 10% of 1000: 4 standard deviations either side
		t.Fatalf("%d of %d requests went to the 10%% canary", canary, n)
	}
	if d := m.decisions(t) - decisions; d != 0 {
		t.Errorf("%v of the split's requests went through ext_proc, want none (the hot path)", d)
	}
}

// TestKubeAPIServerRestart: the API server killed under steady load on an InferenceService's
// model and started again: no hot request fails, no model leaves the routes while it is
// away, the status catches up with what changed meanwhile (a second model loaded), and an
// InferenceService created afterwards is served.
func TestKubeAPIServerRestart(t *testing.T) {
	k, m, isvcs := kserveMesh(t, false)
	ctx := context.Background()
	for _, name := range []string{"iris", "digits"} {
		_, err := isvcs.Create(ctx, inferenceService(name, fmt.Sprintf("file://%s/%s/1/model.onnx", models(t), name)), metav1.CreateOptions{})
		must(t, err)
	}
	eventually(t, 30*time.Second, "iris served", func() bool {
		code, _ := inferREST(t, m.Gateway, "iris", irisSetosa, nil)
		return code == 200
	})
	m.waitHot(t, "iris", "1")
	load := steadyLoad(m.Gateway, "iris", irisSetosa, 200)
	load.await(t, 100)
	killed := time.Now()
	k.apiserver.Kill()
	// Away: the hot model keeps answering, and a cold one loads (the registry stays).
	load.await(t, 200)
	if code, out := inferREST(t, m.Gateway, "digits", testsetRow(t, "digits"), nil); code != 200 {
		t.Fatalf("digits loaded while the API server was away: %d %v", code, out)
	}
	away := time.Since(killed)
	k.start(t) // returns once it answers /readyz
	restarted := time.Now()
	eventually(t, 60*time.Second, "digits' status Loaded after the API server came back", func() bool {
		o, err := isvcs.Get(ctx, "digits", metav1.GetOptions{})
		if err != nil {
			return false
		}
		state, _ := isvcState(o)
		return state == kserve.StateLoaded
	})
	caughtUp := time.Since(restarted)
	// The control plane's watches broke with the old server; an InferenceService created on
	// the new one is seen (the informers watch again, or list again when their version is too
	// old for the new server's watch cache) and served.
	_, err := isvcs.Create(ctx, inferenceService("late", fmt.Sprintf("file://%s/iris/1/model.onnx", models(t))), metav1.CreateOptions{})
	must(t, err)
	eventually(t, 30*time.Second, "an InferenceService created after the restart served", func() bool {
		code, _ := inferREST(t, m.Gateway, "late", irisSetosa, nil)
		return code == 200
	})
	load.await(t, 100)
	r := load.stop(killed)
	t.Logf("%d requests, %d after the kill, %d failed; the API server away %v (restart included), digits' status Loaded %v after it was ready again",
		r.total, r.after, r.failedBefore+r.failedInFlight+r.failedAfter, away.Round(time.Millisecond), caughtUp.Round(time.Millisecond))
	if lost := r.failedBefore + r.failedInFlight + r.failedAfter; lost != 0 {
		t.Fatalf("%d of %d hot requests failed across the API server's restart; first: %s", lost, r.total, r.firstFailure)
	}
}
