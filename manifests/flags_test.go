package manifests

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// Our binaries, by image name, with the package that builds each and the prefix of its
// environment variables (envPrefix in each main package).
var binaries = map[string]struct{ pkg, envPrefix string }{
	"mesh-controlplane": {"./controlplane/cmd/mesh-controlplane", "MESH_CONTROLPLANE_"},
	"mesh-extproc":      {"./extproc/cmd/mesh-extproc", "MESH_EXTPROC_"},
	"mesh-worker":       {"./runtime-worker/cmd/mesh-worker", "MESH_WORKER_"},
}

type flagSpec struct {
	isBool bool
	def    string
}

var (
	binDir    string
	flagsOnce sync.Once
	flagSets  map[string]map[string]flagSpec
	flagsErr  error
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "manifests-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// binaryFlags builds every binary once (the Go build cache makes a rebuild cheap) and reads
// the flags each one prints for -h.
func binaryFlags(t *testing.T) map[string]map[string]flagSpec {
	t.Helper()
	flagsOnce.Do(func() {
		args := []string{"build", "-o", binDir + string(filepath.Separator)}
		for _, b := range binaries {
			args = append(args, b.pkg)
		}
		cmd := exec.Command("go", args...)
		cmd.Dir = ".."
		if out, err := cmd.CombinedOutput(); err != nil {
			flagsErr = fmt.Errorf("go build: %v\n%s", err, out)
			return
		}
		flagSets = map[string]map[string]flagSpec{}
		for name := range binaries {
			out, _ := exec.Command(filepath.Join(binDir, name), "-h").CombinedOutput() // exits 1 after the usage
			fs, err := parseUsage(out)
			if err != nil {
				flagsErr = fmt.Errorf("%s -h: %v\n%s", name, err, out)
				return
			}
			flagSets[name] = fs
		}
	})
	if flagsErr != nil {
		t.Fatal(flagsErr)
	}
	return flagSets
}

var (
	usageFlag    = regexp.MustCompile(`^  -([A-Za-z0-9][-A-Za-z0-9_.]*)(?: (\S+))?$`)
	usageDefault = regexp.MustCompile(`\(default (.+)\)$`)
)

// parseUsage reads Go's flag.PrintDefaults output: "  -name type" then the indented usage,
// which ends in "(default value)" unless the default is the zero value.
func parseUsage(out []byte) (map[string]flagSpec, error) {
	fs := map[string]flagSpec{}
	var last string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if m := usageFlag.FindStringSubmatch(line); m != nil {
			last = m[1]
			fs[last] = flagSpec{isBool: m[2] == ""}
			continue
		}
		if last != "" && strings.HasPrefix(line, "    \t") {
			if m := usageDefault.FindStringSubmatch(line); m != nil {
				spec := fs[last]
				spec.def = m[1]
				if s, err := strconv.Unquote(m[1]); err == nil {
					spec.def = s
				}
				fs[last] = spec
			}
		}
	}
	if len(fs) < 5 {
		return nil, fmt.Errorf("found %d flags in the usage", len(fs))
	}
	return fs, nil
}

// invocation is one container running one of our binaries, as configured.
type invocation struct {
	binary    string
	workload  string
	container corev1.Container
	env       map[string]string // every variable, resolved
	args      map[string]string // flags given as arguments (bools as "true")
	values    map[string]string // effective value of every flag: argument, else environment, else default
}

func (in invocation) where() string { return in.workload + "/" + in.container.Name }

func (in invocation) duration(t *testing.T, flag string) time.Duration {
	t.Helper()
	d, err := time.ParseDuration(in.values[flag])
	if err != nil {
		t.Fatalf("%s: --%s=%q: %v", in.where(), flag, in.values[flag], err)
	}
	return d
}

// Sample values of the downward API, to expand $(VAR) references.
var fieldSamples = map[string]string{"metadata.name": "pod-0", "status.podIP": "10.1.2.3"}

