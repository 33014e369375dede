//go:build e2e

package e2e

import (
	"bytes"
	"crypto/md5"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestS3ServerHarness proves the S3 harness the storage tests stand on: objects put through
// the backend directory are served with the right bytes and ETag, over HTTP and HTTPS, and
// gets counts exactly the GETs a client made.
func TestS3ServerHarness(t *testing.T) {
	tests := []struct {
		name string
		tls  bool
	}{
		{name: "http"},
		{name: "https", tls: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var opts []s3Option
			caFile := ""
			if tt.tls {
				caPEM, certFile, keyFile := testCA(t)
				caFile = filepath.Join(t.TempDir(), "ca.pem")
				must(t, os.WriteFile(caFile, []byte(caPEM), 0o644))
				opts = append(opts, withTLS(certFile, keyFile))
			}
			s := startS3(t, opts...)
			if wantScheme := map[bool]string{false: "http://", true: "https://"}[tt.tls]; !strings.HasPrefix(s.Endpoint, wantScheme) {
				t.Fatalf("endpoint %s, want %s...", s.Endpoint, wantScheme)
			}

			src := t.TempDir()
			model := randomFile(t, filepath.Join(src, "model.onnx"), 256<<10)
			tree := filepath.Join(src, "tree")
			randomFile(t, filepath.Join(tree, "a.bin"), 10)
			nested := randomFile(t, filepath.Join(tree, "sub", "b.bin"), 1000)
			s.put(t, "models", "iris/1/model.onnx", filepath.Join(src, "model.onnx"))
			s.put(t, "models", "tree", tree)

			for want := 1; want <= 2; want++ {
				if got := s3curl(t, s, caFile, "/models/iris/1/model.onnx"); !bytes.Equal(got, model) {
					t.Fatalf("GET %d: %d bytes, want the %d put", want, len(got), len(model))
				}
				if got := s.gets(t, "models", "iris/"); got != want {
					t.Fatalf("gets after %d GETs = %d", want, got)
				}
			}
			sum := md5.Sum(model)
			head := string(s3curl(t, s, caFile, "/models/iris/1/model.onnx", "--head"))
			if want := `etag: "` + hex.EncodeToString(sum[:]) + `"`; !strings.Contains(strings.ToLower(head), want) {
				t.Errorf("HEAD answered\n%s\nwant header %s", head, want)
			}
			if got := s3curl(t, s, caFile, "/models/tree/sub/b.bin"); !bytes.Equal(got, nested) {
				t.Errorf("GET of a file put with its directory: %d bytes, want %d", len(got), len(nested))
			}
			// The HEAD is no GET; the prefix keeps the two trees apart.
			for prefix, want := range map[string]int{"iris/": 2, "tree/": 1, "": 3, "other/": 0} {
				if got := s.gets(t, "models", prefix); got != want {
					t.Errorf("gets(models, %q) = %d, want %d", prefix, got, want)
				}
			}
		})
	}
}

// s3curl makes a SigV4-signed request for path with curl, a client independent of ours,
// and returns what curl wrote (the body, or the headers with --head). caFile, when set, is
// the only CA curl trusts.
func s3curl(t *testing.T, s *s3Server, caFile, path string, extra ...string) []byte {
	t.Helper()
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Fatal("curl (7.75 or later, for --aws-sigv4) is needed to sign requests to the S3 server")
	}
	args := []string{
		"--silent", "--show-error", "--fail-with-body",
		"--aws-sigv4", "aws:amz:" + s.Region + ":s3", "--user", s.AccessKey + ":" + s.SecretKey,
		// versitygw requires the header; curl signs it along with the rest.
		"--header", "x-amz-content-sha256: UNSIGNED-PAYLOAD",
	}
	if caFile != "" {
		args = append(args, "--cacert", caFile)
	}
	args = append(append(args, extra...), s.Endpoint+path)
	var stderr bytes.Buffer
	cmd := exec.Command(curl, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("curl %s: %v: %s%s", path, err, stderr.String(), out)
	}
	return out
}

// randomFile writes n random bytes to name, creating its directory, and returns them.
func randomFile(t testing.TB, name string, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	must(t, os.MkdirAll(filepath.Dir(name), 0o755))
	must(t, os.WriteFile(name, b, 0o644))
	return b
}
