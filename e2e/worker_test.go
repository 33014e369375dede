//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/modelmesh/mesh/internal/redistest"
	"github.com/modelmesh/mesh/internal/residency"
	"github.com/modelmesh/mesh/proto/inference"
	"github.com/modelmesh/mesh/proto/meshv1"
	"github.com/modelmesh/mesh/runtime-worker/tensor"
)

var datasets = []string{"iris", "digits", "breast-cancer"}

// TestAccuracyOverRESTAndGRPC loads each real model through the management API and checks
// that the worker's answers over REST (JSON) and gRPC (raw tensors) classify the held-out
// test split as well as scikit-learn did.
func TestAccuracyOverRESTAndGRPC(t *testing.T) {
	w := startWorker(t, "accuracy", "--capacity", "1GiB")
	for _, name := range datasets {
		w.load(t, name, 0)
		ts := readTestset(t, name)
		t.Run(name+"/rest", func(t *testing.T) {
			body, _ := json.Marshal(map[string]any{
				"inputs":  []any{map[string]any{"name": "input", "shape": []int{len(ts.Inputs), ts.Features}, "datatype": "FP32", "data": ts.Inputs}},
				"outputs": []any{map[string]any{"name": "label"}},
			})
			code, out := restJSON(t, "POST", "http://"+w.DataAddr+"/v2/models/"+name+"/infer", body)
			if code != 200 {
				t.Fatalf("status %d: %v", code, out)
			}
			var labels []int64
			for _, v := range out["outputs"].([]any)[0].(map[string]any)["data"].([]any) {
				labels = append(labels, int64(v.(float64)))
			}
			if acc := accuracy(labels, ts.Labels); acc < ts.SklearnAccuracy-0.01 || acc > ts.SklearnAccuracy+0.01 {
				t.Fatalf("REST accuracy %.4f, scikit-learn %.4f", acc, ts.SklearnAccuracy)
			}
		})
		t.Run(name+"/grpc", func(t *testing.T) {
			flat := make([]float32, 0, len(ts.Inputs)*ts.Features)
			for _, row := range ts.Inputs {
				flat = append(flat, row...)
			}
			raw, _ := tensor.EncodeRaw(tensor.Tensor{Datatype: tensor.FP32, Data: flat})
			resp, err := w.Infer.ModelInfer(context.Background(), &inference.ModelInferRequest{
				ModelName: name, ModelVersion: "1",
				Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: "input", Datatype: "FP32", Shape: []int64{int64(len(ts.Inputs)), int64(ts.Features)}}},
				RawInputContents: [][]byte{raw},
			})
			must(t, err)
			var got tensor.Tensor
			for i, o := range resp.GetOutputs() {
				if o.GetName() == "label" {
					got, err = tensor.DecodeRaw(o.GetName(), tensor.Datatype(o.GetDatatype()), o.GetShape(), resp.GetRawOutputContents()[i])
					must(t, err)
				}
			}
			if acc := accuracy(got.Data.([]int64), ts.Labels); acc < ts.SklearnAccuracy-0.01 || acc > ts.SklearnAccuracy+0.01 {
				t.Fatalf("gRPC accuracy %.4f, scikit-learn %.4f", acc, ts.SklearnAccuracy)
			}
		})
	}
}

