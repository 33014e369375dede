package manifests

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	apinetworking "istio.io/api/networking/v1alpha3"
	extensionsv1alpha1 "istio.io/client-go/pkg/apis/extensions/v1alpha1"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/modelmesh/mesh/internal/registry"
)

// kustomizations lists every directory under manifests/ and istio/ whose kustomization can
// be built on its own (components are built through the overlays that use them).
func kustomizations(t *testing.T) []string {
	t.Helper()
	var dirs []string
	for _, root := range []string{".", filepath.Join("..", "istio")} {
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
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
			k, err := decodeKustomization(b)
			if err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
			if k.Kind != "Component" {
				dirs = append(dirs, filepath.Dir(p))
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return dirs
}

var (
	buildMu    sync.Mutex
	buildCache = map[string][]runtime.Object{}
)

// build runs kustomize on dir and decodes every object of its output strictly.
func build(t *testing.T, dir string) []runtime.Object {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if objs, ok := buildCache[dir]; ok {
		return objs
	}
	res, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	out, err := res.AsYaml()
	if err != nil {
		t.Fatal(err)
	}
	docs, err := splitDocs(out)
	if err != nil {
		t.Fatal(err)
	}
	var objs []runtime.Object
	for _, d := range docs {
		obj, err := decodeObject(d)
		if err != nil {
			t.Fatalf("kustomize build %s: %v\n%s", dir, err, d)
		}
		objs = append(objs, obj)
	}
	buildCache[dir] = objs
	return objs
}

func all[T runtime.Object](objs []runtime.Object) []T {
	var out []T
	for _, o := range objs {
		if v, ok := o.(T); ok {
			out = append(out, v)
		}
	}
	return out
}

func named[T interface {
	runtime.Object
	GetName() string
}](t *testing.T, objs []runtime.Object, name string) T {
	t.Helper()
	for _, v := range all[T](objs) {
		if v.GetName() == name {
			return v
		}
	}
	var zero T
	t.Fatalf("no %T named %s", zero, name)
	return zero
}

// workload is a Deployment or StatefulSet seen through its pod template.
type workload struct {
	kind, name string
	replicas   int32
	template   corev1.PodTemplateSpec
}

func workloads(objs []runtime.Object) []workload {
	var ws []workload
	for _, d := range all[*appsv1.Deployment](objs) {
		ws = append(ws, workload{"Deployment", d.Name, ptrOr(d.Spec.Replicas, 1), d.Spec.Template})
	}
	for _, s := range all[*appsv1.StatefulSet](objs) {
		ws = append(ws, workload{"StatefulSet", s.Name, ptrOr(s.Spec.Replicas, 1), s.Spec.Template})
	}
	return ws
}

func ptrOr[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

func selects(sel map[string]string, w workload) bool {
	return len(sel) > 0 && labels.SelectorFromSet(sel).Matches(labels.Set(w.template.Labels))
}

// containerPort finds a port of the pod by name or number (a Service's targetPort).
func podHasPort(spec corev1.PodSpec, name string, number int32) bool {
	for _, c := range spec.Containers {
		for _, p := range c.Ports {
			if (name != "" && p.Name == name) || (name == "" && p.ContainerPort == number) {
				return true
			}
		}
	}
	return false
}

func TestKustomizeBuilds(t *testing.T) {
	dirs := kustomizations(t)
	for _, want := range []string{"base", filepath.Join("overlays", "dev"), filepath.Join("overlays", "gpu"), filepath.Join("overlays", "mlserver"), filepath.Join("overlays", "tracing"),
		filepath.Join("..", "istio", "gateway"), filepath.Join("..", "istio", "security"), filepath.Join("..", "istio", "extensions")} {
		if !slices.Contains(dirs, want) {
			t.Errorf("no kustomization in %s", want)
		}
	}
	for _, dir := range dirs {
		t.Run(strings.ReplaceAll(dir, string(filepath.Separator), "_"), func(t *testing.T) {
			objs := build(t, dir)
			if len(objs) == 0 {
				t.Fatal("empty build")
			}
			if len(workloads(objs)) > 0 {
				checkMesh(t, objs)
			}
		})
	}
}

// checkMesh checks a build that runs pods: every reference resolves, every selector selects
// something, every pod is probed, sized, non-root and scraped.
func checkMesh(t *testing.T, objs []runtime.Object) {
	ws := workloads(objs)
	configMaps := map[string]*corev1.ConfigMap{}
	for _, c := range all[*corev1.ConfigMap](objs) {
		configMaps[c.Name] = c
	}
	secrets, accounts := map[string]bool{}, map[string]bool{}
	for _, s := range all[*corev1.Secret](objs) {
		secrets[s.Name] = true
	}
	for _, s := range all[*corev1.ServiceAccount](objs) {
		accounts[s.Name] = true
	}
	namespaces := map[string]bool{}
	for _, o := range objs {
		if m, ok := o.(interface{ GetNamespace() string }); ok && !clusterScoped(o) {
			namespaces[m.GetNamespace()] = true
		}
	}
	if len(namespaces) != 1 || namespaces[""] {
		t.Errorf("objects in namespaces %v, want all in one", namespaces)
	}

	for _, w := range ws {
		spec := w.template.Spec
		if !selects(w.template.Labels, w) {
			t.Errorf("%s: pod template has no labels", w.name)
		}
		if sa := spec.ServiceAccountName; sa != "" && !accounts[sa] {
			t.Errorf("%s: service account %s does not exist", w.name, sa)
		}
		for _, v := range spec.Volumes {
			if v.ConfigMap != nil && configMaps[v.ConfigMap.Name] == nil {
				t.Errorf("%s: volume %s: ConfigMap %s does not exist", w.name, v.Name, v.ConfigMap.Name)
			}
			// An optional Secret is the user's to create (storage-config): the pod starts
			// without it.
			if v.Secret != nil && !secrets[v.Secret.SecretName] && !ptrOr(v.Secret.Optional, false) {
				t.Errorf("%s: volume %s: Secret %s does not exist", w.name, v.Name, v.Secret.SecretName)
			}
		}
		if sc := spec.SecurityContext; sc == nil || sc.SeccompProfile == nil {
			t.Errorf("%s: no pod seccomp profile", w.name)
		}
		for i, c := range slices.Concat(spec.InitContainers, spec.Containers) {
			where := w.name + "/" + c.Name
			isInit := i < len(spec.InitContainers)
			for _, e := range c.Env {
				if r := refOf(e); r != nil {
					if r.configMap != "" {
						cm := configMaps[r.configMap]
						if cm == nil {
							t.Errorf("%s: env %s: ConfigMap %s does not exist", where, e.Name, r.configMap)
						} else if _, ok := cm.Data[r.key]; !ok {
							t.Errorf("%s: env %s: ConfigMap %s has no key %s", where, e.Name, r.configMap, r.key)
						}
					}
					if r.secret != "" && !secrets[r.secret] {
						t.Errorf("%s: env %s: Secret %s does not exist", where, e.Name, r.secret)
					}
				}
			}
			for _, ef := range c.EnvFrom {
				if ef.ConfigMapRef != nil && configMaps[ef.ConfigMapRef.Name] == nil {
					t.Errorf("%s: envFrom ConfigMap %s does not exist", where, ef.ConfigMapRef.Name)
				}
				if ef.SecretRef != nil && !secrets[ef.SecretRef.Name] {
					t.Errorf("%s: envFrom Secret %s does not exist", where, ef.SecretRef.Name)
				}
			}
			for _, m := range c.VolumeMounts {
				if !slices.ContainsFunc(spec.Volumes, func(v corev1.Volume) bool { return v.Name == m.Name }) {
					t.Errorf("%s: mount of unknown volume %s", where, m.Name)
				}
			}
			if c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() || c.Resources.Requests.Cpu().IsZero() {
				t.Errorf("%s: needs CPU and memory requests and a memory limit", where)
			}
			sc := c.SecurityContext
			if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
				sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
				t.Errorf("%s: must drop all capabilities and privilege escalation", where)
			}
			nonRoot := (sc != nil && sc.RunAsNonRoot != nil && *sc.RunAsNonRoot) ||
				(spec.SecurityContext != nil && spec.SecurityContext.RunAsNonRoot != nil && *spec.SecurityContext.RunAsNonRoot)
			if !nonRoot {
				t.Errorf("%s: must run as non-root", where)
			}
			if c.Name != "triton" && (sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem) {
				t.Errorf("%s: root file system must be read-only", where)
			}
			if isInit {
				continue
			}
			if c.ReadinessProbe == nil || c.LivenessProbe == nil {
				t.Errorf("%s: needs readiness and liveness probes", where)
			}
			for _, p := range []*corev1.Probe{c.ReadinessProbe, c.LivenessProbe, c.StartupProbe} {
				if p != nil && p.HTTPGet != nil && !podHasPort(corev1.PodSpec{Containers: []corev1.Container{c}}, p.HTTPGet.Port.StrVal, p.HTTPGet.Port.IntVal) {
					t.Errorf("%s: probe on port %s that the container does not declare", where, p.HTTPGet.Port.String())
				}
			}
		}
		a := w.template.Annotations
		if a["prometheus.io/scrape"] == "true" {
			port := a["prometheus.io/port"]
			if !slices.ContainsFunc(spec.Containers, func(c corev1.Container) bool {
				return slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return fmt.Sprint(p.ContainerPort) == port })
			}) || a["prometheus.io/path"] == "" {
				t.Errorf("%s: scrape annotations name port %q, which no container declares, or no path", w.name, port)
			}
		} else if w.name != "mesh-redis" {
			t.Errorf("%s: no Prometheus scrape annotations", w.name)
		}
		if w.replicas > 1 && !slices.ContainsFunc(all[*policyv1.PodDisruptionBudget](objs), func(p *policyv1.PodDisruptionBudget) bool {
			return selects(p.Spec.Selector.MatchLabels, w)
		}) {
			t.Errorf("%s: %d replicas and no PodDisruptionBudget", w.name, w.replicas)
		}
	}

	for _, p := range all[*policyv1.PodDisruptionBudget](objs) {
		if len(p.Spec.Selector.MatchExpressions) > 0 || !slices.ContainsFunc(ws, func(w workload) bool { return selects(p.Spec.Selector.MatchLabels, w) }) {
			t.Errorf("PodDisruptionBudget %s selects no pods", p.Name)
		}
		if p.Spec.MaxUnavailable == nil && p.Spec.MinAvailable == nil {
			t.Errorf("PodDisruptionBudget %s sets no bound", p.Name)
		}
	}
	for _, s := range all[*corev1.Service](objs) {
		var selected []workload
		for _, w := range ws {
			if selects(s.Spec.Selector, w) {
				selected = append(selected, w)
			}
		}
		if len(selected) == 0 {
			t.Errorf("Service %s selects no pods", s.Name)
		}
		for _, p := range s.Spec.Ports {
			for _, w := range selected {
				if !podHasPort(w.template.Spec, p.TargetPort.StrVal, p.TargetPort.IntVal) {
					t.Errorf("Service %s port %s: target port %s not declared by %s", s.Name, p.Name, p.TargetPort.String(), w.name)
				}
			}
		}
	}
	for _, b := range all[*rbacv1.RoleBinding](objs) {
		if b.RoleRef.Kind != "Role" || !slices.ContainsFunc(all[*rbacv1.Role](objs), func(r *rbacv1.Role) bool { return r.Name == b.RoleRef.Name }) {
			t.Errorf("RoleBinding %s: role %s does not exist", b.Name, b.RoleRef.Name)
		}
		for _, s := range b.Subjects {
			if s.Kind != "ServiceAccount" || !accounts[s.Name] {
				t.Errorf("RoleBinding %s: subject %s %s does not exist", b.Name, s.Kind, s.Name)
			}
		}
	}
}

