//go:build e2e

package e2e

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// kedaModule holds the CRD of KEDA's ScaledObject (manifests/components/autoscaling-keda);
// set-up downloads it into the module cache.
const kedaModule = "github.com/kedacore/keda/v2@v2.18.0"

// applier applies objects to a real API server the way `kubectl apply --server-side
// --validate=strict` does; namespaced objects without a namespace go to namespace, as with
// kubectl's -n.
type applier struct {
	dyn       dynamic.Interface
	mapper    meta.ResettableRESTMapper
	namespace string
}

func newApplier(t testing.TB, k *kubeAPI) *applier {
	t.Helper()
	dc, err := discovery.NewDiscoveryClientForConfig(k.Admin)
	must(t, err)
	dyn, err := dynamic.NewForConfig(k.Admin)
	must(t, err)
	return &applier{dyn: dyn, mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc)), namespace: "default"}
}

// apply applies obj server-side with strict field validation.
func (a *applier) apply(ctx context.Context, obj *unstructured.Unstructured) error {
	gvk := obj.GroupVersionKind()
	m, err := a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		a.mapper.Reset() // a CRD applied since the last discovery
		if m, err = a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version); err != nil {
			return fmt.Errorf("%s %s: %w", gvk.Kind, obj.GetName(), err)
		}
	}
	var r dynamic.ResourceInterface = a.dyn.Resource(m.Resource)
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		if obj.GetNamespace() == "" {
			obj.SetNamespace(a.namespace)
		}
		r = a.dyn.Resource(m.Resource).Namespace(obj.GetNamespace())
	}
	body, err := json.Marshal(obj)
	if err != nil {
		return err
	}
	force := true
	_, err = r.Patch(ctx, obj.GetName(), types.ApplyPatchType, body, metav1.PatchOptions{FieldManager: "mesh-e2e", Force: &force, FieldValidation: "Strict"})
	if err != nil {
		return fmt.Errorf("%s %s/%s: %w", gvk.Kind, obj.GetNamespace(), obj.GetName(), err)
	}
	return nil
}

// applyAll applies objs, namespaces and CRDs first, and returns every refusal.
func (a *applier) applyAll(ctx context.Context, objs []*unstructured.Unstructured) []error {
	first := func(o *unstructured.Unstructured) int {
		switch o.GetKind() {
		case "Namespace":
			return 0
		case "CustomResourceDefinition":
			return 1
		}
		return 2
	}
	slices.SortStableFunc(objs, func(x, y *unstructured.Unstructured) int { return first(x) - first(y) })
	var errs []error
	for _, o := range objs {
		if err := a.apply(ctx, o); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// decodeObjects splits a multi-document YAML stream into objects.
func decodeObjects(t testing.TB, b []byte) []*unstructured.Unstructured {
	t.Helper()
	var out []*unstructured.Unstructured
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 1<<20)
	for {
		var m map[string]any
		err := dec.Decode(&m)
		if errors.Is(err, io.EOF) {
			return out
		}
		must(t, err)
		if len(m) > 0 {
			out = append(out, &unstructured.Unstructured{Object: m})
		}
	}
}

// moduleDir is where the Go module cache holds module (path@version, or the version the
// mesh's go.mod selects when no version is given).
func moduleDir(t testing.TB, module string) string {
	t.Helper()
	args := []string{"mod", "download", "-json", module}
	if !strings.Contains(module, "@") {
		args = []string{"list", "-m", "-json", module}
	}
	out, err := exec.Command("go", args...).Output()
	if err != nil {
		t.Fatalf("go %s: %v (run `make setup`)", strings.Join(args, " "), err)
	}
	var m struct{ Dir string }
	must(t, json.Unmarshal(out, &m))
	if m.Dir == "" {
		t.Fatalf("go %s: no module directory", strings.Join(args, " "))
	}
	return m.Dir
}

// manifestCRDs are the CRDs the manifests' objects need: Istio's (from istio.io/api, the
// version the mesh's go.mod uses), KEDA's ScaledObject, and the mesh's subset of KServe's
// (kserve/crds).
func manifestCRDs(t testing.TB) []*unstructured.Unstructured {
	t.Helper()
	istio, err := os.ReadFile(filepath.Join(moduleDir(t, "istio.io/api"), "kubernetes", "customresourcedefinitions.gen.yaml"))
	must(t, err)
	keda, err := os.ReadFile(filepath.Join(moduleDir(t, kedaModule), "config", "crd", "bases", "keda.sh_scaledobjects.yaml"))
	must(t, err)
	kserve, err := os.ReadFile(filepath.Join("..", "kserve", "crds", "serving.kserve.io.yaml"))
	must(t, err)
	return append(append(decodeObjects(t, istio), decodeObjects(t, keda)...), decodeObjects(t, kserve)...)
}

// overlayDirs lists every kustomization under manifests/ and istio/ that builds on its own
// (components are built through the overlays that use them).
func overlayDirs(t testing.TB) []string {
	t.Helper()
	var dirs []string
	for _, root := range []string{filepath.Join("..", "manifests"), filepath.Join("..", "istio")} {
		must(t, filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() && d.Name() == "testdata" {
				return filepath.SkipDir
			}
			if err != nil || d.IsDir() || d.Name() != "kustomization.yaml" {
				return err
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			var k struct{ Kind string }
			if err := yaml.Unmarshal(b, &k); err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
			if k.Kind != "Component" {
				dirs = append(dirs, filepath.Dir(p))
			}
			return nil
		}))
	}
	return dirs
}

