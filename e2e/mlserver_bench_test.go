//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/modelmesh/mesh/proto/inference"
	"github.com/modelmesh/mesh/proto/meshv1"
)

// BenchmarkMLServer measures, in one run, a scikit-learn model's load and unload through the
// worker's management API against MLServer's own repository API (after one untimed round),
// and the hot path through
// the mesh gateway against MLServer's HTTP port called directly.
func BenchmarkMLServer(b *testing.B) {
	ml := startMLServer(b)
	const model = "wine-sklearn"
	file := filepath.Join(models(b), model, "1", "model.joblib")
	reg := fmt.Sprintf("models:\n  - {name: %s, format: sklearn, versions: [{version: \"1\", storageUri: \"file://%s\"}]}\n", model, file)
	m := startMesh(b, meshOptions{Registry: reg, MoreWorkers: [][]string{append([]string{"--capacity", "1GiB"}, ml.workerArgs()...)}, Capacities: []string{"64MiB"}})
	m.awaitReads(b, "sklearn")
	w := m.workers[1]
	ctx := context.Background()
	ref := &meshv1.ModelRef{Name: model, Version: "1"}

	// MLServer's own API, on a model the worker does not manage: a copy under another name
	// in MLServer's repository, with settings as a user would write them.
	direct := inference.NewGRPCInferenceServiceClient(dial(b, ml.GRPC))
	dir := filepath.Join(ml.repo, "direct")
	must(b, os.MkdirAll(dir, 0o755))
	body, err := os.ReadFile(file)
	must(b, err)
	must(b, os.WriteFile(filepath.Join(dir, "model.joblib"), body, 0o644))
	must(b, os.WriteFile(filepath.Join(dir, "model-settings.json"),
		[]byte(`{"name": "direct", "implementation": "mlserver_sklearn.SKLearnModel", "parameters": {"uri": "./model.joblib", "version": "1"}}`), 0o644))

	// One round untimed: the first unpickling of a random forest imports scikit-learn's
	// ensemble modules into MLServer (about 0.2 s), which whichever ran first would pay.
	_, err = w.Mgmt.Load(ctx, &meshv1.LoadRequest{Model: ref, StorageUri: "file://" + file, Format: "sklearn"})
	must(b, err)
	_, err = w.Mgmt.Unload(ctx, &meshv1.UnloadRequest{Model: ref})
	must(b, err)
	gone(b, w, model)
	const rounds = 10
	var meshLoad, meshUnload, mlLoad, mlUnload time.Duration
	for range b.N {
		for range rounds {
			start := time.Now()
			_, err := w.Mgmt.Load(ctx, &meshv1.LoadRequest{Model: ref, StorageUri: "file://" + file, Format: "sklearn"})
			must(b, err)
			meshLoad += time.Since(start)
			start = time.Now()
			_, err = w.Mgmt.Unload(ctx, &meshv1.UnloadRequest{Model: ref})
			must(b, err)
			gone(b, w, model)
			meshUnload += time.Since(start)

			start = time.Now()
			_, err = direct.RepositoryModelLoad(ctx, &inference.RepositoryModelLoadRequest{ModelName: "direct"})
			must(b, err)
			mlLoad += time.Since(start)
			start = time.Now()
			_, err = direct.RepositoryModelUnload(ctx, &inference.RepositoryModelUnloadRequest{ModelName: "direct"})
			must(b, err)
			mlUnload += time.Since(start)
		}
	}
	n := time.Duration(b.N * rounds)
	fmt.Printf("\nMLServer, scikit-learn model, %d rounds: load through the worker %v vs MLServer's own %v (%.2fx); unload until gone from the worker (drained: out of the gateway's routes first) %v vs %v (%.2fx)\n",
		b.N*rounds, meshLoad/n, mlLoad/n, float64(meshLoad)/float64(mlLoad), meshUnload/n, mlUnload/n, float64(meshUnload)/float64(mlUnload))

	// Hot path: MLServer's HTTP port directly against the gateway in front of it, one row.
	wine := readNativeTestset(b, model)
	req, _ := json.Marshal(map[string]any{"inputs": []map[string]any{{"name": "input-0", "datatype": "FP64", "shape": []int{1, len(wine.Inputs[0])}, "data": wine.Inputs[0]}}})
	_, err = direct.RepositoryModelLoad(ctx, &inference.RepositoryModelLoadRequest{ModelName: "direct"})
	must(b, err)
	if code, body, _ := restPredict(b, m.Gateway, model, wine.Inputs[:1]); code != 200 {
		b.Fatalf("warm %s: %d %s", model, code, body)
	}
	m.waitHot(b, model, "1")
	type row struct{ p50, p99, max float64 }
	rows := map[string]row{}
	for _, tg := range []struct{ name, url string }{
		{"mlserver", "http://" + ml.HTTP + "/v2/models/direct/infer"},
		{"mesh", "http://" + m.Gateway + "/v2/models/" + model + "/infer"},
	} {
		p50, p99, _ := loadBody(b, tg.url, string(req), 100, 5*time.Second)
		_, _, max := loadBody(b, tg.url, string(req), -1, 5*time.Second)
		rows[tg.name] = row{p50, p99, max}
	}
	d, ms := rows["mlserver"], rows["mesh"]
	fmt.Printf("hot path, fortio 100 req/s then max: MLServer direct p50 %.0fµs p99 %.0fµs max %.0f req/s; through the mesh p50 %.0fµs (%.2fx) p99 %.0fµs (%.2fx) max %.0f req/s (%.2fx)\n",
		d.p50*1e6, d.p99*1e6, d.max, ms.p50*1e6, ms.p50/d.p50, ms.p99*1e6, ms.p99/d.p99, ms.max, ms.max/d.max)
}

// gone waits until the worker no longer holds the model: Unload returns once the drain
// started, and the model leaves after the gateway stopped routing to it.
func gone(b *testing.B, w *worker, model string) {
	b.Helper()
	eventuallyEvery(b, 10*time.Second, time.Millisecond, model+" gone from the worker", func() bool {
		list, err := w.Mgmt.List(context.Background(), &meshv1.ListRequest{})
		must(b, err)
		return !slices.ContainsFunc(list.GetReplicas(), func(r *meshv1.Replica) bool { return r.GetModel().GetName() == model })
	})
}