type envRef struct{ configMap, secret, key string }

func refOf(e corev1.EnvVar) *envRef {
	if e.ValueFrom == nil {
		return nil
	}
	if r := e.ValueFrom.ConfigMapKeyRef; r != nil {
		return &envRef{configMap: r.Name, key: r.Key}
	}
	if r := e.ValueFrom.SecretKeyRef; r != nil {
		return &envRef{secret: r.Name, key: r.Key}
	}
	return nil
}

// What a user of the base expects to find.
func TestBaseHasTheMesh(t *testing.T) {
	objs := build(t, "base")
	replicas := map[string]int32{"mesh-controlplane": 2, "mesh-extproc": 2, "mesh-gateway": 2, "mesh-worker": 2, "mesh-redis": 1}
	for name, want := range replicas {
		if got := ptrOr(named[*appsv1.Deployment](t, objs, name).Spec.Replicas, 1); got != want {
			t.Errorf("%s: %d replicas, want %d", name, got, want)
		}
	}
	if ns := named[*corev1.Namespace](t, objs, "modelmesh"); ns.Labels["istio-injection"] != "enabled" {
		t.Error("the namespace must have Istio sidecar injection")
	}
	gw := named[*appsv1.Deployment](t, objs, "mesh-gateway")
	if img := gw.Spec.Template.Spec.Containers[0].Image; !strings.HasPrefix(img, "envoyproxy/envoy:v1.40.") {
		t.Errorf("gateway image %s, want envoyproxy/envoy:v1.40.x", img)
	}

	// RBAC: the control plane may read VirtualServices and DestinationRules and write the
	// VirtualServices' status, nothing else.
	role := named[*rbacv1.Role](t, objs, "mesh-controlplane")
	can := func(resource, verb string) bool {
		return slices.ContainsFunc(role.Rules, func(r rbacv1.PolicyRule) bool {
			return slices.Contains(r.APIGroups, "networking.istio.io") && slices.Contains(r.Resources, resource) && slices.Contains(r.Verbs, verb)
		})
	}
	for _, res := range []string{"virtualservices", "destinationrules"} {
		for _, verb := range []string{"get", "list", "watch"} {
			if !can(res, verb) {
				t.Errorf("control plane cannot %s %s", verb, res)
			}
		}
	}
	for _, res := range []string{"virtualservices/status", "destinationrules/status"} {
		if !can(res, "update") {
			t.Errorf("control plane cannot update %s", res)
		}
	}
	for _, r := range role.Rules {
		if slices.Contains(r.Verbs, "*") || slices.Contains(r.Resources, "*") || slices.ContainsFunc(r.Verbs, func(v string) bool { return v == "create" || v == "delete" }) {
			t.Errorf("role too wide: %+v", r)
		}
	}
	if named[*appsv1.Deployment](t, objs, "mesh-controlplane").Spec.Template.Spec.ServiceAccountName != "mesh-controlplane" {
		t.Error("the control plane must run as its service account")
	}

	// The gateway Service: REST and gRPC on 8080, protocol left to Istio's detection (see
	// gateway.yaml) rather than forced to HTTP/1.1 or HTTP/2.
	svc := named[*corev1.Service](t, objs, "mesh-gateway")
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != 8080 {
		t.Fatalf("mesh-gateway Service ports %+v, want 8080", svc.Spec.Ports)
	}
	p := svc.Spec.Ports[0]
	if p.AppProtocol != nil || slices.ContainsFunc([]string{"http", "http2", "grpc", "tcp", "tls", "https", "h2c"}, func(proto string) bool {
		return p.Name == proto || strings.HasPrefix(p.Name, proto+"-")
	}) {
		t.Errorf("mesh-gateway port %q: Istio must detect the protocol (no appProtocol, no protocol prefix)", p.Name)
	}
	// Workers are reached at pod IPs: headless Services declaring those ports as TCP.
	for _, name := range []string{"mesh-worker"} {
		s := named[*corev1.Service](t, objs, name)
		if s.Spec.ClusterIP != corev1.ClusterIPNone || !s.Spec.PublishNotReadyAddresses {
			t.Errorf("%s: must be headless and publish not-ready pods", name)
		}
		for _, p := range s.Spec.Ports {
			if p.AppProtocol == nil || *p.AppProtocol != "tcp" {
				t.Errorf("%s port %s: appProtocol must be tcp", name, p.Name)
			}
		}
	}
	reg, err := registry.Parse([]byte(named[*corev1.ConfigMap](t, objs, "mesh-registry").Data["registry.yaml"]))
	if err != nil {
		t.Fatalf("registry ConfigMap: %v", err)
	}
	if len(reg.Models) == 0 {
		t.Error("the example registry is empty")
	}
	boot, err := decodeBootstrap([]byte(bootstrapConfigMap(t, objs).Data["envoy.yaml"]))
	if err != nil {
		t.Fatalf("bootstrap ConfigMap: %v", err)
	}
	if boot.GetAdmin().GetAddress().GetSocketAddress().GetAddress() != "127.0.0.1" {
		t.Error("Envoy's admin interface must stay on loopback")
	}
}

