//go:build e2e

package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/modelmesh/mesh/proto/inference"
	"github.com/modelmesh/mesh/proto/meshv1"
	"github.com/modelmesh/mesh/runtime-worker/tensor"
)

// TestModelsFromObjectStorage serves the demo models from real S3-compatible servers
// (versitygw, one plain and one over TLS with a test CA) through the whole mesh: a cold load
// downloads once, a reload after eviction from memory comes from the disk tier without a
// request to the store, and every storage failure reaches the client with its reason while
// loads from healthy stores go on.
func TestModelsFromObjectStorage(t *testing.T) {
	t.Parallel()
	caPEM, cert, key := testCA(t)
	plain, secure := startS3(t), startS3(t, withTLS(cert, key))
	for _, s := range []*s3Server{plain, secure} {
		s.put(t, "models", "demo", models(t))
	}
	// Uploaded through the S3 API, the store keeps a CRC64NVME of the object; a byte changed
	// at rest then fails that check.
	plain.upload(t, "models", "uploaded/iris/1/model.onnx", filepath.Join(models(t), "iris", "1", "model.onnx"))
	plain.upload(t, "models", "rotten/iris/1/model.onnx", filepath.Join(models(t), "iris", "1", "model.onnx"))
	plain.tamper(t, "models", "rotten/iris/1/model.onnx")
	hung := blackhole(t)
	irisSum := sha256.Sum256(mustRead(t, filepath.Join(models(t), "breast-cancer", "1", "model.onnx")))

	denied := plain.entry("models")
	denied["secret_access_key"] = "not-the-secret"
	trusted := secure.entry("models")
	trusted["certificate"] = caPEM
	cfg := storageConfig(t, map[string]map[string]any{
		"default":     plain.entry("models"),
		"denied":      denied,
		"tls":         trusted,
		"tls-unknown": secure.entry("models"),
		"hung":        map[string]any{"type": "s3", "access_key_id": "a", "secret_access_key": "b", "endpoint_url": "http://" + hung},
	})
	reg := fmt.Sprintf(`models:
  - name: iris
    versions: [{version: "1", storage: {path: demo/iris/1/model.onnx}}]
  - name: digits
    versions: [{version: "1", storage: {key: tls, path: demo/digits/1}}]
  - name: breast-cancer
    versions: [{version: "1", storage: {path: demo/breast-cancer/1/model.onnx}, sha256: "%s"}]
  - name: no-bucket
    versions: [{version: "1", storage: {bucket: nope, path: demo/iris/1/model.onnx}}]
  - name: denied
    versions: [{version: "1", storage: {key: denied, path: demo/iris/1/model.onnx}}]
  - name: missing
    versions: [{version: "1", storage: {path: demo/nope/1/model.onnx}}]
  - name: untrusted
    versions: [{version: "1", storage: {key: tls-unknown, path: demo/iris/1/model.onnx}}]
  - name: corrupt
    versions: [{version: "1", storage: {path: demo/iris/1/model.onnx}, sha256: "%s"}]
  - name: uploaded
    versions: [{version: "1", storage: {path: uploaded/iris/1/model.onnx}}]
  - name: external-data
    versions: [{version: "1", storage: {path: demo/external-data/1}}]
  - name: rotten
    versions: [{version: "1", storage: {path: rotten/iris/1/model.onnx}}]
  - name: hung
    versions: [{version: "1", storage: {key: hung, bucket: models, path: demo/iris/1/model.onnx}}]
`, hex.EncodeToString(irisSum[:]), strings.Repeat("0", 64))
	m := startMesh(t, meshOptions{Registry: reg, WorkerArgs: []string{
		"--storage-config", cfg, "--storage-response-timeout", "2s", "--storage-connect-timeout", "1s",
		"--storage-idle-timeout", "1s", "--storage-retries", "1", "--storage-retry-backoff", "100ms", "--eviction-min-idle", "0s",
	}})
	w := m.workers[0]

	// Cold loads from S3, a prefix over TLS with the entry's CA, a declared sha256.
	if code, out := inferREST(t, m.Gateway, "iris", irisSetosa, nil); code != 200 || label(t, out) != 0 {
		t.Fatalf("iris from S3: %d %v", code, out)
	}
	if n := plain.gets(t, "models", "demo/iris/"); n != 1 {
		t.Fatalf("iris's cold load read the store %d times, want once", n)
	}
	for _, name := range []string{"digits", "breast-cancer"} {
		if code, out := inferREST(t, m.Gateway, name, testsetRow(t, name), nil); code != 200 {
			t.Fatalf("%s from S3: %d %v", name, code, out)
		}
	}
	if secure.gets(t, "models", "demo/digits/") != 1 {
		t.Fatal("digits was not read from the TLS store")
	}
	// A prefix holding an ONNX model and its external data file: the runtime reads the
	// weights from beside model.onnx, so the answer for ones is the sum of every weight.
	ones := `{"inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","data":[` + strings.TrimSuffix(strings.Repeat("1,", 64), ",") + `]}]}`
	code, out := inferREST(t, m.Gateway, "external-data", ones, nil)
	if code != 200 {
		t.Fatalf("external-data from S3: %d %v", code, out)
	}
	want := weightSum(t, filepath.Join(models(t), "external-data", "1", "weights.bin"))
	if got := out["outputs"].([]any)[0].(map[string]any)["data"].([]any)[0].(float64); math.Abs(got-want) > 1e-3*math.Max(1, math.Abs(want)) {
		t.Fatalf("external-data answered %v for ones, want the sum of its weights, %v", got, want)
	}

	if code, out := inferREST(t, m.Gateway, "uploaded", irisSetosa, nil); code != 200 || label(t, out) != 0 {
		t.Fatalf("iris uploaded through the S3 API, checked by its CRC64NVME: %d %v", code, out)
	}

	// Evicted from memory, iris reloads from the disk tier: the store sees no request.
	hits := w.metric(t, "mesh_worker_disk_cache_hits_total")
	m.evict(t, w, "iris")
	if code, out := inferREST(t, m.Gateway, "iris", irisSetosa, nil); code != 200 || label(t, out) != 0 {
		t.Fatalf("iris reloaded: %d %v", code, out)
	}
	if n := plain.gets(t, "models", "demo/iris/"); n != 1 {
		t.Fatalf("the reload read the store (%d GETs in all), want none", n)
	}
	if got := w.metric(t, "mesh_worker_disk_cache_hits_total"); got != hits+1 {
		t.Fatalf("disk tier hits %v → %v, want one more", hits, got)
	}

	// A store that hangs holds only its own load: iris reloads from S3 meanwhile.
	hungDone := make(chan struct{})
	var hungCode int
	var hungHeader http.Header
	var hungBody []byte
	go func() {
		defer close(hungDone)
		hungCode, hungHeader, hungBody, _ = sendInfer(m.Gateway, "hung", irisSetosa, nil)
	}()
	time.Sleep(200 * time.Millisecond) // the hung load is under way
	m.evict(t, w, "breast-cancer")
	if code, _ := inferREST(t, m.Gateway, "breast-cancer", testsetRow(t, "breast-cancer"), nil); code != 200 {
		t.Fatalf("breast-cancer while another store hangs: %d", code)
	}
	select {
	case <-hungDone:
		t.Fatal("the hung store's request ended before a healthy store's load")
	default:
	}
	<-hungDone
	if hungCode != 503 || hungHeader.Get("Retry-After") == "" || !strings.Contains(string(hungBody), "storage unavailable") {
		t.Fatalf("hung store: %d %v %s, want 503 with Retry-After naming the store", hungCode, hungHeader, hungBody)
	}

	// Stores that refuse for good: 502 and FAILED_PRECONDITION with the reason, no retry.
	tests := []struct{ model, want string }{
		{"no-bucket", `bucket \"nope\" does not exist`},
		{"denied", "storage access denied"},
		{"missing", "model files not found"},
		{"untrusted", "storage TLS failure"},
		{"corrupt", "failed their checksum"},
		{"rotten", "crc64nvme"},
	}
	for _, tt := range tests {
		code, header, body, err := sendInfer(m.Gateway, tt.model, irisSetosa, nil)
		must(t, err)
		if code != 502 || header.Get("Retry-After") != "" || !strings.Contains(string(body), tt.want) {
			t.Errorf("%s over REST: %d %s, want 502 with %q", tt.model, code, body, tt.want)
		}
		_, err = m.Infer.ModelInfer(context.Background(), &inference.ModelInferRequest{ModelName: tt.model,
			Inputs: []*inference.ModelInferRequest_InferInputTensor{{Name: "input", Datatype: "FP32", Shape: []int64{1, 4}}}, RawInputContents: [][]byte{make([]byte, 16)}})
		if st := status.Convert(err); st.Code() != codes.FailedPrecondition || !strings.Contains(st.Message(), strings.ReplaceAll(tt.want, `\"`, `"`)) {
			t.Errorf("%s over gRPC: %v, want FAILED_PRECONDITION with %q", tt.model, err, tt.want)
		}
	}
	if n := plain.gets(t, "models", "demo/nope/"); n != 0 {
		t.Errorf("a missing object was asked for %d times with GET; HEAD and LIST tell", n)
	}
	metrics := scrape(t, w.MgmtAddr)
	for _, reason := range []string{"not_found", "denied", "tls", "checksum", "unavailable"} {
		if !strings.Contains(metrics, `mesh_worker_storage_errors_total{reason="`+reason+`",scheme="s3"}`) {
			t.Errorf("no storage error counted with reason %s", reason)
		}
	}
	iris, err := os.Stat(filepath.Join(*modelsDir, "iris", "1", "model.onnx"))
	must(t, err)
	if got := w.metric(t, `mesh_worker_storage_download_bytes_total{scheme="s3"}`); got < float64(iris.Size()) {
		t.Errorf("%v bytes counted as downloaded from S3, want at least the %d of iris", got, iris.Size())
	}
	if w.metric(t, `mesh_worker_loads_total{result="storage"}`) == 0 {
		t.Error("loads that failed in storage are not counted as such")
	}
	// Secrets stay out of logs and metrics.
	for _, secret := range []string{plain.SecretKey, "not-the-secret"} {
		if strings.Contains(w.Logs(), secret) || strings.Contains(metrics, secret) {
			t.Errorf("secret %q in the worker's logs or metrics", secret)
		}
	}
}

