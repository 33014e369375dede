//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelmesh/mesh/proto/meshv1"
)

// bcDestinationRule maps the subset names the VirtualServices use to registered versions.
const bcDestinationRule = `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: breast-cancer, namespace: models, labels: {modelmesh.io/model-traffic: "true"}}
spec:
  host: breast-cancer
  subsets:
    - {name: stable, labels: {version: "1"}}
    - {name: canary, labels: {version: "2"}}
`

// bcVirtualService routes breast-cancer: tester alice to the canary, the rest split by
// weight; mirror, when set, is the percentage of the split's requests copied to the canary.
func bcVirtualService(stable, canary int, mirror float64) string {
	vs := fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: breast-cancer, namespace: models, labels: {modelmesh.io/model-traffic: "true"}}
spec:
  hosts: [breast-cancer]
  http:
    - name: pin-tester
      match: [{headers: {x-tester: {exact: alice}}}]
      route: [{destination: {host: breast-cancer, subset: canary}}]
    - name: split
      route:
        - {destination: {host: breast-cancer, subset: stable}, weight: %d}
        - {destination: {host: breast-cancer, subset: canary}, weight: %d}
`, stable, canary)
	if mirror > 0 {
		vs += fmt.Sprintf("      mirror: {host: breast-cancer, subset: canary}\n      mirrorPercentage: {value: %g}\n", mirror)
	}
	return vs
}

// digitsRewriteVS is a VirtualService the mesh rejects: it rewrites the path, which the
// gateway cannot honour.
const digitsRewriteVS = `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: digits-rewrite, namespace: models}
spec:
  hosts: [digits]
  http:
    - rewrite: {uri: /v2/models/iris/infer}
      route: [{destination: {host: digits}}]
