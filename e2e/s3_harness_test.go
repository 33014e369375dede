//go:build e2e

package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/md5"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"io"
	"io/fs"
	"math/big"
	"net"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/modelmesh/mesh/internal/proctest"
)

// s3HealthPath is versitygw's unauthenticated health endpoint (--health). The underscore
// keeps it clear of every bucket: S3 bucket names cannot hold one.
const s3HealthPath = "/_health"

// s3Server is a real versitygw serving dir's top-level directories as buckets. Its
// metadata (ETags) lives in sidecar files, so it needs no extended attributes from the
// file system under the test's temp dir. It runs until the test ends.
type s3Server struct {
	Endpoint  string // http://127.0.0.1:port, or https:// withTLS
	AccessKey string // the root account's, the only one
	SecretKey string
	Region    string

	dir       string // the posix backend: dir/bucket/key
	meta      string // sidecar metadata: meta/bucket/key/meta/etag
	staging   string // put's temporary files, on the same file system as dir
	accessLog string
	proc      *proctest.Process
}

type s3Options struct {
	certFile, keyFile string
}

// s3Option changes how startS3 runs the server.
type s3Option func(*s3Options)

// withTLS serves HTTPS with the given PEM certificate and key (testCA makes both).
func withTLS(certFile, keyFile string) s3Option {
	return func(o *s3Options) { o.certFile, o.keyFile = certFile, keyFile }
}

// startS3 starts versitygw (../.bin/versitygw, or $MESH_VERSITYGW) on a free port with a
// fresh data dir and access log, and returns once it answers its health check. It fails the
// test if the binary is missing: `make setup` builds it.
func startS3(t testing.TB, opts ...s3Option) *s3Server {
	t.Helper()
	var o s3Options
	for _, opt := range opts {
		opt(&o)
	}
	bin := os.Getenv("MESH_VERSITYGW")
	if bin == "" {
		bin = filepath.Join("..", ".bin", "versitygw")
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("versitygw missing; run `make setup` or set MESH_VERSITYGW: %v", err)
	}
	root := t.TempDir()
	s := &s3Server{
		AccessKey: "mesh-e2e-access", SecretKey: "mesh-e2e-secret", Region: "us-east-1",
		dir: filepath.Join(root, "data"), meta: filepath.Join(root, "meta"),
		staging: filepath.Join(root, "staging"), accessLog: filepath.Join(root, "access.log"),
	}
	for _, d := range []string{s.dir, s.meta, s.staging} {
		must(t, os.Mkdir(d, 0o755))
	}
	addr := freePort(t)
	scheme := "http"
	// --quiet drops the per-request lines on stdout; the access log has them all.
	args := []string{
		"--access", s.AccessKey, "--secret", s.SecretKey, "--region", s.Region,
		"--port", addr, "--health", s3HealthPath, "--access-log", s.accessLog, "--quiet",
	}
	if o.certFile != "" {
		scheme = "https"
		args = append(args, "--cert", o.certFile, "--key", o.keyFile)
	}
	args = append(args, "posix", "--sidecar", s.meta, s.dir)
	s.Endpoint = scheme + "://" + addr
	s.proc = startProcess(t, "versitygw", bin, args, s3Ready(s.Endpoint+s3HealthPath))
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(s.accessLog)
			t.Logf("versitygw access log:\n%s", b)
		}
	})
	return s
}

// s3Ready reports whether the health endpoint answers 200. It does not verify the server's
// certificate: it only asks whether the server is up, and the tests check TLS themselves.
func s3Ready(url string) func() bool {
	return proctest.HTTPOKWith(&http.Client{Timeout: time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
	}}, url)
}