// evict drains version 1 of name from w and waits until the gateway no longer routes it.
func (m *mesh) evict(t testing.TB, w *worker, name string) {
	t.Helper()
	_, err := w.Mgmt.Drain(context.Background(), &meshv1.DrainRequest{Model: &meshv1.ModelRef{Name: name, Version: "1"}})
	must(t, err)
	eventually(t, 10*time.Second, name+" off the hot path", func() bool {
		return m.routedReplicas(t, "model|"+name+"|1") == 0
	})
}

// weightSum adds up the little-endian float32 values of an ONNX external data file.
func weightSum(t testing.TB, p string) float64 {
	t.Helper()
	b := mustRead(t, p)
	sum := 0.0
	for i := 0; i+4 <= len(b); i += 4 {
		sum += float64(math.Float32frombits(binary.LittleEndian.Uint32(b[i:])))
	}
	return sum
}

func mustRead(t testing.TB, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	must(t, err)
	return b
}

func scrape(t testing.TB, addr string) string {
	t.Helper()
	code, body := get(t, "http://"+addr+"/metrics")
	if code != 200 {
		t.Fatalf("metrics at %s: %d", addr, code)
	}
	return body
}

// TestDiskTier fills a worker's disk tier past its budget, evicts from it least recently
// used first, refuses a model larger than the tier, and survives a SIGKILL in the middle of a
// download: the restarted worker drops the partial files, keeps the whole ones, and the next
// load succeeds with a whole file.
func TestDiskTier(t *testing.T) {
	t.Parallel()
	s := startS3(t)
	iris := filepath.Join(models(t), "iris", "1", "model.onnx")
	size := int64(len(mustRead(t, iris)))
	for _, k := range []string{"a", "b", "c"} {
		s.put(t, "models", k+"/model.onnx", iris)
	}
	// A directory model: the iris model beside 6 MiB of other files, to be slow to fetch.
	big := t.TempDir()
	must(t, os.WriteFile(filepath.Join(big, "model.onnx"), mustRead(t, iris), 0o644))
	must(t, os.WriteFile(filepath.Join(big, "pad.bin"), make([]byte, 6<<20), 0o644))
	s.put(t, "models", "big", big)

	slow := s.entry("models")
	slow["endpoint_url"] = "http://" + throttle(t, strings.TrimPrefix(s.Endpoint, "http://"), 2<<20)
	cfg := storageConfig(t, map[string]map[string]any{"default": s.entry("models"), "slow": slow})
	cache := t.TempDir()
	args := []string{"--storage-config", cfg, "--cache-dir", cache, "--eviction-min-idle", "0s",
		"--disk-cache-size", fmt.Sprint(6<<20 + 3*size + 100)}
	w := startWorker(t, "tier", args...)
	load := func(w *worker, name, key, path string) error {
		_, err := w.Mgmt.Load(context.Background(), &meshv1.LoadRequest{Model: &meshv1.ModelRef{Name: name, Version: "1"},
			StorageKey: key, StoragePath: path})
		return err
	}
	unload := func(w *worker, name string) {
		_, err := w.Mgmt.Unload(context.Background(), &meshv1.UnloadRequest{Model: &meshv1.ModelRef{Name: name, Version: "1"}})
		must(t, err)
	}
	tier := func(w *worker) []string {
		resp, err := w.Mgmt.List(context.Background(), &meshv1.ListRequest{})
		must(t, err)
		var out []string
		for _, e := range resp.GetDiskCache().GetEntries() {
			out = append(out, e.GetSource())
		}
		return out
	}

	// Kill the worker while it downloads "big" over the slow link.
	errc := make(chan error, 1)
	go func() { errc <- load(w, "big", "slow", "big") }()
	eventually(t, 20*time.Second, "a partial download in the tier", func() bool {
		found, _ := filepath.Glob(filepath.Join(cache, ".tmp", "*", "data", "pad.bin"))
		return len(found) == 1
	})
	w.Kill()
	<-errc
	w = startWorker(t, "tier", args...)
	if left, _ := filepath.Glob(filepath.Join(cache, ".tmp", "*")); len(left) != 0 {
		t.Fatalf("the restarted worker kept partial downloads %v", left)
	}
	if got := tier(w); len(got) != 0 {
		t.Fatalf("a killed download is in the tier: %v", got)
	}
	must(t, load(w, "big", "", "big"))
	resp, err := w.Mgmt.List(context.Background(), &meshv1.ListRequest{})
	must(t, err)
	if e := resp.GetDiskCache().GetEntries(); len(e) != 1 || e[0].GetBytes() != size+6<<20 {
		t.Fatalf("tier after the reload: %v, want big whole (%d bytes)", e, size+6<<20)
	}
	unload(w, "big")

	// Room for big and two of a, b, c: the third evicts big, the least recently used.
	for _, k := range []string{"a", "b", "c"} {
		must(t, load(w, k, "", k+"/model.onnx"))
		unload(w, k)
	}
	if got, want := strings.Join(tier(w), " "), "s3://models/c/model.onnx s3://models/b/model.onnx s3://models/a/model.onnx"; got != want {
		t.Fatalf("tier holds %s, want %s", got, want)
	}
	if w.metric(t, "mesh_worker_disk_cache_evictions_total") != 1 {
		t.Fatal("big's eviction not counted")
	}
	// b again: from the tier; the restart kept c and b too.
	w.Kill()
	w = startWorker(t, "tier", args...)
	must(t, load(w, "b", "", "b/model.onnx"))
	if n := s.gets(t, "models", "b/"); n != 1 {
		t.Fatalf("b was downloaded %d times, want once: the tier survives a restart", n)
	}
	if w.metric(t, "mesh_worker_disk_cache_hits_total") != 1 {
		t.Fatal("b's reload was not a tier hit")
	}
	// meshctl shows the tier: its budget, and b in use by nobody, most recent first.
	out, err := exec.Command(filepath.Join(*binDir, "meshctl"), "--worker", w.MgmtAddr, "disk").CombinedOutput()
	must(t, err)
	var disk struct {
		CapacityBytes string `json:"capacityBytes"`
		Entries       []struct {
			Source string `json:"source"`
			Bytes  string `json:"bytes"`
		} `json:"entries"`
	}
	must(t, json.Unmarshal(out, &disk))
	if disk.CapacityBytes != fmt.Sprint(6<<20+3*size+100) || len(disk.Entries) != 3 || disk.Entries[0].Source != "s3://models/b/model.onnx" || disk.Entries[0].Bytes != fmt.Sprint(size) {
		t.Fatalf("meshctl disk: %s", out)
	}

	// A model larger than the whole tier is refused with the flag to change.
	small := startWorker(t, "small", "--storage-config", cfg, "--disk-cache-size", "1MiB")
	err = load(small, "big", "", "big")
	if st := status.Convert(err); st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), "--disk-cache-size") {
		t.Fatalf("a model larger than the tier: %v", err)
	}
}