func bootstrapConfigMap(t *testing.T, objs []runtime.Object) *corev1.ConfigMap {
	t.Helper()
	for _, v := range named[*appsv1.Deployment](t, objs, "mesh-gateway").Spec.Template.Spec.Volumes {
		if v.ConfigMap != nil && strings.HasPrefix(v.ConfigMap.Name, "mesh-gateway-bootstrap") {
			return named[*corev1.ConfigMap](t, objs, v.ConfigMap.Name)
		}
	}
	t.Fatal("the gateway mounts no bootstrap ConfigMap")
	return nil
}

func TestGPUOverlayAddsTritonWorkers(t *testing.T) {
	objs := build(t, filepath.Join("overlays", "gpu"))
	d := named[*appsv1.Deployment](t, objs, "mesh-worker-triton")
	if d.Namespace != "modelmesh" || d.Spec.Template.Spec.ServiceAccountName != "mesh-worker" {
		t.Errorf("triton workers: namespace %q, service account %q", d.Namespace, d.Spec.Template.Spec.ServiceAccountName)
	}
	named[*appsv1.Deployment](t, objs, "mesh-worker") // CPU workers stay
	s := named[*corev1.Service](t, objs, "mesh-worker-triton")
	for _, p := range s.Spec.Ports {
		if p.Name != "http-triton-metrics" && (p.AppProtocol == nil || *p.AppProtocol != "tcp") {
			t.Errorf("mesh-worker-triton port %s: appProtocol must be tcp", p.Name)
		}
	}
}

