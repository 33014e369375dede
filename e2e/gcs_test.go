//go:build e2e

package e2e

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/modelmesh/mesh/proto/inference"
)

// TestModelsFromGCS serves the iris model from a real GCS emulator (fake-gcs-server over
// HTTPS with a test CA) through the whole mesh: a gs:// URI through --gcs-endpoint with no
// credentials (unauthenticated) and --storage-ca-file, a prefix and a gzip-encoded object
// through an anonymous storage-config entry with the CA as its certificate, declared
// digests of a file and of a directory. A reload after eviction from memory asks the store
// nothing; each failure reaches the client with its reason, and a store that refuses
// connections answers 503 at once instead of hanging in the client library's retries.
func TestModelsFromGCS(t *testing.T) {
	t.Parallel()
	caPEM, cert, key := testCA(t)
	g := startGCS(t, &gcsTLS{CAPEM: caPEM, CertFile: cert, KeyFile: key})
	g.createBucket(t, "models")
	irisFile := filepath.Join(models(t), "iris", "1", "model.onnx")
	iris := mustRead(t, irisFile)
	g.put(t, "models", "demo/iris/1/model.onnx", irisFile)
	// A directory model: model.onnx beside other files, one a level down, and the empty
	// placeholder object the Cloud Console makes for a folder.
	labels := []byte("setosa\nversicolor\nvirginica\n")
	g.putObject(t, "models", "demo/iris-dir/", nil, "")
	g.putObject(t, "models", "demo/iris-dir/model.onnx", iris, "")
	g.putObject(t, "models", "demo/iris-dir/labels.txt", labels, "")
	g.putObject(t, "models", "demo/iris-dir/meta/notes.txt", []byte("iris, 4 features\n"), "")
	// Stored gzip-compressed with Content-Encoding gzip, as `gsutil cp -Z` does: GCS serves
	// it decompressed, a size and MD5 other than the listing's.
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, err := zw.Write(iris)
	must(t, err)
	must(t, zw.Close())
	g.putObject(t, "models", "demo/iris-gz/model.onnx", gz.Bytes(), "gzip")

	irisSum := sha256.Sum256(iris)
	// A directory's digest is that of its manifest: `sha256sum` of its sorted files.
	var manifest strings.Builder
	for _, f := range []struct {
		rel  string
		data []byte
	}{{"labels.txt", labels}, {"meta/notes.txt", []byte("iris, 4 features\n")}, {"model.onnx", iris}} {
		sum := sha256.Sum256(f.data)
		fmt.Fprintf(&manifest, "%x  %s\n", sum, f.rel)
	}
	dirSum := sha256.Sum256([]byte(manifest.String()))

	caFile := filepath.Join(t.TempDir(), "ca.pem")
	must(t, os.WriteFile(caFile, []byte(caPEM), 0o644))
	// Another emulator, its certificate signed by a CA the worker does not know.
	_, otherCert, otherKey := testCA(t)
	other := startGCS(t, &gcsTLS{CertFile: otherCert, KeyFile: otherKey})
	refused := freePort(t) // nothing listens there
	cfg := storageConfig(t, map[string]map[string]any{
		"default":   g.entry("models", caPEM),
		"untrusted": other.entry("models", ""),
		"refused":   {"type": "gcs", "endpoint_url": "https://" + refused, "default_bucket": "models", "anonymous": true},
	})
	reg := fmt.Sprintf(`models:
  - name: iris
    versions: [{version: "1", storageUri: "gs://models/demo/iris/1/model.onnx", sha256: "%s"}]
  - name: iris-dir
    versions: [{version: "1", storage: {path: demo/iris-dir}, sha256: "%s"}]
  - name: iris-gz
    versions: [{version: "1", storage: {path: demo/iris-gz/model.onnx}}]
  - name: missing
    versions: [{version: "1", storageUri: "gs://models/demo/nope/model.onnx"}]
  - name: missing-dir
    versions: [{version: "1", storage: {path: demo/nope}}]
  - name: no-bucket
    versions: [{version: "1", storage: {bucket: nope, path: demo/iris/1/model.onnx}}]
  - name: corrupt
    versions: [{version: "1", storage: {path: demo/iris/1/model.onnx}, sha256: "%s"}]
  - name: untrusted
    versions: [{version: "1", storage: {key: untrusted, path: demo/iris/1/model.onnx}}]
  - name: refused
    versions: [{version: "1", storage: {key: refused, path: demo/iris/1/model.onnx}}]
`, hex.EncodeToString(irisSum[:]), hex.EncodeToString(dirSum[:]), strings.Repeat("0", 64))
	m := startMesh(t, meshOptions{Registry: reg, WorkerArgs: []string{
		"--gcs-endpoint", g.Endpoint, "--storage-ca-file", caFile, "--storage-config", cfg,
		"--storage-response-timeout", "2s", "--storage-connect-timeout", "1s", "--storage-idle-timeout", "1s",
		"--storage-retries", "1", "--storage-retry-backoff", "100ms", "--eviction-min-idle", "0s",
	}})
	w := m.workers[0]

	// Cold loads: one object by gs:// URI, a prefix, a gzip-encoded object; each answers.
	for _, name := range []string{"iris", "iris-dir", "iris-gz"} {
		if code, out := inferREST(t, m.Gateway, name, irisSetosa, nil); code != 200 || label(t, out) != 0 {
			t.Fatalf("%s from GCS: %d %v", name, code, out)
		}
	}
	for prefix, want := range map[string]int{"demo/iris/": 1, "demo/iris-dir/": 3, "demo/iris-gz/": 1} {
		eventually(t, 5*time.Second, fmt.Sprintf("%d downloads under %s", want, prefix), func() bool {
			return g.gets(t, "models", prefix) == want
		})
	}
	// The prefix's files all landed, the placeholder skipped: the digest of the
	// directory's three files matched, or it would not have loaded.

	// Evicted from memory, iris reloads from the disk tier: the store sees no download.
	hits := w.metric(t, "mesh_worker_disk_cache_hits_total")
	m.evict(t, w, "iris")
	if code, out := inferREST(t, m.Gateway, "iris", irisSetosa, nil); code != 200 || label(t, out) != 0 {
		t.Fatalf("iris reloaded: %d %v", code, out)
	}
	if got := w.metric(t, "mesh_worker_disk_cache_hits_total"); got != hits+1 {
		t.Fatalf("disk tier hits %v → %v, want one more", hits, got)
	}
	if n := g.gets(t, "models", "demo/iris/"); n != 1 {
		t.Fatalf("the reload downloaded from the store (%d downloads in all), want none", n)
	}

	// Stores that refuse for good: 502 and FAILED_PRECONDITION with the reason, no retry.
	tests := []struct{ model, want string }{
		{"missing", "model files not found"},
		{"missing-dir", "model files not found"},
		{"no-bucket", `bucket \"nope\" does not exist`},
		{"corrupt", "failed their checksum"},
		{"untrusted", "storage TLS failure"},
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
	if n := g.gets(t, "models", "demo/nope/"); n != 0 {
		t.Errorf("a missing object was downloaded %d times; its metadata and the listing tell", n)
	}

	// A store that refuses connections: 503 with Retry-After after the worker's one retry,
	// well within the request's deadline.
	start := time.Now()
	code, header, body, err := sendInfer(m.Gateway, "refused", irisSetosa, nil)
	must(t, err)
	if code != 503 || header.Get("Retry-After") == "" || !strings.Contains(string(body), "storage unavailable") {
		t.Errorf("refused store: %d %v %s, want 503 with Retry-After and storage unavailable", code, header, body)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("refused store answered after %v", d)
	}

	metrics := scrape(t, w.MgmtAddr)
	for _, reason := range []string{"not_found", "checksum", "tls", "unavailable"} {
		if !strings.Contains(metrics, `mesh_worker_storage_errors_total{reason="`+reason+`",scheme="gs"}`) {
			t.Errorf("no gs storage error counted with reason %s", reason)
		}
	}
	if got := w.metric(t, `mesh_worker_storage_download_bytes_total{scheme="gs"}`); got < float64(3*len(iris)) {
		t.Errorf("%v bytes counted as downloaded from GCS, want at least the %d of three copies of iris", got, 3*len(iris))
	}
	if w.metric(t, `mesh_worker_loads_total{result="storage"}`) == 0 {
		t.Error("loads that failed in storage are not counted as such")
	}
}
