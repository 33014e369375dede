//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/modelmesh/mesh/proto/inference"
	"github.com/modelmesh/mesh/proto/meshv1"
)

// BenchmarkTriton measures, in one run, a Triton model's load and unload through the
// worker's management API against Triton's own repository API, and the hot path through the
// mesh gateway against Triton's HTTP port called directly.
func BenchmarkTriton(b *testing.B) {
	tr := startTriton(b)
	models := b.TempDir()
	pythonModels(b, models, map[string]int{"double": 2})
	reg := fmt.Sprintf("models:\n  - {name: double, runtime: triton, versions: [{version: \"1\", storageUri: \"file://%s/double\"}]}\n", models)
	m := startMesh(b, meshOptions{Registry: reg, WorkerArgs: tr.workerArgs(models)})
	m.awaitReads(b, "triton")
	w := m.workers[0]
	ctx := context.Background()
	ref := &meshv1.ModelRef{Name: "double", Version: "1"}
	uri := "file://" + filepath.Join(models, "double")

	// Triton's own API, on a model the worker does not manage: a copy under another name in
	// Triton's repository.
	cc, err := grpc.NewClient(tr.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	must(b, err)
	defer cc.Close()
	direct := inference.NewGRPCInferenceServiceClient(cc)
	repo := filepath.Join(tr.state, "models")
	pythonModels(b, repo, map[string]int{"direct": 2})

	const rounds = 10
	var meshLoad, meshUnload, tritonLoad, tritonUnload time.Duration
	for range b.N {
		for range rounds {
			start := time.Now()
			_, err := w.Mgmt.Load(ctx, &meshv1.LoadRequest{Model: ref, StorageUri: uri})
			must(b, err)
			meshLoad += time.Since(start)
			start = time.Now()
			_, err = w.Mgmt.Unload(ctx, &meshv1.UnloadRequest{Model: ref})
			must(b, err)
			meshUnload += time.Since(start)

			start = time.Now()
			_, err = direct.RepositoryModelLoad(ctx, &inference.RepositoryModelLoadRequest{ModelName: "direct"})
			must(b, err)
			tritonLoad += time.Since(start)
			start = time.Now()
			_, err = direct.RepositoryModelUnload(ctx, &inference.RepositoryModelUnloadRequest{ModelName: "direct"})
			must(b, err)
			tritonUnload += time.Since(start)
			waitUnloaded(b, direct, "direct")
		}
	}
	n := time.Duration(b.N * rounds)
	fmt.Printf("\nTriton, Python model, %d rounds: load through the worker %v vs Triton's own %v (%.2fx); unload %v vs %v (%.2fx)\n",
		b.N*rounds, meshLoad/n, tritonLoad/n, float64(meshLoad)/float64(tritonLoad), meshUnload/n, tritonUnload/n,
		float64(meshUnload)/float64(tritonUnload))

	// Hot path: Triton's HTTP port directly against the gateway in front of it.
	if code, body := rawPost(b, "http://"+m.Gateway+"/v2/models/double/infer", fourOnes); code != 200 {
		b.Fatalf("warm double: %d %s", code, body)
	}
	m.waitHot(b, "double", "1")
	type row struct{ p50, p99, max float64 }
	rows := map[string]row{}
	for _, tg := range []struct{ name, addr string }{{"triton", tr.HTTP}, {"mesh", m.Gateway}} {
		url := "http://" + tg.addr + "/v2/models/double/infer"
		p50, p99, _ := loadBody(b, url, fourOnes, 200, 5*time.Second)
		_, _, max := loadBody(b, url, fourOnes, -1, 5*time.Second)
		rows[tg.name] = row{p50, p99, max}
	}
	t, ms := rows["triton"], rows["mesh"]
	fmt.Printf("hot path, fortio 200 req/s then max: Triton direct p50 %.0fµs p99 %.0fµs max %.0f req/s; through the mesh p50 %.0fµs (%.2fx) p99 %.0fµs (%.2fx) max %.0f req/s (%.2fx)\n",
		t.p50*1e6, t.p99*1e6, t.max, ms.p50*1e6, ms.p50/t.p50, ms.p99*1e6, ms.p99/t.p99, ms.max, ms.max/t.max)
}

// waitUnloaded waits until Triton has finished unloading name (unload is asynchronous).
func waitUnloaded(b *testing.B, c inference.GRPCInferenceServiceClient, name string) {
	b.Helper()
	eventually(b, 30*time.Second, name+" unloaded", func() bool {
		idx, err := c.RepositoryIndex(context.Background(), &inference.RepositoryIndexRequest{})
		if err != nil {
			return false
		}
		for _, mi := range idx.GetModels() {
			if mi.GetName() == name && mi.GetState() != "" && mi.GetState() != "UNAVAILABLE" {
				return false
			}
		}
		return true
	})
}