// put copies the local file src to s3://bucket/key, or each file under the directory src to
// s3://bucket/key/<path below src>, creating the bucket. It writes into the backend
// directory, not through the S3 API, and gives each object the ETag a single-part PutObject
// of the same bytes would: the quoted MD5 hex. Safe while the server runs: a file lands by
// rename, so no GET sees it half written; but replacing an object is not atomic, and for a
// moment its new bytes may carry the old ETag.
func (s *s3Server) put(t testing.TB, bucket, key, src string) {
	t.Helper()
	if bucket == "" || strings.ContainsAny(bucket, `/\`) || !filepath.IsLocal(filepath.FromSlash(key)) {
		t.Fatalf("put: bad bucket %q or key %q", bucket, key)
	}
	eachFile(t, key, src, func(key, file string) { s.putFile(t, bucket, key, file) })
}

// eachFile calls put(key, src) for a file src, or put(key/<path below src>, file) for each
// file under the directory src: how the harnesses' put methods name objects.
func eachFile(t testing.TB, key, src string, put func(key, file string)) {
	t.Helper()
	info, err := os.Stat(src)
	must(t, err)
	if !info.IsDir() {
		put(key, src)
		return
	}
	must(t, filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		put(path.Join(key, filepath.ToSlash(rel)), p)
		return nil
	}))
}

func (s *s3Server) putFile(t testing.TB, bucket, key, src string) {
	t.Helper()
	in, err := os.Open(src)
	must(t, err)
	defer in.Close()
	tmp, err := os.CreateTemp(s.staging, "put-")
	must(t, err)
	sum := md5.New()
	_, err = io.Copy(io.MultiWriter(tmp, sum), in)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	must(t, err)
	dst := filepath.Join(s.dir, bucket, filepath.FromSlash(key))
	must(t, os.MkdirAll(filepath.Dir(dst), 0o755))
	must(t, os.Rename(tmp.Name(), dst))
	// Bytes first, then the ETag: a reader racing a replacement then sees a stale ETag
	// (and comes back later) rather than caching old bytes under the new one. Whatever an
	// earlier PutObject stored (content type, checksums) no longer describes the bytes.
	metaDir := filepath.Join(s.meta, bucket, filepath.FromSlash(key), "meta")
	must(t, os.RemoveAll(metaDir))
	must(t, os.MkdirAll(metaDir, 0o755))
	must(t, os.WriteFile(filepath.Join(metaDir, "etag"), []byte(`"`+hex.EncodeToString(sum.Sum(nil))+`"`), 0o644))
}

// upload stores the local file src as s3://bucket/key through the S3 API (minio-go's
// PutObject, multipart above 16 MiB), as users upload models: the server keeps the checksum
// it computes (versitygw, like AWS S3, a full-object CRC64NVME). The bucket must exist (put
// creates it). Plain-HTTP servers only.
func (s *s3Server) upload(t testing.TB, bucket, key, src string) {
	t.Helper()
	c, err := minio.New(strings.TrimPrefix(s.Endpoint, "http://"), &minio.Options{
		Creds: credentials.NewStaticV4(s.AccessKey, s.SecretKey, ""), Region: s.Region})
	must(t, err)
	_, err = c.FPutObject(context.Background(), bucket, key, src, minio.PutObjectOptions{PartSize: 16 << 20})
	must(t, err)
}

// tamper flips one byte of s3://bucket/key in the backend directory, keeping its size and
// whatever the server recorded of it: corruption at rest, behind the server's back.
func (s *s3Server) tamper(t testing.TB, bucket, key string) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(s.dir, bucket, filepath.FromSlash(key)), os.O_RDWR, 0)
	must(t, err)
	defer f.Close()
	b := make([]byte, 1)
	_, err = f.ReadAt(b, 0)
	must(t, err)
	_, err = f.WriteAt([]byte{b[0] ^ 0xff}, 0)
	must(t, err)
}

// gets counts the GetObject requests, ranged or whole and whatever their status, that the
// server answered for keys in bucket starting with keyPrefix, read from its access log.
// versitygw writes each line, unbuffered, before it sends the response, so a GET whose
// response a client has begun to read is already counted: there is nothing to wait for.
func (s *s3Server) gets(t testing.TB, bucket, keyPrefix string) int {
	t.Helper()
	b, err := os.ReadFile(s.accessLog)
	must(t, err)
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		// owner bucket [02/January/2006:15:04:05 -0700] ip requester request-id operation
		// key request-uri status ...; the key is logged decoded, so it may hold spaces and
		// is matched as the start of what follows the operation.
		f := strings.SplitN(line, " ", 9)
		if len(f) == 9 && f[1] == bucket && f[7] == "s3_GetObject" && strings.HasPrefix(f[8], keyPrefix) {
			n++
		}
	}
	return n
}

// testCA makes a CA and a server certificate it signs for 127.0.0.1, ::1 and localhost,
// valid for a day, with the certificate and key as PEM files in a test temp dir. caPEM is
// the CA certificate, PEM encoded, for a client's trust pool.
func testCA(t testing.TB) (caPEM, certFile, keyFile string) {
	t.Helper()
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(t, err)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "mesh e2e test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	must(t, err)
	ca, err := x509.ParseCertificate(caDER)
	must(t, err)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(t, err)
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}, DNSNames: []string{"localhost"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, &key.PublicKey, caKey)
	must(t, err)
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	must(t, err)
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "server.pem"), filepath.Join(dir, "server-key.pem")
	must(t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leafDER}), 0o644))
	must(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600))
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})), certFile, keyFile
}
