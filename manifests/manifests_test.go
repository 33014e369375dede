// Package manifests holds the Kubernetes manifests; its test decodes them as typed objects
// and checks what the mesh relies on.
package manifests

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

func decode[T any](t *testing.T, path string) T {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var v T
	if err := yaml.UnmarshalStrict(b, &v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return v
}

func TestTritonWorkerPod(t *testing.T) {
	d := decode[appsv1.Deployment](t, filepath.Join("components", "worker-triton", "deployment.yaml"))
	spec := d.Spec.Template.Spec
	var triton, worker *corev1.Container
	for i := range spec.Containers {
		switch spec.Containers[i].Name {
		case "triton":
			triton = &spec.Containers[i]
		case "worker":
			worker = &spec.Containers[i]
		}
	}
	if triton == nil || worker == nil {
		t.Fatal("the pod needs a triton and a worker container")
	}
	if gpu := triton.Resources.Limits["nvidia.com/gpu"]; gpu.Value() != 1 {
		t.Fatalf("triton GPU limit %v, want 1", gpu.String())
	}
	if !slices.Contains(triton.Args, "--model-control-mode=explicit") {
		t.Fatal("triton must run in explicit model-control mode")
	}
	mount := func(c *corev1.Container, volume string) string {
		for _, m := range c.VolumeMounts {
			if m.Name == volume {
				return m.MountPath
			}
		}
		return ""
	}
	repo := mount(triton, "repository")
	if repo == "" || mount(worker, "repository") != repo {
		t.Fatalf("the repository volume must be shared: triton %q, worker %q", repo, mount(worker, "repository"))
	}
	if !slices.Contains(triton.Args, "--model-repository="+repo) || !slices.Contains(worker.Args, "--triton-repository="+repo) {
		t.Fatalf("triton and worker disagree on the repository path %s", repo)
	}
	if !slices.Contains(worker.Args, "--runtime=triton") {
		t.Fatal("the worker must run the triton runtime")
	}
	for _, c := range []*corev1.Container{triton, worker} {
		if c.ReadinessProbe == nil || c.LivenessProbe == nil {
			t.Fatalf("%s needs readiness and liveness probes", c.Name)
		}
	}
	if shm := mount(triton, "shm"); shm != "/dev/shm" {
		t.Fatal("the Python backend needs a /dev/shm of its own size")
	}
	for _, a := range worker.Args {
		if strings.HasPrefix(a, "--triton-") && strings.Contains(a, "localhost") {
			t.Fatalf("%s: the gateway reaches Triton by the pod IP, not localhost", a)
		}
	}
	svc := decode[corev1.Service](t, filepath.Join("components", "worker-triton", "service.yaml"))
	if svc.Spec.Selector["app"] != d.Spec.Template.Labels["app"] {
		t.Fatal("the service does not select the worker pods")
	}
}