// TestEvictionUnderBudget: a budget that fits two of three models evicts the least recently
// used idle one, and Redis shows exactly what the worker holds.
func TestEvictionUnderBudget(t *testing.T) {
	rds := redistest.Start(t)
	const size = 40 << 20
	w := startWorker(t, "evict", "--capacity", "100MiB", "--redis-addr", rds.Addr, "--redis-prefix", "e2e", "--heartbeat", "200ms")
	w.load(t, "iris", size)
	w.load(t, "digits", size)
	ready, err := w.Infer.ModelReady(context.Background(), &inference.ModelReadyRequest{Name: "iris"})
	must(t, err)
	if !ready.GetReady() {
		t.Fatal("iris not ready")
	}
	// Use iris, so digits becomes the least recently used.
	code, out := restJSON(t, "POST", "http://"+w.DataAddr+"/v2/models/iris/infer",
		[]byte(`{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}`))
	if code != 200 {
		t.Fatalf("iris infer %d %v", code, out)
	}
	resp := w.load(t, "breast-cancer", size)
	if len(resp.GetEvicted()) != 1 || resp.GetEvicted()[0].GetName() != "digits" {
		t.Fatalf("evicted %v, want digits", resp.GetEvicted())
	}
	list, err := w.Mgmt.List(context.Background(), &meshv1.ListRequest{})
	must(t, err)
	var names []string
	for _, r := range list.GetReplicas() {
		names = append(names, r.GetModel().GetName())
	}
	if len(names) != 2 || list.GetUsed().GetHostBytes() != 2*size || list.GetUsed().GetHostBytes() > list.GetCapacity().GetHostBytes() {
		t.Fatalf("worker holds %v using %d of %d bytes", names, list.GetUsed().GetHostBytes(), list.GetCapacity().GetHostBytes())
	}
	code, out = restJSON(t, "POST", "http://"+w.DataAddr+"/v2/models/digits/infer",
		[]byte(`{"inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","data":[`+strings.TrimSuffix(strings.Repeat("0,", 64), ",")+`]}]}`))
	if code != 404 {
		t.Fatalf("evicted model answered %d %v, want 404", code, out)
	}
	if got := w.metric(t, "mesh_worker_evictions_total"); got != 1 {
		t.Fatalf("mesh_worker_evictions_total %v, want 1", got)
	}

	rdb := redis.NewClient(&redis.Options{Addr: rds.Addr})
	defer rdb.Close()
	keys := residency.Keys{Prefix: "e2e"}
	eventually(t, 5*time.Second, "Redis shows iris and breast-cancer ready", func() bool {
		h := rdb.HGetAll(context.Background(), keys.Replicas("evict")).Val()
		return len(h) == 2 && strings.Contains(h["iris:1"], `"ready"`) && strings.Contains(h["breast-cancer:1"], `"ready"`)
	})

	// A model larger than the whole budget fails clearly and changes nothing.
	_, err = w.Mgmt.Load(context.Background(), &meshv1.LoadRequest{Model: &meshv1.ModelRef{Name: "digits", Version: "1"},
		StorageUri: "file://" + filepath.Join(models(t), "digits", "1", "model.onnx"), MemoryBytes: 200 << 20})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "not enough memory") {
		t.Fatalf("oversized load: %v, want ResourceExhausted", err)
	}
	after, err := w.Mgmt.List(context.Background(), &meshv1.ListRequest{})
	must(t, err)
	if len(after.GetReplicas()) != 2 || after.GetUsed().GetHostBytes() != list.GetUsed().GetHostBytes() {
		t.Fatalf("a failed load changed the worker: %v", after)
	}
}

// TestConcurrentFirstRequestsLoadOnce: 50 callers asking for the same cold model at once
// cause a single load in the runtime.
func TestConcurrentFirstRequestsLoadOnce(t *testing.T) {
	w := startWorker(t, "coalesce", "--capacity", "1GiB")
	var wg sync.WaitGroup
	var mu sync.Mutex
	fresh, failed := 0, 0
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := w.Mgmt.Load(context.Background(), &meshv1.LoadRequest{Model: &meshv1.ModelRef{Name: "synthetic-32mb", Version: "1"},
				StorageUri: "file://" + filepath.Join(models(t), "synthetic-32mb", "1", "model.onnx")})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed++
				return
			}
			if resp.GetLoaded() {
				fresh++
			}
		}()
	}
	wg.Wait()
	if failed != 0 || fresh != 1 {
		t.Fatalf("%d callers failed, %d were told they loaded; want 0 and 1", failed, fresh)
	}
	if got := w.metric(t, `mesh_worker_loads_total{result="ok"}`); got != 1 {
		t.Fatalf("runtime loads %v, want 1", got)
	}
	list, err := w.Mgmt.List(context.Background(), &meshv1.ListRequest{})
	must(t, err)
	r := list.GetReplicas()[0]
	if r.GetSizeSource() != "measured" || r.GetMemoryBytes() < 16<<20 || r.GetMemoryBytes() > 128<<20 {
		t.Fatalf("32 MiB model counted as %d bytes (%s)", r.GetMemoryBytes(), r.GetSizeSource())
	}
}