// invocations finds every container of objs that runs one of our binaries (by image name)
// and checks its arguments and environment against the binary's flags.
func invocations(t *testing.T, objs []runtime.Object) []invocation {
	t.Helper()
	flags := binaryFlags(t)
	configMaps := map[string]*corev1.ConfigMap{}
	for _, c := range all[*corev1.ConfigMap](objs) {
		configMaps[c.Name] = c
	}
	var out []invocation
	for _, d := range all[*appsv1.Deployment](objs) {
		for _, c := range d.Spec.Template.Spec.Containers {
			img := path.Base(c.Image)
			img, _, _ = strings.Cut(img, ":")
			bin, ok := binaries[img]
			if !ok {
				continue
			}
			in := invocation{binary: img, workload: d.Name, container: c, env: map[string]string{}, args: map[string]string{}, values: map[string]string{}}
			fs := flags[img]
			for _, e := range c.Env {
				v := e.Value
				if e.ValueFrom != nil {
					switch {
					case e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.namespace":
						v = d.Namespace
					case e.ValueFrom.FieldRef != nil:
						v = fieldSamples[e.ValueFrom.FieldRef.FieldPath]
					case e.ValueFrom.ConfigMapKeyRef != nil && configMaps[e.ValueFrom.ConfigMapKeyRef.Name] != nil:
						v = configMaps[e.ValueFrom.ConfigMapKeyRef.Name].Data[e.ValueFrom.ConfigMapKeyRef.Key]
					}
				}
				in.env[e.Name] = v
			}
			if len(c.Command) > 0 {
				t.Errorf("%s: command %v replaces the image's entrypoint", in.where(), c.Command)
			}
			expand := func(s string) string {
				for k, v := range in.env {
					s = strings.ReplaceAll(s, "$("+k+")", v)
				}
				return s
			}
			for i := 0; i < len(c.Args); i++ {
				a := c.Args[i]
				if !strings.HasPrefix(a, "-") {
					t.Errorf("%s: argument %q is not a flag", in.where(), a)
					continue
				}
				name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
				spec, ok := fs[name]
				if !ok {
					t.Errorf("%s: %s has no flag --%s", in.where(), img, name)
					continue
				}
				if !hasValue {
					if spec.isBool {
						value = "true"
					} else if i+1 < len(c.Args) {
						i++
						value = c.Args[i]
					} else {
						t.Errorf("%s: --%s has no value", in.where(), name)
					}
				}
				if _, dup := in.args[name]; dup {
					t.Errorf("%s: --%s given twice", in.where(), name)
				}
				in.args[name] = expand(value)
			}
			for _, e := range c.Env {
				flag, ours := strings.CutPrefix(e.Name, bin.envPrefix)
				if !ours {
					used := slices.ContainsFunc(c.Args, func(a string) bool { return strings.Contains(a, "$("+e.Name+")") })
					if !used {
						t.Errorf("%s: env %s is neither a flag (%s...) nor used by an argument", in.where(), e.Name, bin.envPrefix)
					}
					continue
				}
				flag = strings.ToLower(strings.ReplaceAll(flag, "_", "-"))
				if _, ok := fs[flag]; !ok {
					t.Errorf("%s: env %s: %s has no flag --%s", in.where(), e.Name, img, flag)
					continue
				}
				if _, ok := in.args[flag]; ok {
					t.Errorf("%s: --%s is set by both an argument and %s (the argument wins)", in.where(), flag, e.Name)
				}
			}
			for name, spec := range fs {
				in.values[name] = spec.def
				if v, ok := in.env[bin.envPrefix+strings.ToUpper(strings.ReplaceAll(name, "-", "_"))]; ok {
					in.values[name] = v
				}
				if v, ok := in.args[name]; ok {
					in.values[name] = v
				}
			}
			out = append(out, in)
		}
	}
	return out
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func portOf(t *testing.T, where, addr string) (string, int32) {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("%s: address %q: %v", where, addr, err)
	}
	n, err := strconv.Atoi(port)
	if err != nil {
		t.Fatalf("%s: address %q: %v", where, addr, err)
	}
	return host, int32(n)
}

