//go:build e2e

package extproc

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/modelmesh/mesh/internal/proctest"
	"github.com/modelmesh/mesh/internal/residency"
	"github.com/modelmesh/mesh/proto/meshv1"
)

var (
	binDir    = flag.String("bin", "../bin", "directory holding mesh-worker")
	modelsDir = flag.String("models", "../testdata/models", "directory of the demo models (make models)")
)

// ortLibrary finds libonnxruntime.so as the e2e suite does: MESH_ORT_LIB, else the venv.
func ortLibrary(t testing.TB) string {
	t.Helper()
	if lib := os.Getenv("MESH_ORT_LIB"); lib != "" {
		return lib
	}
	found, _ := filepath.Glob("../.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.*")
	if len(found) == 0 {
		t.Fatal("libonnxruntime.so not found; run `make setup` or set MESH_ORT_LIB")
	}
	return found[0]
}

// TestColdRequestLoadsOnTheRealWorker sends a request for a registered but unloaded model
// through the server; the real mesh-worker must then hold it ready, and the answer must
// route to the worker's data address.
func TestColdRequestLoadsOnTheRealWorker(t *testing.T) {
	models, err := filepath.Abs(*modelsDir)
	if err != nil {
		t.Fatal(err)
	}
	iris := filepath.Join(models, "iris", "1", "model.onnx")
	if _, err := os.Stat(iris); err != nil {
		t.Fatalf("demo models missing; run `make models`: %v", err)
	}
	m := newMesh(t, mustRegistry(t, fmt.Sprintf("models:\n  - name: iris\n    versions: [{version: \"1\", storageUri: \"file://%s\"}]\n", iris)))

	redisAddr := m.rdb.Options().Addr
	proctest.Start(t, "mesh-worker", filepath.Join(*binDir, "mesh-worker"),
		"--worker-id", "w1", "--listen", "127.0.0.1:0", "--management-listen", "127.0.0.1:0",
		"--redis-addr", redisAddr, "--redis-prefix", m.keys.Prefix, "--heartbeat", "500ms",
		"--model-roots", models, "--cache-dir", t.TempDir(), "--ort-library", ortLibrary(t), "--capacity", "256MiB",
		"--log-format", "text")

	loader := NewGRPCLoader()
	defer loader.Close()
	r := m.startReplica(Config{LoadDeadline: 30 * time.Second}, loader)
	r.waitFor(t, workersLive(1))
	w := r.view.Snapshot().Workers["w1"]
	if len(r.view.Snapshot().Ready(mv("iris", "1"))) != 0 {
		t.Fatal("iris ready before any request")
	}

	ex, err := r.send(t.Context(), rest("iris"))
	checkAnswer(t, routedTo(w.DataAddr, "1"), ex, err)

	conn, err := grpc.NewClient(w.MgmtAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	list, err := meshv1.NewWorkerServiceClient(conn).List(ctx, &meshv1.ListRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Replicas) != 1 || list.Replicas[0].Model.GetName() != "iris" || list.Replicas[0].State != meshv1.ReplicaState_REPLICA_STATE_READY {
		t.Fatalf("worker holds %v, want iris ready", list.Replicas)
	}
	// The endpoint the request was routed to serves the model.
	resp, err := http.Get("http://" + w.DataAddr + "/v2/models/iris/versions/1/ready")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET ready on %s: %s", w.DataAddr, resp.Status)
	}
	// And Redis says so too, so the next request is hot.
	r.waitFor(t, func(s *residency.Snapshot) bool { return len(s.Ready(mv("iris", "1"))) == 1 })
	ex, err = r.send(t.Context(), rest("iris"))
	checkAnswer(t, routedTo(w.DataAddr, "1"), ex, err)
	if ex.extended != 0 {
		t.Fatal("hot request was held")
	}
}