// TestBadModelsAndBadInput: every kind of bad request gets a clear error with the right
// status, and the worker keeps serving the model it holds.
func TestBadModelsAndBadInput(t *testing.T) {
	root := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(root, "corrupt", "1"), 0o755))
	must(t, os.WriteFile(filepath.Join(root, "corrupt", "1", "model.onnx"), []byte("\x08\x07garbage that is not an ONNX graph"), 0o644))
	must(t, os.WriteFile(filepath.Join(root, "notes.txt"), []byte("plain text"), 0o644))
	w := startWorker(t, "bad", "--capacity", "1GiB", "--max-body", "64KiB", "--model-roots", models(t)+","+root)
	w.load(t, "iris", 0)

	loads := []struct {
		name string
		uri  string
		want codes.Code
		msg  string
	}{
		{"corrupt model", "file://" + filepath.Join(root, "corrupt", "1"), codes.FailedPrecondition, "failed to load"},
		{"not a model", "file://" + filepath.Join(root, "notes.txt"), codes.FailedPrecondition, "failed to load"},
		{"missing file", "file://" + filepath.Join(root, "nothing.onnx"), codes.NotFound, "not found"},
		{"traversal", "file://" + root + "/../../etc/passwd", codes.InvalidArgument, `".." not allowed`},
		{"outside the roots", "file:///etc/passwd", codes.InvalidArgument, "outside the model roots"},
		{"plain http without --allow-http", "http://example.invalid/model.onnx", codes.InvalidArgument, "plain http is refused"},
		{"other scheme", "ftp://example.invalid/model.onnx", codes.InvalidArgument, "scheme"},
	}
	for _, tt := range loads {
		t.Run("load/"+tt.name, func(t *testing.T) {
			_, err := w.Mgmt.Load(context.Background(), &meshv1.LoadRequest{Model: &meshv1.ModelRef{Name: "bad", Version: "1"}, StorageUri: tt.uri})
			if status.Code(err) != tt.want || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("error %v, want %v with %q", err, tt.want, tt.msg)
			}
		})
	}

	irisRow := `{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}`
	rest := []struct {
		name string
		path string
		body string
		want int
	}{
		{"malformed JSON", "/v2/models/iris/infer", `{"inputs":[{"name":`, 400},
		{"wrong shape", "/v2/models/iris/infer", `{"inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}`, 400},
		{"wrong datatype", "/v2/models/iris/infer", `{"inputs":[{"name":"input","shape":[1,4],"datatype":"INT64","data":[1,2,3,4]}]}`, 400},
		{"data and shape disagree", "/v2/models/iris/infer", `{"inputs":[{"name":"input","shape":[2,4],"datatype":"FP32","data":[1,2,3,4]}]}`, 400},
		{"unknown input", "/v2/models/iris/infer", `{"inputs":[{"name":"features","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}`, 400},
		{"unknown output", "/v2/models/iris/infer", `{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}],"outputs":[{"name":"nope"}]}`, 400},
		{"invalid model id", "/v2/models/ir%20is/infer", irisRow, 400},
		{"unknown model", "/v2/models/nope/infer", irisRow, 404},
		{"unknown version", "/v2/models/iris/versions/9/infer", irisRow, 404},
		{"body over the limit", "/v2/models/iris/infer", `{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[` + strings.Repeat("1.0,", 20000) + `1]}]}`, 413},
	}
	for _, tt := range rest {
		t.Run("rest/"+tt.name, func(t *testing.T) {
			code, out := restJSON(t, "POST", "http://"+w.DataAddr+tt.path, []byte(tt.body))
			if msg, _ := out["error"].(string); code != tt.want || msg == "" {
				t.Fatalf("%d %v, want %d with {\"error\": ...}", code, out, tt.want)
			}
		})
	}

	input := []*inference.ModelInferRequest_InferInputTensor{{Name: "input", Datatype: "FP32", Shape: []int64{1, 4}}}
	grpcs := []struct {
		name string
		give *inference.ModelInferRequest
		want codes.Code
	}{
		{"wrong raw size", &inference.ModelInferRequest{ModelName: "iris", Inputs: input, RawInputContents: [][]byte{make([]byte, 12)}}, codes.InvalidArgument},
		{"unknown model", &inference.ModelInferRequest{ModelName: "nope", Inputs: input, RawInputContents: [][]byte{make([]byte, 16)}}, codes.NotFound},
		{"unknown version", &inference.ModelInferRequest{ModelName: "iris", ModelVersion: "9", Inputs: input, RawInputContents: [][]byte{make([]byte, 16)}}, codes.NotFound},
		{"over the limit", &inference.ModelInferRequest{ModelName: "iris", Inputs: input, RawInputContents: [][]byte{make([]byte, 128<<10)}}, codes.ResourceExhausted},
	}
	for _, tt := range grpcs {
		t.Run("grpc/"+tt.name, func(t *testing.T) {
			_, err := w.Infer.ModelInfer(context.Background(), tt.give)
			if status.Code(err) != tt.want {
				t.Fatalf("code %v (%v), want %v", status.Code(err), err, tt.want)
			}
		})
	}

	// After all of that the worker still serves iris.
	code, out := restJSON(t, "POST", "http://"+w.DataAddr+"/v2/models/iris/infer", []byte(irisRow))
	if code != 200 {
		t.Fatalf("iris after bad input: %d %v", code, out)
	}
	if got := out["outputs"].([]any)[0].(map[string]any)["data"].([]any)[0]; got != float64(0) {
		t.Fatalf("iris setosa row classified as %v", got)
	}
}