// TestModelsOverHTTPS loads a single file and a .tar.gz archive from an HTTPS server with a
// test CA, refuses plain http unless allowed, and answers an unknown authority clearly.
func TestModelsOverHTTPS(t *testing.T) {
	t.Parallel()
	caPEM, cert, key := testCA(t)
	root := t.TempDir()
	must(t, os.WriteFile(filepath.Join(root, "iris.onnx"), mustRead(t, filepath.Join(models(t), "iris", "1", "model.onnx")), 0o644))
	writeTarGz(t, filepath.Join(root, "iris.tar.gz"), map[string][]byte{"iris/model.onnx": mustRead(t, filepath.Join(models(t), "iris", "1", "model.onnx"))})
	addr := freePort(t)
	srv := &http.Server{Addr: addr, Handler: http.FileServer(http.Dir(root))}
	go srv.ListenAndServeTLS(cert, key)
	t.Cleanup(func() { srv.Close() })
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	must(t, os.WriteFile(caFile, []byte(caPEM), 0o644))
	trusting := startWorker(t, "https", "--storage-ca-file", caFile)
	other := startWorker(t, "no-ca")

	load := func(w *worker, name, uri string) error {
		_, err := w.Mgmt.Load(context.Background(), &meshv1.LoadRequest{Model: &meshv1.ModelRef{Name: name, Version: "1"}, StorageUri: uri})
		return err
	}
	eventually(t, 5*time.Second, "the HTTPS server serves", func() bool {
		return load(trusting, "iris", "https://"+addr+"/iris.onnx") == nil
	})
	must(t, load(trusting, "archived", "https://"+addr+"/iris.tar.gz"))
	raw, _ := tensor.EncodeRaw(tensor.Tensor{Datatype: tensor.FP32, Data: []float32{5.1, 3.5, 1.4, 0.2}})
	for _, name := range []string{"iris", "archived"} {
		resp, err := trusting.Infer.ModelInfer(context.Background(), &inference.ModelInferRequest{ModelName: name,
			Inputs: []*inference.ModelInferRequest_InferInputTensor{{Name: "input", Datatype: "FP32", Shape: []int64{1, 4}}}, RawInputContents: [][]byte{raw}})
		if err != nil || len(resp.GetRawOutputContents()) == 0 {
			t.Fatalf("%s over HTTPS: %v", name, err)
		}
	}
	tests := []struct {
		name, uri string
		code      codes.Code
		want      string
	}{
		{"unknown authority", "https://" + addr + "/iris.onnx", codes.FailedPrecondition, "certificate signed by unknown authority"},
		{"plain http refused", "http://" + addr + "/iris.onnx", codes.InvalidArgument, "--allow-http"},
		{"missing file", "https://" + addr + "/nope.onnx", codes.NotFound, "HTTP 404"},
	}
	for _, tt := range tests {
		w := other
		if tt.name == "missing file" {
			w = trusting
		}
		err := load(w, "x", tt.uri)
		if st := status.Convert(err); st.Code() != tt.code || !strings.Contains(st.Message(), tt.want) {
			t.Errorf("%s: %v, want %v with %q", tt.name, err, tt.code, tt.want)
		}
	}
}
