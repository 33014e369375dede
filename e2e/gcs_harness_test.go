//go:build e2e

package e2e

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modelmesh/mesh/internal/proctest"
)

// gcsServer is a real GCS emulator, fake-gcs-server, with an in-memory backend. It serves
// the JSON API under /storage/v1 and downloads at /bucket/object (the XML API path the Go
// client reads from). It runs until the test ends.
type gcsServer struct {
	Endpoint string // https://127.0.0.1:port, or http:// without TLS
	client   *http.Client
	proc     *proctest.Process
}

// gcsTLS is the certificate the emulator serves and the CA that signs it (testCA); with no
// CA, the test's own uploads cannot reach it either.
type gcsTLS struct {
	CAPEM, CertFile, KeyFile string
}

// startGCS starts fake-gcs-server (../.bin/fake-gcs-server, or $MESH_FAKE_GCS_SERVER) on a
// free port, over HTTPS with tc's certificate or plain HTTP when tc is nil, and returns
// once it answers its health check. It fails the test if the binary is missing: `make
// setup` builds it.
func startGCS(t testing.TB, tc *gcsTLS) *gcsServer {
	t.Helper()
	bin := os.Getenv("MESH_FAKE_GCS_SERVER")
	if bin == "" {
		bin = filepath.Join("..", ".bin", "fake-gcs-server")
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("fake-gcs-server missing; run `make setup` or set MESH_FAKE_GCS_SERVER: %v", err)
	}
	addr := freePort(t)
	host, port, _ := net.SplitHostPort(addr)
	scheme := "http"
	s := &gcsServer{client: &http.Client{Timeout: 10 * time.Second}}
	if tc != nil {
		scheme = "https"
		pool := x509.NewCertPool()
		if tc.CAPEM != "" && !pool.AppendCertsFromPEM([]byte(tc.CAPEM)) {
			t.Fatal("gcs: the test CA is not PEM")
		}
		s.client.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	}
	s.Endpoint = scheme + "://" + addr
	// -public-host is the host:port clients dial: the emulator routes /bucket/object
	// downloads by it. -external-url is what it writes into upload and self links.
	args := []string{"-scheme", scheme, "-host", host, "-port", port, "-backend", "memory",
		"-public-host", addr, "-external-url", s.Endpoint, "-log-level", "info"}
	if tc != nil {
		args = append(args, "-cert-location", tc.CertFile, "-private-key-location", tc.KeyFile)
	}
	s.proc = startProcess(t, "fake-gcs-server", bin, args, s3Ready(s.Endpoint+"/_internal/healthcheck"))
	return s
}

// createBucket makes a bucket through the JSON API.
func (s *gcsServer) createBucket(t testing.TB, bucket string) {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"name": bucket})
	s.do(t, "POST", s.Endpoint+"/storage/v1/b", body)
}

// put uploads the local file src as gs://bucket/key, or each file under the directory src
// as gs://bucket/key/<path below src>, through the JSON API's media upload: the emulator
// keeps each object's MD5 and CRC32C, as GCS does.
func (s *gcsServer) put(t testing.TB, bucket, key, src string) {
	t.Helper()
	eachFile(t, key, src, func(key, file string) { s.putObject(t, bucket, key, mustRead(t, file), "") })
}

// putObject stores data as gs://bucket/key with the given Content-Encoding ("" for none;
// "gzip" for data compressed as `gsutil cp -Z` stores it).
func (s *gcsServer) putObject(t testing.TB, bucket, key string, data []byte, contentEncoding string) {
	t.Helper()
	q := url.Values{"uploadType": {"media"}, "name": {key}}
	if contentEncoding != "" {
		q.Set("contentEncoding", contentEncoding)
	}
	s.do(t, "POST", s.Endpoint+"/upload/storage/v1/b/"+url.PathEscape(bucket)+"/o?"+q.Encode(), data)
}

func (s *gcsServer) do(t testing.TB, method, u string, body []byte) {
	t.Helper()
	req, err := http.NewRequest(method, u, bytes.NewReader(body))
	must(t, err)
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := s.client.Do(req)
	must(t, err)
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("gcs %s %s: %d %s", method, u, resp.StatusCode, out)
	}
}

// gets counts the downloads (GET of /bucket/key, the path the Go client reads objects at,
// the key's slashes escaped as it sends them) of keys in bucket starting with keyPrefix,
// whatever their status, from the emulator's request log. It logs each request once the
// response is written, and the log reaches the test a moment later: wait for a download
// to count.
func (s *gcsServer) gets(t testing.TB, bucket, keyPrefix string) int {
	t.Helper()
	want := fmt.Sprintf(`\"GET /%s/%s`, bucket, url.PathEscape(keyPrefix))
	n := 0
	for _, line := range strings.Split(s.proc.Logs(), "\n") {
		if strings.Contains(line, want) {
			n++
		}
	}
	return n
}

// entry is the storage-config entry for bucket on s: anonymous, as an emulator takes no
// credentials, trusting caPEM when given.
func (s *gcsServer) entry(bucket, caPEM string) map[string]any {
	e := map[string]any{"type": "gcs", "endpoint_url": s.Endpoint, "default_bucket": bucket, "anonymous": true}
	if caPEM != "" {
		e["certificate"] = caPEM
	}
	return e
}