// TestMLServerOverlayAddsMLServerWorkers: MLServer and its worker share a process namespace
// (the worker measures MLServer's processes) and the repository at one path, and MLServer is
// started as the worker looks for it.
func TestMLServerOverlayAddsMLServerWorkers(t *testing.T) {
	objs := build(t, filepath.Join("overlays", "mlserver"))
	d := named[*appsv1.Deployment](t, objs, "mesh-worker-mlserver")
	spec := d.Spec.Template.Spec
	if d.Namespace != "modelmesh" || spec.ServiceAccountName != "mesh-worker" || spec.ShareProcessNamespace == nil || !*spec.ShareProcessNamespace {
		t.Errorf("mlserver workers: namespace %q, service account %q, shared process namespace %v", d.Namespace, spec.ServiceAccountName, spec.ShareProcessNamespace)
	}
	named[*appsv1.Deployment](t, objs, "mesh-worker") // ONNX workers stay
	var mlserver, worker *corev1.Container
	for i := range spec.Containers {
		switch spec.Containers[i].Name {
		case "mlserver":
			mlserver = &spec.Containers[i]
		case "worker":
			worker = &spec.Containers[i]
		}
	}
	if mlserver == nil || worker == nil {
		t.Fatalf("containers %v", spec.Containers)
	}
	if !slices.Equal(mlserver.Command, []string{"mlserver", "start", "/repository"}) || !slices.Contains(worker.Args, "--mlserver-repository=/repository") {
		t.Errorf("mlserver command %v, worker args %v: the worker finds MLServer by its repository", mlserver.Command, worker.Args)
	}
	if *mlserver.SecurityContext.RunAsUser != *worker.SecurityContext.RunAsUser {
		t.Error("mlserver and the worker run as different users: the worker cannot read MLServer's memory")
	}
	s := named[*corev1.Service](t, objs, "mesh-worker-mlserver")
	for _, p := range s.Spec.Ports {
		if p.Name != "http-mlserver-metrics" && (p.AppProtocol == nil || *p.AppProtocol != "tcp") {
			t.Errorf("mesh-worker-mlserver port %s: appProtocol must be tcp", p.Name)
		}
	}
}

