//go:build e2e

package e2e

import (
	"fmt"
	"strings"
	"sync"
	"testing"
)

// TestMeshBurstSpreadsOverWorkers: a burst of 100 distinct cold models, all at once, spreads
// over the workers: none gets more than 1.5 times its fair share of the loads (users of
// other meshes report one pod taking 30 of 50).
func TestMeshBurstSpreadsOverWorkers(t *testing.T) {
	const models, workers = 100, 3
	var reg strings.Builder
	reg.WriteString("models:\n")
	for i := range models {
		fmt.Fprintf(&reg, "  - {name: m%03d, versions: [{version: \"1\", storageUri: \"file://${MODELS}/iris/1/model.onnx\"}]}\n", i)
	}
	m := startMesh(t, meshOptions{Registry: reg.String(), Capacities: []string{"1GiB", "1GiB", "1GiB"}})
	var wg sync.WaitGroup
	failures := make(chan string, models)
	for i := range models {
		wg.Go(func() {
			code, out, err := postInfer(m.Gateway, fmt.Sprintf("m%03d", i), irisSetosa, nil)
			if err != nil || code != 200 || labelOf(out) != 0 {
				failures <- fmt.Sprintf("m%03d: %d %v %v", i, code, out, err)
			}
		})
	}
	wg.Wait()
	close(failures)
	for f := range failures {
		t.Error(f)
	}
	loads := make([]float64, len(m.workers))
	total := 0.0
	for i, w := range m.workers {
		loads[i] = w.metric(t, `mesh_worker_loads_total{result="ok"}`)
		total += loads[i]
	}
	t.Logf("loads per worker: %v (fair share %.1f)", loads, float64(models)/workers)
	if total != models {
		t.Fatalf("%v loads for %d models, want one each", total, models)
	}
	for i, n := range loads {
		if n > 1.5*models/workers {
			t.Errorf("worker %d took %v of %d loads, over 1.5 times its fair share", i, n, models)
		}
	}
}
