//go:build e2e

package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
)

var virtualServices = schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "virtualservices"}

// inNamespace decodes one object of YAML and moves it to namespace.
func inNamespace(t testing.TB, doc, namespace string) *unstructured.Unstructured {
	t.Helper()
	objs := decodeObjects(t, []byte(doc))
	if len(objs) != 1 {
		t.Fatalf("%d objects in %q", len(objs), doc)
	}
	objs[0].SetNamespace(namespace)
	return objs[0]
}

// TestKubeControlPlaneRBAC: the control plane runs against a real API server with a token of
// its ServiceAccount from the manifests, not an admin credential, and does its work: it
// lists and watches the VirtualServices and DestinationRules of its namespace, routes by
// them, and writes its verdict into their status. What its Role does not grant is refused.
func TestKubeControlPlaneRBAC(t *testing.T) {
	k := startKubeAPI(t)
	applyManifests(t, k)
	sa := k.asServiceAccount(t, "modelmesh", "mesh-controlplane")
	m := startMesh(t, meshOptions{ControlPlaneArgs: []string{"--istio-kube", "--kubeconfig", k.kubeconfig(t, sa), "--istio-namespace", "modelmesh"}})

	ctx := context.Background()
	a := newApplier(t, k)
	for _, o := range []*unstructured.Unstructured{inNamespace(t, bcDestinationRule, "modelmesh"), inNamespace(t, bcVirtualService(0, 100, 0), "modelmesh")} {
		must(t, a.apply(ctx, o))
	}
	row := testsetRow(t, "breast-cancer")
	eventually(t, 30*time.Second, "the VirtualService's split in force (all to the canary, version 2)", func() bool {
		for range 5 {
			code, out := inferREST(t, m.Gateway, "breast-cancer", row, nil)
			if v, _ := out["model_version"].(string); code != 200 || v != "2" {
				return false
			}
		}
		return true
	})
	eventually(t, 30*time.Second, "the control plane's verdict in the VirtualService's status", func() bool {
		vs, err := a.dyn.Resource(virtualServices).Namespace("modelmesh").Get(ctx, "breast-cancer", metav1.GetOptions{})
		if err != nil {
			return false
		}
		conds, _, _ := unstructured.NestedSlice(vs.Object, "status", "conditions")
		for _, c := range conds {
			c, _ := c.(map[string]any)
			if c["type"] == "ModelMeshAccepted" && c["status"] == "True" {
				return true
			}
		}
		return false
	})

	// What the Role does not grant: refused with 403.
	kc, err := kubernetes.NewForConfig(sa)
	must(t, err)
	dyn, err := dynamic.NewForConfig(sa)
	must(t, err)
	refused := map[string]error{}
	_, refused["list secrets in its namespace"] = kc.CoreV1().Secrets("modelmesh").List(ctx, metav1.ListOptions{})
	_, refused["list VirtualServices of every namespace"] = dyn.Resource(virtualServices).List(ctx, metav1.ListOptions{})
	refused["delete a VirtualService"] = dyn.Resource(virtualServices).Namespace("modelmesh").Delete(ctx, "breast-cancer", metav1.DeleteOptions{})
	_, refused["create a VirtualService"] = dyn.Resource(virtualServices).Namespace("modelmesh").Create(ctx, inNamespace(t, digitsRewriteVS, "modelmesh"), metav1.CreateOptions{})
	_, refused["list pods"] = kc.CoreV1().Pods("modelmesh").List(ctx, metav1.ListOptions{})
	for what, err := range refused {
		if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "system:serviceaccount:modelmesh:mesh-controlplane") {
			t.Errorf("%s with the control plane's token: %v, want 403 for its ServiceAccount", what, err)
		}
	}
}