func TestDevOverlayShrinks(t *testing.T) {
	objs := build(t, filepath.Join("overlays", "dev"))
	w := named[*appsv1.Deployment](t, objs, "mesh-worker")
	if args := w.Spec.Template.Spec.Containers[0].Args; ptrOr(w.Spec.Replicas, 1) != 1 || !slices.Contains(args, "--capacity=1GiB") || !slices.Contains(args, "--disk-cache-size=2GiB") {
		t.Errorf("dev worker: replicas %d, args %v", ptrOr(w.Spec.Replicas, 1), w.Spec.Template.Spec.Containers[0].Args)
	}
	named[*corev1.PersistentVolumeClaim](t, objs, "models")
}

// The tracing overlay points every part at the collector through mesh-config, and keeps each
// container's own variables.
func TestTracingOverlay(t *testing.T) {
	objs := build(t, filepath.Join("overlays", "tracing"))
	cfg := named[*corev1.ConfigMap](t, objs, "mesh-config")
	if cfg.Data["otlp-endpoint"] == "" {
		t.Fatal("mesh-config has no otlp-endpoint")
	}
	for deployment, variable := range map[string]string{
		"mesh-controlplane": "MESH_CONTROLPLANE_TRACING_OTLP_ADDR",
		"mesh-extproc":      "MESH_EXTPROC_OTLP_ENDPOINT",
		"mesh-worker":       "MESH_WORKER_OTLP_ENDPOINT",
	} {
		c := named[*appsv1.Deployment](t, objs, deployment).Spec.Template.Spec.Containers[0]
		var found, redis bool
		for _, e := range c.Env {
			if e.Name == variable && e.ValueFrom != nil && e.ValueFrom.ConfigMapKeyRef != nil && e.ValueFrom.ConfigMapKeyRef.Key == "otlp-endpoint" {
				found = true
			}
			redis = redis || strings.HasSuffix(e.Name, "_REDIS_ADDR")
		}
		if !found || !redis {
			t.Errorf("%s: %s from mesh-config found %v, base variables kept %v", deployment, variable, found, redis)
		}
	}
	if base := named[*appsv1.Deployment](t, build(t, "base"), "mesh-extproc"); slices.ContainsFunc(base.Spec.Template.Spec.Containers[0].Env,
		func(e corev1.EnvVar) bool { return strings.Contains(e.Name, "OTLP") }) {
		t.Error("the base must leave tracing off")
	}
}

