package manifests

import (
	"fmt"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/modelmesh/mesh/runtime-worker/storage"
)

// storageSecret is the Secret of storage keys every worker mounts.
const storageSecret = "storage-config"

// parseByteSize reads a size as mesh-worker's byteSize flags do: bytes, or a whole number
// of KiB, MiB or GiB.
func parseByteSize(s string) (int64, error) {
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}} {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSuffix(s, u.suffix), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("%q is not a size in bytes", s)
	}
	return n * mult, nil
}

func TestParseByteSize(t *testing.T) {
	for in, want := range map[string]int64{"10GiB": 10 << 30, "2304MiB": 2304 << 20, "512": 512, "4KiB": 4096} {
		if got, err := parseByteSize(in); err != nil || got != want {
			t.Errorf("%s: %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "10G", "1.5GiB", "-1"} {
		if _, err := parseByteSize(in); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}

// mountAt is c's mount at exactly dir.
func mountAt(c corev1.Container, dir string) *corev1.VolumeMount {
	for i, m := range c.VolumeMounts {
		if path.Clean(m.MountPath) == path.Clean(dir) {
			return &c.VolumeMounts[i]
		}
	}
	return nil
}

func volumeNamed(spec corev1.PodSpec, name string) *corev1.Volume {
	for i, v := range spec.Volumes {
		if v.Name == name {
			return &spec.Volumes[i]
		}
	}
	return nil
}

// within reports whether p is dir or below it.
func within(p, dir string) bool {
	p, dir = path.Clean(p), path.Clean(dir)
	return p == dir || strings.HasPrefix(p, strings.TrimSuffix(dir, "/")+"/")
}

// Every worker of every kustomization keeps its disk tier on an emptyDir sized above
// --disk-cache-size, finds the storage-config Secret where --storage-config points, and
// asks for the ephemeral storage its disk volumes can take.
func TestWorkerStorage(t *testing.T) {
	seen := map[string]bool{}
	for _, dir := range kustomizations(t) {
		objs := build(t, dir)
		for _, s := range all[*corev1.Secret](objs) {
			if s.Name == storageSecret {
				t.Errorf("%s: builds Secret %s; it is the user's to create (manifests/examples)", dir, s.Name)
			}
		}
		for _, in := range invocations(t, objs) {
			if in.binary != "mesh-worker" {
				continue
			}
			seen[in.workload] = true
			spec := named[*appsv1.Deployment](t, objs, in.workload).Spec.Template.Spec
			checkWorkerStorage(t, dir+" ("+in.where()+")", in, spec)
		}
	}
	for _, w := range []string{"mesh-worker", "mesh-worker-triton"} {
		if !seen[w] {
			t.Errorf("no kustomization runs %s", w)
		}
	}
}

func checkWorkerStorage(t *testing.T, where string, in invocation, spec corev1.PodSpec) {
	// Explicit, not defaults: without --cache-dir the tier would be a temporary directory
	// on /tmp (64Mi here), and the budget must be visible beside the volume's sizeLimit.
	for _, flag := range []string{"cache-dir", "disk-cache-size", "storage-config"} {
		if _, ok := in.args[flag]; !ok {
			t.Errorf("%s: --%s must be given", where, flag)
		}
	}
	budget, err := parseByteSize(in.values["disk-cache-size"])
	if err != nil || budget <= 0 {
		t.Fatalf("%s: --disk-cache-size=%s: %v", where, in.values["disk-cache-size"], err)
	}

	// The disk tier: a writable emptyDir on the node's disk, at --cache-dir, with a
	// sizeLimit at least 5% above the budget (each entry's meta.json, block rounding):
	// reaching sizeLimit gets the pod evicted, reaching the budget only evicts models.
	cacheDir := in.values["cache-dir"]
	var tierLimit int64
	if m := mountAt(in.container, cacheDir); m == nil {
		t.Errorf("%s: no volume is mounted at --cache-dir=%s", where, cacheDir)
	} else if v := volumeNamed(spec, m.Name); m.ReadOnly || m.SubPath != "" || v == nil || v.EmptyDir == nil {
		t.Errorf("%s: --cache-dir=%s must be a writable emptyDir mounted whole (volume %s)", where, cacheDir, m.Name)
	} else if v.EmptyDir.Medium == corev1.StorageMediumMemory {
		t.Errorf("%s: the disk tier's volume %s is memory-backed: it would take the models' memory", where, v.Name)
	} else if v.EmptyDir.SizeLimit == nil {
		t.Errorf("%s: the disk tier's volume %s has no sizeLimit", where, v.Name)
	} else if tierLimit = v.EmptyDir.SizeLimit.Value(); tierLimit < budget+budget/20 {
		t.Errorf("%s: volume %s sizeLimit %s is not 5%% above --disk-cache-size=%s", where, v.Name, v.EmptyDir.SizeLimit, in.values["disk-cache-size"])
	}

	// The storage-config Secret: read-only at --storage-config, every key, optional (a
	// cluster with no Secret, using cloud identities, still starts), no subPath (a rotated
	// Secret must reach the running worker).
	cfgDir := in.values["storage-config"]
	if m := mountAt(in.container, cfgDir); m == nil {
		t.Errorf("%s: no volume is mounted at --storage-config=%s", where, cfgDir)
	} else if v := volumeNamed(spec, m.Name); v == nil || v.Secret == nil || v.Secret.SecretName != storageSecret {
		t.Errorf("%s: --storage-config=%s is not the %s Secret (volume %s)", where, cfgDir, storageSecret, m.Name)
	} else {
		if !m.ReadOnly || m.SubPath != "" {
			t.Errorf("%s: the %s Secret must be mounted read-only and whole", where, storageSecret)
		}
		if !ptrOr(v.Secret.Optional, false) {
			t.Errorf("%s: the %s Secret must be optional", where, storageSecret)
		}
		if len(v.Secret.Items) > 0 {
			t.Errorf("%s: the %s Secret's volume lists items: every storage key must reach the worker", where, storageSecret)
		}
	}
	if within(cacheDir, cfgDir) || within(cfgDir, cacheDir) {
		t.Errorf("%s: --cache-dir=%s and --storage-config=%s overlap", where, cacheDir, cfgDir)
	}
	for _, root := range strings.Split(in.values["model-roots"], ",") {
		if root = strings.TrimSpace(root); root == "" {
			continue
		}
		if m := mountAt(in.container, root); m == nil || !m.ReadOnly {
			t.Errorf("%s: --model-roots %s is not a read-only mount", where, root)
		}
		if within(cacheDir, root) || within(root, cacheDir) {
			t.Errorf("%s: --cache-dir=%s and model root %s overlap", where, cacheDir, root)
		}
	}

	// Ephemeral storage: the kubelet evicts a pod whose disk volumes, writable layers and
	// logs together pass the sum of its containers' limits, so every container states one,
	// every disk-backed emptyDir is bounded, and the limits cover the bounds with room for
	// logs. The tier fills up to its budget and stays there: the requests cover its volume.
	var bounded int64
	for _, v := range spec.Volumes {
		if v.EmptyDir == nil || v.EmptyDir.Medium == corev1.StorageMediumMemory {
			continue
		}
		if v.EmptyDir.SizeLimit == nil {
			t.Errorf("%s: emptyDir %s has no sizeLimit", where, v.Name)
			continue
		}
		bounded += v.EmptyDir.SizeLimit.Value()
	}
	var requests, limits int64
	for _, c := range spec.Containers {
		r, okR := c.Resources.Requests[corev1.ResourceEphemeralStorage]
		l, okL := c.Resources.Limits[corev1.ResourceEphemeralStorage]
		if !okR || !okL {
			t.Errorf("%s: container %s needs an ephemeral-storage request and limit", where, c.Name)
			continue
		}
		if r.Cmp(l) > 0 {
			t.Errorf("%s: container %s requests more ephemeral storage than its limit", where, c.Name)
		}
		requests += r.Value()
		limits += l.Value()
	}
	const logs = 256 << 20
	if limits < bounded+logs {
		t.Errorf("%s: ephemeral-storage limits %d MiB do not cover the emptyDirs' %d MiB plus %d MiB of logs", where, limits>>20, bounded>>20, logs>>20)
	}
	if requests < tierLimit {
		t.Errorf("%s: ephemeral-storage requests %d MiB are below the disk tier's volume, %d MiB", where, requests>>20, tierLimit>>20)
	}
}

// A Secret key is a file name in the mounted volume (Kubernetes' rule for keys).
var secretKey = regexp.MustCompile(`^[-._a-zA-Z0-9]+$`)

// The example storage-config Secret is the one the workers mount, in their namespace, and
// the worker's own parser accepts every entry; its credentials are placeholders.
func TestStorageConfigExample(t *testing.T) {
	sec := decode[corev1.Secret](t, filepath.Join("examples", "storage-config.yaml"))
	base := named[*appsv1.Deployment](t, build(t, "base"), "mesh-worker")
	if !slices.ContainsFunc(base.Spec.Template.Spec.Volumes, func(v corev1.Volume) bool {
		return v.Secret != nil && v.Secret.SecretName == sec.Name
	}) {
		t.Errorf("the example Secret %s is not the one the workers mount", sec.Name)
	}
	if sec.Namespace != base.Namespace {
		t.Errorf("the example Secret is in namespace %q, the workers in %q", sec.Namespace, base.Namespace)
	}
	raw := map[string][]byte{}
	for k, v := range sec.Data {
		raw[k] = v
	}
	for k, v := range sec.StringData {
		raw[k] = []byte(v)
	}
	for k := range raw {
		if !secretKey.MatchString(k) || k == "." || k == ".." {
			t.Errorf("key %q is not a valid Secret key", k)
		}
	}
	configs := storage.ParseConfigs(raw)
	for _, err := range configs.Broken() {
		t.Error(err)
	}
	byType := map[string]storage.Config{}
	for _, k := range configs.Keys() {
		c, err := configs.Get(k)
		if err != nil {
			t.Fatal(err)
		}
		byType[c.Type] = c
	}
	s3, ok := byType["s3"]
	if !ok || s3.EndpointURL == "" || s3.BucketLookup != "path" || s3.Bucket == "" {
		t.Errorf("want an s3 entry for an S3-compatible endpoint, addressed by path, with a bucket: %v", s3)
	}
	gcs, ok := byType["gcs"]
	if !ok || gcs.Bucket == "" {
		t.Errorf("want a gcs entry with a bucket: %v", gcs)
	}
	for name, v := range map[string]string{"s3 access_key_id": s3.AccessKeyID, "s3 secret_access_key": s3.SecretAccessKey, "gcs private_key": gcs.PrivateKey} {
		if !strings.Contains(v, "REPLACE_ME") {
			t.Errorf("%s must be a REPLACE_ME placeholder", name)
		}
	}
}