// kustomizeBuild is `kustomize build dir`.
func kustomizeBuild(t testing.TB, dir string) []*unstructured.Unstructured {
	t.Helper()
	res, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	out, err := res.AsYaml()
	must(t, err)
	return decodeObjects(t, out)
}

// kubectlNamespace is the -n that docs/install.md gives for a kustomization whose objects
// name no namespace.
var kubectlNamespace = map[string]string{filepath.Join("..", "manifests", "observability"): "monitoring"}

// applyManifests applies the CRDs and every overlay to k, failing t for each
// object refused, and waits for the CRDs to be established. As on a cluster with Istio
// installed, istio-system exists; so does monitoring, where the observability objects go.
func applyManifests(t testing.TB, k *kubeAPI) {
	t.Helper()
	ctx := context.Background()
	a := newApplier(t, k)
	for _, ns := range []string{"istio-system", "monitoring"} {
		must(t, a.apply(ctx, &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": ns}}}))
	}
	crds := manifestCRDs(t)
	for _, err := range a.applyAll(ctx, crds) {
		t.Errorf("CRD refused: %v", err)
	}
	waitEstablished(t, a, crds)
	for _, dir := range overlayDirs(t) {
		objs := kustomizeBuild(t, dir)
		a.namespace = cmp.Or(kubectlNamespace[dir], "default")
		for _, err := range a.applyAll(ctx, objs) {
			t.Errorf("kustomize build %s: refused: %v", dir, err)
		}
		t.Logf("kustomize build %s: %d objects applied", dir, len(objs))
	}
}

// waitEstablished waits until every CRD among objs is served.
func waitEstablished(t testing.TB, a *applier, objs []*unstructured.Unstructured) {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() != "CustomResourceDefinition" {
			continue
		}
		eventually(t, 30*time.Second, "CRD "+o.GetName()+" established", func() bool {
			crd, err := a.dyn.Resource(crdResource).Get(context.Background(), o.GetName(), metav1.GetOptions{})
			if err != nil {
				return false
			}
			conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
			for _, c := range conds {
				c, _ := c.(map[string]any)
				if c["type"] == "Established" && c["status"] == "True" {
					return true
				}
			}
			return false
		})
	}
	a.mapper.Reset()
}

// TestKubeManifestsApply: the kustomize build of every overlay, after Istio's, KEDA's and
// the mesh's KServe CRDs, is accepted by a real API server with strict validation: no unknown field, no
// schema error, every object. And the validation is on: an object with a misspelt field is
// refused with the field's name.
func TestKubeManifestsApply(t *testing.T) {
	k := startKubeAPI(t)
	applyManifests(t, k)
	a := newApplier(t, k)
	bad := kustomizeBuild(t, filepath.Join("..", "manifests", "base"))
	var deploy *unstructured.Unstructured
	for _, o := range bad {
		if o.GetKind() == "Deployment" {
			deploy = o
			break
		}
	}
	if deploy == nil {
		t.Fatal("the base has no Deployment")
	}
	must(t, unstructured.SetNestedField(deploy.Object, int64(2), "spec", "replica"))
	err := a.apply(context.Background(), deploy)
	if err == nil || !strings.Contains(err.Error(), ".spec.replica: field not declared in schema") {
		t.Fatalf("a Deployment with a misspelt field: %v, want it refused naming the field", err)
	}
	t.Logf("refused as it should be: %v", err)
}

// crdResource is the CustomResourceDefinitions' resource.
var crdResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