// The Istio resources agree with the manifests: the ingress routes to the gateway Service,
// policies name existing service accounts and pods, the model examples name registered
// versions.
func TestIstioResources(t *testing.T) {
	mesh := build(t, filepath.Join("overlays", "gpu"))
	gwSvc := named[*corev1.Service](t, mesh, "mesh-gateway")
	gwHost := "mesh-gateway." + gwSvc.Namespace + ".svc.cluster.local"

	ingress := build(t, filepath.Join("..", "istio", "gateway"))
	gateway := named[*networkingv1.Gateway](t, ingress, "modelmesh")
	if gateway.Spec.Selector["istio"] != "ingressgateway" {
		t.Error("the Gateway must select the ingress gateway pods")
	}
	vs := named[*networkingv1.VirtualService](t, ingress, "modelmesh-ingress")
	if _, ok := vs.Labels["modelmesh.io/model-traffic"]; ok {
		t.Error("the ingress VirtualService must not be taken for a model's traffic policy")
	}
	if !slices.Contains(vs.Spec.Gateways, "modelmesh") {
		t.Error("the ingress VirtualService is not bound to the Gateway")
	}
	prefixes := map[string]bool{}
	for _, h := range vs.Spec.Http {
		for _, m := range h.Match {
			prefixes[m.GetUri().GetPrefix()+m.GetUri().GetExact()] = true
		}
		for _, r := range h.Route {
			if r.Destination.Host != gwHost || r.Destination.GetPort().GetNumber() != uint32(gwSvc.Spec.Ports[0].Port) {
				t.Errorf("route %s goes to %s:%d, want %s:%d", h.Name, r.Destination.Host, r.Destination.GetPort().GetNumber(), gwHost, gwSvc.Spec.Ports[0].Port)
			}
		}
	}
	for _, p := range []string{"/v2/", "/inference.GRPCInferenceService/"} {
		if !prefixes[p] {
			t.Errorf("the ingress does not route %s", p)
		}
	}
	dr := named[*networkingv1.DestinationRule](t, ingress, "mesh-gateway")
	if dr.Spec.Host != gwHost || !dr.Spec.GetTrafficPolicy().GetConnectionPool().GetHttp().GetUseClientProtocol() {
		t.Error("the ingress must keep the client's protocol to the gateway (DestinationRule useClientProtocol)")
	}

	accounts := map[string]bool{}
	for _, s := range all[*corev1.ServiceAccount](mesh) {
		accounts["cluster.local/ns/"+s.Namespace+"/sa/"+s.Name] = true
	}
	security := build(t, filepath.Join("..", "istio", "security"))
	if pa := named[*securityv1.PeerAuthentication](t, security, "default"); pa.Spec.GetMtls().GetMode().String() != "STRICT" || pa.Spec.Selector != nil {
		t.Error("mTLS must be STRICT for the whole namespace")
	}
	for _, ap := range all[*securityv1.AuthorizationPolicy](security) {
		if !slices.ContainsFunc(workloads(mesh), func(w workload) bool { return selects(ap.Spec.GetSelector().GetMatchLabels(), w) }) {
			t.Errorf("AuthorizationPolicy %s selects no pods", ap.Name)
		}
		for _, r := range ap.Spec.Rules {
			for _, f := range r.From {
				for _, p := range f.GetSource().GetPrincipals() {
					if !accounts[p] {
						t.Errorf("AuthorizationPolicy %s names %s, not a service account of the mesh", ap.Name, p)
					}
				}
			}
		}
	}
	for _, o := range security {
		if m, ok := o.(interface{ GetNamespace() string }); ok && m.GetNamespace() != gwSvc.Namespace {
			t.Errorf("%T in namespace %s", o, m.GetNamespace())
		}
	}

	ext := build(t, filepath.Join("..", "istio", "extensions"))
	wp := named[*extensionsv1alpha1.WasmPlugin](t, ext, "modelmesh-modelid")
	if wp.Spec.GetSelector().GetMatchLabels()["istio"] != "ingressgateway" || wp.Spec.Phase.String() != "AUTHN" ||
		!strings.HasPrefix(wp.Spec.Url, "oci://") {
		t.Errorf("WasmPlugin: selector %v, phase %s, url %s", wp.Spec.GetSelector().GetMatchLabels(), wp.Spec.Phase, wp.Spec.Url)
	}

	// Canary examples: one model each, subsets of a DestinationRule, versions registered.
	reg, err := registry.Parse([]byte(named[*corev1.ConfigMap](t, mesh, "mesh-registry").Data["registry.yaml"]))
	if err != nil {
		t.Fatal(err)
	}
	var examples []runtime.Object
	for _, f := range yamlFiles(t, filepath.Join("..", "istio", "examples")) {
		b, _ := os.ReadFile(f)
		docs, _ := splitDocs(b)
		for _, d := range docs {
			o, err := decodeObject(d)
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			examples = append(examples, o)
		}
	}
	subsets := map[string]map[string]string{} // model -> subset -> version
	for _, d := range all[*networkingv1.DestinationRule](examples) {
		subsets[d.Spec.Host] = map[string]string{}
		for _, s := range d.Spec.Subsets {
			subsets[d.Spec.Host][s.Name] = s.Labels["version"]
		}
	}
	vss := all[*networkingv1.VirtualService](examples)
	if len(vss) < 5 {
		t.Fatalf("%d example VirtualServices", len(vss))
	}
	var weighted, header, mirror bool
	for _, v := range vss {
		if v.Labels["modelmesh.io/model-traffic"] != "true" || v.Namespace != gwSvc.Namespace || len(v.Spec.Hosts) != 1 {
			t.Errorf("VirtualService %s: label, namespace %q or hosts %v", v.Name, v.Namespace, v.Spec.Hosts)
			continue
		}
		model := v.Spec.Hosts[0]
		dests := []*apinetworking.Destination{}
		for _, h := range v.Spec.Http {
			for _, r := range h.Route {
				dests = append(dests, r.Destination)
			}
			weighted = weighted || len(h.Route) > 1
			header = header || slices.ContainsFunc(h.Match, func(m *apinetworking.HTTPMatchRequest) bool { return len(m.Headers) > 0 })
			if h.Mirror != nil {
				mirror = true
				dests = append(dests, h.Mirror)
			}
		}
		for _, d := range dests {
			version, ok := subsets[model][d.Subset]
			if d.Host != model || !ok {
				t.Errorf("VirtualService %s: destination %s subset %s is not a subset of a DestinationRule for %s", v.Name, d.Host, d.Subset, model)
				continue
			}
			if !slices.ContainsFunc(reg.Models, func(m registry.Model) bool {
				return m.Name == model && slices.ContainsFunc(m.Versions, func(mv registry.Version) bool { return mv.Version == version })
			}) {
				t.Errorf("VirtualService %s: %s version %s is not in the base registry", v.Name, model, version)
			}
		}
	}
	if !weighted || !header || !mirror {
		t.Errorf("examples: weighted %v, header match %v, mirror %v; want all", weighted, header, mirror)
	}
}

// clusterScoped reports whether o is of a kind without a namespace.
func clusterScoped(o runtime.Object) bool {
	switch o := o.(type) {
	case *corev1.Namespace, *rbacv1.ClusterRole, *rbacv1.ClusterRoleBinding:
		return true
	case *servingRuntime:
		return o.Kind == "ClusterServingRuntime"
	}
	return false
}