`

// writeAtomically replaces path the way editors and kubectl-synced volumes do.
func writeAtomically(t testing.TB, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	must(t, os.WriteFile(tmp, []byte(content), 0o644))
	must(t, os.Rename(tmp, path))
}

// TestIstioVirtualServicesFromFiles drives breast-cancer's traffic from VirtualService and
// DestinationRule files in the control plane's --istio-dir, through the real Envoy: a 90/10
// split, a header match pinning a tester, an invalid VirtualService rejected alone with a
// readable reason, a mirror that copies traffic without changing answers or loading a cold
// version, and weight changes under load with zero failed requests, one of them to a cold
// version, which gets its share through the lazy-load path.
func TestIstioVirtualServicesFromFiles(t *testing.T) {
	dir := t.TempDir()
	vsPath := filepath.Join(dir, "breast-cancer.yaml")
	must(t, os.WriteFile(filepath.Join(dir, "destinationrules.yaml"), []byte(bcDestinationRule), 0o644))
	must(t, os.WriteFile(vsPath, []byte(bcVirtualService(90, 10, 0)), 0o644))
	m := startMesh(t, meshOptions{ControlPlaneArgs: []string{"--istio-dir", dir}})

	row := testsetRow(t, "breast-cancer")
	version := func(headers map[string]string) string {
		t.Helper()
		code, out := inferREST(t, m.Gateway, "breast-cancer", row, headers)
		if code != 200 {
			t.Fatalf("breast-cancer: %d %v", code, out)
		}
		v, _ := out["model_version"].(string)
		return v
	}
	alice := map[string]string{"x-tester": "alice"}

	// The tester is pinned to the canary from the first, cold request on.
	for range 5 {
		if v := version(alice); v != "2" {
			t.Fatalf("tester alice got version %q, want the canary 2", v)
		}
	}
	// Warm the stable version, then the split is served hot.
	if code, out := inferREST(t, m.Gateway, "breast-cancer/versions/1", row, nil); code != 200 {
		t.Fatalf("warm version 1: %d %v", code, out)
	}
	m.waitHot(t, "breast-cancer", "1")
	m.waitHot(t, "breast-cancer", "2")
	const n = 1000
	canary := 0
	for range n {
		if version(nil) == "2" {
			canary++
		}
	}
	// 10% of 1000 has a standard deviation of 9.5; 4 deviations either side.
	if canary < 62 || canary > 138 {
		t.Fatalf("%d of %d requests went to the 10%% canary", canary, n)
	}

	// An invalid VirtualService (a rewrite the mesh cannot honour) is rejected alone, with a
	// reason the user can read; the valid one keeps working, and digits, which the invalid one
	// names, keeps its registry routing.
	must(t, os.WriteFile(filepath.Join(dir, "digits.yaml"), []byte(digitsRewriteVS), 0o644))
	eventually(t, 10*time.Second, "the invalid VirtualService reported rejected", func() bool {
		code, body := get(t, "http://"+m.CPMetrics+"/status/virtualservices")
		return code == 200 && strings.Contains(body, "digits-rewrite") && strings.Contains(body, "rewrite") &&
			strings.Contains(strings.ToLower(body), "rejected")
	})
	if v := version(alice); v != "2" {
		t.Fatalf("after an invalid VirtualService, tester alice got version %q", v)
	}
	if code, out := inferREST(t, m.Gateway, "digits", testsetRow(t, "digits"), nil); code != 200 {
		t.Fatalf("digits after its VirtualService was rejected: %d %v", code, out)
	}
	if got := counter(t, m.CPMetrics, `mesh_controlplane_virtualservices{state="rejected"}`); got != 1 {
		t.Fatalf("rejected VirtualServices gauge %v, want 1", got)
	}

	// Mirror: everything answered by stable, and every request copied to the canary.
	writeAtomically(t, vsPath, bcVirtualService(100, 0, 100))
	canaryStat := "cluster.model|breast-cancer|2.upstream_rq_total"
	eventually(t, 10*time.Second, "the mirror in force", func() bool {
		// Under the old 90/10 split, 20 requests cannot reach the canary 20 times.
		before := m.envoyStat(t, canaryStat)
		for range 20 {
			if version(nil) != "1" {
				return false
			}
		}
		return m.envoyStat(t, canaryStat)-before >= 20
	})
	before := m.envoyStat(t, canaryStat)
	for range 50 {
		if v := version(nil); v != "1" {
			t.Fatalf("with the canary mirrored, an answer came from version %q", v)
		}
	}
	eventually(t, 5*time.Second, "50 requests mirrored", func() bool { return m.envoyStat(t, canaryStat)-before >= 50 })

	// Mirrored traffic never loads: with the canary unloaded, the mirror is silent and no
	// load happens, however many requests pass.
	bc2 := &meshv1.ModelRef{Name: "breast-cancer", Version: "2"}
	for _, w := range m.workers {
		if _, err := w.Mgmt.Drain(context.Background(), &meshv1.DrainRequest{Model: bc2}); err != nil && !strings.Contains(err.Error(), "not loaded") {
			t.Fatalf("drain the canary on %s: %v", w.ID, err)
		}
	}
	eventually(t, 15*time.Second, "the canary unloaded everywhere", func() bool { return !m.ready(t, "breast-cancer", "2") })
	loads := m.loads(t)
	for range 50 {
		if v := version(nil); v != "1" {
			t.Fatalf("with the canary mirrored and cold, an answer came from version %q", v)
		}
	}
	if got := m.loads(t); got != loads || m.ready(t, "breast-cancer", "2") {
		t.Fatalf("mirrored requests loaded the cold canary: %v loads before, %v after", loads, got)
	}

	// Weight changes under load: 4 clients keep sending while the split moves to a cold
	// canary at 50%, then to 100% canary, then back. Not one request may fail.
	var sent, failed atomic.Int64
	var firstFailure atomic.Value
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				code, out, err := postInfer(m.Gateway, "breast-cancer", row, nil)
				sent.Add(1)
				if code != 200 || err != nil {
					failed.Add(1)
					firstFailure.CompareAndSwap(nil, fmt.Sprintf("%d %v %v", code, out, err))
				}
			}
		}()
	}
	shift := func(stable, canary int, want func(v string) bool, what string) {
		t.Helper()
		writeAtomically(t, vsPath, bcVirtualService(stable, canary, 0))
		eventually(t, 20*time.Second, what, func() bool {
			hits := 0
			for range 20 {
				if want(version(nil)) {
					hits++
				}
			}
			return hits >= 20
		})
	}
	shift(50, 50, func(string) bool { return true }, "a 50/50 split served")
	eventually(t, 20*time.Second, "the cold canary loaded through the lazy-load path", func() bool { return m.ready(t, "breast-cancer", "2") })
	shift(0, 100, func(v string) bool { return v == "2" }, "all traffic on the canary")
	shift(100, 0, func(v string) bool { return v == "1" }, "all traffic back on stable")
	stop()
	wg.Wait()
	if failed.Load() != 0 {
		t.Fatalf("%d of %d requests failed while weights changed; first: %v", failed.Load(), sent.Load(), firstFailure.Load())
	}
	t.Logf("weight changes under load: %d requests, 0 failed", sent.Load())
}
