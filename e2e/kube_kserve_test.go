//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
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
	// modelmesh.io/min-replicas loads a model before any request, as ModelMesh does at creation.
	warm := inferenceService("warm", fmt.Sprintf("file://%s/iris/1/model.onnx", models(t)))
	warm.SetAnnotations(map[string]string{kserve.DeploymentModeAnnotation: kserve.ModelMeshMode, kserve.MinReplicasAnnotation: "1"})
	_, err = isvcs.Create(ctx, warm, metav1.CreateOptions{})
	must(t, err)
	eventually(t, 30*time.Second, "warm Loaded with no request", func() bool {
		o, err := isvcs.Get(ctx, "warm", metav1.GetOptions{})
		if err != nil {
			return false
		}
		state, _ := isvcState(o)
		return state == kserve.StateLoaded
	})
	// Created again under the same name: a new object, whose status is written afresh.
	_, err = isvcs.Create(ctx, inferenceService("synthetic", model), metav1.CreateOptions{})
	must(t, err)
	eventually(t, 30*time.Second, "the recreated synthetic's status written", func() bool {
		o, err := isvcs.Get(ctx, "synthetic", metav1.GetOptions{})
		if err != nil {
			return false
		}
		state, ready := isvcState(o)
		return state == kserve.StateStandby && ready == "True"
	})
}

// kserveMesh is a real API server with the manifests and the kserve overlay applied, and a
// mesh whose control plane reads InferenceServices and, with istio, VirtualServices there
// under its ServiceAccount's token.
func kserveMesh(t testing.TB, istio bool, apiserverArgs ...string) (*kubeAPI, *mesh, dynamic.ResourceInterface) {
	t.Helper()
	k := startKubeAPI(t, apiserverArgs...)
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

// TestKubeWatchExpiresAndRelists: the control plane's watch of InferenceServices resumes
// from a version the API server no longer has (410 Gone: etcd was compacted past it), so its
// informer lists again, and it keeps serving: the models it had stay routed, and one created
// afterwards is seen. The API server keeps no watch cache (watches resume from etcd) and
// compacts etcd every second; revisions move on through other objects; then the control
// plane's connections to the API server are cut (a proxy between them), so that its
// reflector watches again from its last version, which is gone.
func TestKubeWatchExpiresAndRelists(t *testing.T) {
	k := startKubeAPI(t, "--watch-cache=false", "--etcd-compaction-interval=1s")
	applyManifests(t, k)
	a := newApplier(t, k)
	for _, err := range a.applyAll(context.Background(), kustomizeBuild(t, filepath.Join("..", "manifests", "overlays", "kserve"))) {
		t.Fatalf("kserve overlay refused: %v", err)
	}
	proxy := startCutProxy(t, strings.TrimPrefix(k.URL, "https://"))
	sa := k.asServiceAccount(t, "modelmesh", "mesh-controlplane")
	kubeconfig := k.kubeconfig(t, sa)
	viaProxy := strings.ReplaceAll(string(mustRead(t, kubeconfig)), strings.TrimPrefix(k.URL, "https://"), proxy.addr)
	must(t, os.WriteFile(kubeconfig, []byte(viaProxy), 0o600))
	m := startMesh(t, meshOptions{Registry: "models: []\n", ControlPlaneArgs: []string{"--kserve", "--kubeconfig", kubeconfig, "--kserve-namespace", "modelmesh"}})
	dyn, err := dynamic.NewForConfig(k.Admin)
	must(t, err)
	isvcs := dyn.Resource(kserve.InferenceServices).Namespace("modelmesh")

	ctx := context.Background()
	uri := fmt.Sprintf("file://%s/iris/1/model.onnx", models(t))
	_, err = isvcs.Create(ctx, inferenceService("iris", uri), metav1.CreateOptions{})
	must(t, err)
	eventually(t, 30*time.Second, "iris served", func() bool {
		code, _ := inferREST(t, m.Gateway, "iris", irisSetosa, nil)
		return code == 200
	})
	// Revisions move on elsewhere while the InferenceServices do not, past two compactions:
	// the informer's last version is gone from etcd. They keep moving while the connections
	// are cut: the control plane's own status write can come late and move its informer's
	// version to one the compactor has not reached yet.
	cms := k.clientset(t).CoreV1().ConfigMaps("modelmesh")
	churn := func(n int) {
		for i := range n {
			cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{GenerateName: "churn-"}, Data: map[string]string{"i": fmt.Sprint(i)}}
			_, err := cms.Create(ctx, cm, metav1.CreateOptions{})
			must(t, err)
		}
	}
	churn(50)
	// The compactor runs on its own clock: the connections are cut once a second until a
	// watch resumed after a cut finds its version compacted away.
	eventuallyEvery(t, 60*time.Second, time.Second, "the control plane's watch of InferenceServices refused as too old, and listed again", func() bool {
		if relistedAfterExpiry(m.cp.Logs(), "Resource=inferenceservices") {
			return true
		}
		churn(5)
		proxy.cut()
		return false
	})
	if code, out := inferREST(t, m.Gateway, "iris", irisSetosa, nil); code != 200 {
		t.Fatalf("iris after the relist: %d %v", code, out)
	}
	_, err = isvcs.Create(ctx, inferenceService("late", uri), metav1.CreateOptions{})
	must(t, err)
	eventually(t, 30*time.Second, "an InferenceService created after the relist served", func() bool {
		code, _ := inferREST(t, m.Gateway, "late", irisSetosa, nil)
		return code == 200
	})
}

// cutProxy forwards TCP connections to a backend and can cut every one of them at once, as
// a network failure between a client and the API server would.
type cutProxy struct {
	addr  string
	mu    sync.Mutex
	conns []net.Conn
}

func startCutProxy(t testing.TB, backend string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	p := &cutProxy{addr: ln.Addr().String()}
	t.Cleanup(func() { ln.Close(); p.cut() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b, err := net.Dial("tcp", backend)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, b)
			p.mu.Unlock()
			go func() { io.Copy(b, c); b.Close() }()
			go func() { io.Copy(c, b); c.Close() }()
		}
	}()
	return p
}

// cut closes every connection made so far; new ones are forwarded again.
func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// relistedAfterExpiry reports whether the control plane's log (client-go's reflector, at
// debug level) shows the watch of resource closed because its version was too old, and a
// list and watch of it after that.
func relistedAfterExpiry(logs, resource string) bool {
	expired := false
	for _, line := range strings.Split(logs, "\n") {
		if !strings.Contains(line, resource) {
			continue
		}
		if strings.Contains(line, "resourceVersion for the provided watch is too old") {
			expired = true
		}
		if expired && strings.Contains(line, `"msg":"Listing and watching"`) {
			return true
		}
	}
	return false
}