// Every flag and variable the manifests pass exists in the binary, and the container
// declares exactly the ports the binary listens on (outside loopback).
func TestManifestsMatchBinaries(t *testing.T) {
	seen := map[string]bool{}
	for _, dir := range kustomizations(t) {
		for _, in := range invocations(t, build(t, dir)) {
			seen[in.binary] = true
			listens := map[int32]string{}
			for name, v := range in.values {
				if name != "listen" && !strings.HasSuffix(name, "-listen") {
					continue
				}
				host, port := portOf(t, in.where(), v)
				if !isLoopback(host) {
					listens[port] = name
				}
			}
			declared := map[int32]bool{}
			for _, p := range in.container.Ports {
				declared[p.ContainerPort] = true
				if _, ok := listens[p.ContainerPort]; !ok {
					t.Errorf("%s (%s): container port %s %d, on which the binary does not listen", dir, in.where(), p.Name, p.ContainerPort)
				}
			}
			for port, flag := range listens {
				if !declared[port] {
					t.Errorf("%s (%s): --%s listens on %d, which the container does not declare", dir, in.where(), flag, port)
				}
			}
		}
	}
	for b := range binaries {
		if !seen[b] {
			t.Errorf("no manifest runs %s", b)
		}
	}
}

func TestParseUsage(t *testing.T) {
	fs, err := parseUsage([]byte("Usage of x:\n  -a string\n    \tan a (default \":1\")\n  -b\n    \ta bool\n  -c duration\n    \ta c (default 5s)\n  -d int\n    \td\n  -e value\n    \te (default 1073741824)\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]flagSpec{"a": {def: ":1"}, "b": {isBool: true}, "c": {def: "5s"}, "d": {}, "e": {def: "1073741824"}}
	for k, v := range want {
		if fs[k] != v {
			t.Errorf("%s: %+v, want %+v", k, fs[k], v)
		}
	}
}

// The components agree with each other: addresses name the right Services and ports,
// timeouts nest, the wasm module is where the control plane says, termination outlasts
// shutdown.
func TestComponentsAgree(t *testing.T) {
	for _, dir := range []string{"base", filepath.Join("overlays", "gpu"), filepath.Join("overlays", "mlserver"), filepath.Join("overlays", "dev")} {
		t.Run(strings.ReplaceAll(dir, string(filepath.Separator), "_"), func(t *testing.T) {
			objs := build(t, dir)
			byWorkload := map[string][]invocation{}
			for _, in := range invocations(t, objs) {
				byWorkload[in.workload] = append(byWorkload[in.workload], in)
			}
			one := func(w string) invocation {
				if len(byWorkload[w]) != 1 {
					t.Fatalf("%d %s containers", len(byWorkload[w]), w)
				}
				return byWorkload[w][0]
			}
			cp, ep := one("mesh-controlplane"), one("mesh-extproc")

			// serviceTarget resolves host:port through a Service to the container port it
			// reaches, and checks the Service selects the workload.
			serviceTarget := func(where, addr, workload string) int32 {
				host, port := portOf(t, where, addr)
				svc := named[*corev1.Service](t, objs, host)
				d := named[*appsv1.Deployment](t, objs, workload)
				if !selects(svc.Spec.Selector, workload2(d)) {
					t.Errorf("%s: Service %s does not select %s", where, host, workload)
				}
				for _, p := range svc.Spec.Ports {
					if p.Port != port {
						continue
					}
					if p.TargetPort.IntVal != 0 {
						return p.TargetPort.IntVal
					}
					for _, c := range d.Spec.Template.Spec.Containers {
						for _, cp := range c.Ports {
							if cp.Name == p.TargetPort.StrVal {
								return cp.ContainerPort
							}
						}
					}
				}
				t.Errorf("%s: Service %s has no port %d", where, host, port)
				return 0
			}
			listenPort := func(in invocation, flag string) int32 {
				_, p := portOf(t, in.where(), in.values[flag])
				return p
			}

			if got, want := serviceTarget(cp.where()+" --extproc-addr", cp.values["extproc-addr"], "mesh-extproc"), listenPort(ep, "listen"); got != want {
				t.Errorf("--extproc-addr reaches port %d, ext_proc listens on %d", got, want)
			}
			if cp.values["extproc-max-message-timeout"] != ep.values["max-message-timeout"] && cp.duration(t, "extproc-max-message-timeout") != ep.duration(t, "max-message-timeout") {
				t.Errorf("control plane --extproc-max-message-timeout %s, ext_proc --max-message-timeout %s: must be equal",
					cp.values["extproc-max-message-timeout"], ep.values["max-message-timeout"])
			}
			if cp.duration(t, "extproc-max-message-timeout") < ep.duration(t, "load-deadline")+5*time.Second {
				t.Error("--extproc-max-message-timeout must exceed ext_proc's --load-deadline by 5 s")
			}
			redis := named[*appsv1.Deployment](t, objs, "mesh-redis").Spec.Template.Spec.Containers[0].Ports[0].ContainerPort
			var workers []invocation
			for w, ins := range byWorkload {
				if strings.HasPrefix(w, "mesh-worker") {
					workers = append(workers, ins...)
				}
			}
			if len(workers) == 0 {
				t.Fatal("no workers")
			}
			for _, in := range append([]invocation{cp, ep}, workers...) {
				if got := serviceTarget(in.where()+" redis address", in.values["redis-addr"], "mesh-redis"); got != redis {
					t.Errorf("%s: Redis address reaches port %d, Redis listens on %d", in.where(), got, redis)
				}
				if in.values["redis-prefix"] != cp.values["redis-prefix"] {
					t.Errorf("%s: Redis prefix %q, control plane's %q", in.where(), in.values["redis-prefix"], cp.values["redis-prefix"])
				}
			}

			// The gateway: listener port, wasm module path, bootstrap to the control plane.
			gw := named[*appsv1.Deployment](t, objs, "mesh-gateway")
			gws := gw.Spec.Template.Spec
			envoy := gws.Containers[0]
			gwPort, _ := strconv.Atoi(cp.values["gateway-port"])
			if !slices.ContainsFunc(envoy.Ports, func(p corev1.ContainerPort) bool { return p.Name == "http" && p.ContainerPort == int32(gwPort) }) {
				t.Errorf("--gateway-port %d is not the Envoy container's http port", gwPort)
			}
			wasm := cp.values["wasm-path"]
			var wasmVolume string
			for _, m := range envoy.VolumeMounts {
				if path.Dir(wasm) == m.MountPath {
					wasmVolume = m.Name
				}
			}
			if wasmVolume == "" || len(gws.InitContainers) != 1 {
				t.Fatalf("--wasm-path %s: no volume of the Envoy container there, or no init container to fill it", wasm)
			}
			init := gws.InitContainers[0]
			for _, m := range init.VolumeMounts {
				if m.Name == wasmVolume && !slices.Contains(slices.Concat(init.Command, init.Args), path.Join(m.MountPath, path.Base(wasm))) {
					t.Errorf("the init container does not write %s (command %v)", path.Join(m.MountPath, path.Base(wasm)), init.Command)
				}
			}
			boot, err := decodeBootstrap([]byte(bootstrapConfigMap(t, objs).Data["envoy.yaml"]))
			if err != nil {
				t.Fatal(err)
			}
			xds := bootstrapCluster(t, boot, boot.GetDynamicResources().GetAdsConfig().GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName())
			sa := xds.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
			xdsAddr := net.JoinHostPort(sa.GetAddress(), fmt.Sprint(sa.GetPortValue()))
			if got := serviceTarget("bootstrap xds cluster", xdsAddr, "mesh-controlplane"); got != listenPort(cp, "xds-listen") {
				t.Errorf("the bootstrap's xds cluster reaches port %d, the control plane listens on %d", got, listenPort(cp, "xds-listen"))
			}
			for _, p := range []*corev1.Probe{envoy.ReadinessProbe, envoy.LivenessProbe} {
				var port int32
				for _, cpt := range envoy.Ports {
					if cpt.Name == p.HTTPGet.Port.StrVal {
						port = cpt.ContainerPort
					}
				}
				if !bootstrapServes(boot, port, p.HTTPGet.Path) {
					t.Errorf("the gateway's probe %s on port %d is not served by the bootstrap", p.HTTPGet.Path, port)
				}
			}
			if gw.Spec.Template.Spec.TerminationGracePeriodSeconds == nil || *gw.Spec.Template.Spec.TerminationGracePeriodSeconds <= preStopSleep(envoy) {
				t.Error("the gateway's grace period must outlast its preStop sleep")
			}

			// Workers: advertised at the pod IP, on the ports they (or Triton, or MLServer) listen on, which
			// their headless Service declares as TCP; termination outlasts shutdown.
			for _, in := range workers {
				svc := named[*corev1.Service](t, objs, in.workload)
				d := named[*appsv1.Deployment](t, objs, in.workload)
				tcpPorts := map[int32]bool{}
				for _, p := range svc.Spec.Ports {
					if p.AppProtocol != nil && *p.AppProtocol == "tcp" {
						tcpPorts[p.Port] = true
					}
				}
				if in.values["advertise-host"] != fieldSamples["status.podIP"] {
					t.Errorf("%s: --advertise-host %q is not the pod IP", in.where(), in.values["advertise-host"])
				}
				ports := []int32{listenPort(in, "management-listen")}
				if rt := in.values["runtime"]; rt == "triton" || rt == "mlserver" {
					for _, flag := range []string{rt + "-http", rt + "-grpc"} {
						host, port := portOf(t, in.where(), in.values[flag])
						if host != "" {
							t.Errorf("%s: --%s %s names a host; %s runs beside the worker, advertised at --advertise-host", in.where(), flag, in.values[flag], rt)
						}
						ports = append(ports, port)
					}
				} else {
					ports = append(ports, listenPort(in, "listen"))
				}
				for _, port := range ports {
					if !podHasPort(d.Spec.Template.Spec, "", port) || !tcpPorts[port] {
						t.Errorf("%s: advertised port %d must be a container port and a TCP port of Service %s", in.where(), port, svc.Name)
					}
				}
				need := in.duration(t, "shutdown-timeout") + in.duration(t, "drain-timeout") + in.duration(t, "drain-grace")
				grace := time.Duration(ptrOr(d.Spec.Template.Spec.TerminationGracePeriodSeconds, 30)) * time.Second
				if grace <= need+time.Duration(preStopSleep(in.container))*time.Second {
					t.Errorf("%s: terminationGracePeriodSeconds %s, shutdown + drain timeout + grace %s", in.where(), grace, need)
				}
			}
			d := named[*appsv1.Deployment](t, objs, "mesh-extproc")
			grace := time.Duration(ptrOr(d.Spec.Template.Spec.TerminationGracePeriodSeconds, 30)) * time.Second
			if grace <= ep.duration(t, "shutdown-timeout")+time.Duration(preStopSleep(ep.container))*time.Second {
				t.Errorf("ext_proc: terminationGracePeriodSeconds %s does not cover preStop + --shutdown-timeout %s", grace, ep.values["shutdown-timeout"])
			}
			if ep.duration(t, "shutdown-timeout") < ep.duration(t, "load-deadline") {
				t.Error("ext_proc's --shutdown-timeout should let a held request reach its --load-deadline")
			}
		})
	}
}

func workload2(d *appsv1.Deployment) workload {
	return workload{"Deployment", d.Name, ptrOr(d.Spec.Replicas, 1), d.Spec.Template}
}

func preStopSleep(c corev1.Container) int64 {
	if c.Lifecycle != nil && c.Lifecycle.PreStop != nil && c.Lifecycle.PreStop.Sleep != nil {
		return c.Lifecycle.PreStop.Sleep.Seconds
	}
	return 0
}

func bootstrapCluster(t *testing.T, b *bootstrapv3.Bootstrap, name string) *clusterv3.Cluster {
	t.Helper()
	for _, c := range b.GetStaticResources().GetClusters() {
		if c.GetName() == name {
			return c
		}
	}
	t.Fatalf("bootstrap has no cluster %s", name)
	return nil
}

// bootstrapServes reports whether a static listener of b on port routes path.
func bootstrapServes(b *bootstrapv3.Bootstrap, port int32, path string) bool {
	for _, l := range b.GetStaticResources().GetListeners() {
		if int32(l.GetAddress().GetSocketAddress().GetPortValue()) != port {
			continue
		}
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				var hcm hcmv3.HttpConnectionManager
				if f.GetTypedConfig().UnmarshalTo(&hcm) != nil {
					continue
				}
				for _, vh := range hcm.GetRouteConfig().GetVirtualHosts() {
					for _, r := range vh.GetRoutes() {
						if r.GetMatch().GetPath() == path && r.GetRoute().GetCluster() != "" {
							return true
						}
					}
				}
			}
		}
	}
	return false
}