// TestRedisRestartAndShutdown: Redis crashing and coming back empty gets the worker's full
// state back within two heartbeats; SIGTERM removes the worker's records.
func TestRedisRestartAndShutdown(t *testing.T) {
	rds := redistest.Start(t)
	heartbeat := 300 * time.Millisecond
	w := startWorker(t, "restart", "--capacity", "1GiB", "--redis-addr", rds.Addr, "--redis-prefix", "e2e", "--heartbeat", heartbeat.String(),
		"--labels", "zone=a,gpu=none")
	for _, name := range datasets {
		w.load(t, name, 0)
	}
	rdb := redis.NewClient(&redis.Options{Addr: rds.Addr})
	defer rdb.Close()
	keys := residency.Keys{Prefix: "e2e"}
	ctx := context.Background()
	full := func() bool {
		h := rdb.HGetAll(ctx, keys.Replicas(w.ID)).Val()
		wk := residency.ParseWorker(rdb.HGetAll(ctx, keys.Worker(w.ID)).Val())
		return len(h) == 3 && wk.DataAddr == w.DataAddr && wk.Labels["zone"] == "a" && wk.Used.Host > 0
	}
	eventually(t, 2*heartbeat, "records written", full)

	rds.Stop()
	rds.Start()
	// Two heartbeats, plus a second of slack for a busy CI machine.
	eventually(t, 2*heartbeat+time.Second, "full state back after Redis restart", full)

	w.Stop(t)
	if n := rdb.Exists(ctx, keys.Worker(w.ID), keys.Replicas(w.ID)).Val(); n != 0 {
		t.Fatalf("%d records left after SIGTERM", n)
	}
	if !strings.Contains(w.Logs(), "shutting down") {
		t.Fatal("no shutdown log line")
	}
}

// TestShutdownServesUntilUnrouted: a worker told to stop keeps accepting new connections
// while a gateway still routes one of its models to it, and exits once none does.
func TestShutdownServesUntilUnrouted(t *testing.T) {
	rds := redistest.Start(t)
	w := startWorker(t, "stopping", "--capacity", "1GiB", "--redis-addr", rds.Addr, "--redis-prefix", "e2e",
		"--drain-timeout", "20s", "--drain-grace", "0s")
	w.load(t, "iris", 0)
	rdb := redis.NewClient(&redis.Options{Addr: rds.Addr})
	defer rdb.Close()
	ctx := context.Background()
	keys := residency.Keys{Prefix: "e2e"}
	// A control plane whose gateways route iris to this worker.
	must(t, residency.RenewControlPlane(ctx, rdb, keys, "cp-1", []string{w.ID}, time.Minute))
	must(t, residency.WriteRouted(ctx, rdb, keys, "cp-1", map[string][]string{w.ID: {"iris:1"}}, nil, time.Minute))

	w.Cmd.Process.Signal(syscall.SIGTERM)
	eventually(t, 5*time.Second, "the worker's records removed", func() bool { return rdb.Exists(ctx, keys.Worker(w.ID)).Val() == 0 })
	// A new connection, as Envoy opens for a request it still routes here, is served.
	for range 3 {
		code, out := restJSON(t, "POST", "http://"+w.DataAddr+"/v2/models/iris/infer", []byte(irisSetosa))
		if code != 200 {
			t.Fatalf("inference on a new connection while still routed: %d %v", code, out)
		}
		http.DefaultClient.CloseIdleConnections()
	}
	select {
	case <-w.Done():
		t.Fatalf("the worker exited (%v) while a gateway still routed iris to it", w.Err())
	default:
	}
	// The gateways stop routing here: the worker closes and exits.
	must(t, residency.WriteRouted(ctx, rdb, keys, "cp-1", map[string][]string{w.ID: nil}, nil, time.Minute))
	select {
	case <-w.Done():
		if err := w.Err(); err != nil {
			t.Fatalf("exit after the drain: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("still running 10s after the gateways stopped routing to it")
	}
}

// TestDrain: a drained model stops being ready at once and is gone once drained.
func TestDrain(t *testing.T) {
	w := startWorker(t, "drain", "--capacity", "1GiB", "--drain-grace", "200ms")
	w.load(t, "iris", 0)
	done := make(chan error, 1)
	go func() {
		_, err := w.Mgmt.Drain(context.Background(), &meshv1.DrainRequest{Model: &meshv1.ModelRef{Name: "iris", Version: "1"}})
		done <- err
	}()
	eventually(t, 5*time.Second, "iris reported not ready while draining", func() bool {
		r, err := w.Infer.ModelReady(context.Background(), &inference.ModelReadyRequest{Name: "iris"})
		return err == nil && !r.GetReady()
	})
	must(t, <-done)
	list, err := w.Mgmt.List(context.Background(), &meshv1.ListRequest{})
	must(t, err)
	if len(list.GetReplicas()) != 0 || list.GetUsed().GetHostBytes() != 0 {
		t.Fatalf("after drain the worker holds %v", list)
	}
	if got := w.metric(t, `mesh_worker_unloads_total{reason="drain"}`); got != 1 {
		t.Fatalf("drain unloads %v, want 1", got)
	}
}
