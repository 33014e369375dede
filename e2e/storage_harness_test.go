//go:build e2e

package e2e

import (
	"archive/tar"
	"compress/gzip"
	"encoding/json"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// storageConfig writes a storage-config Secret as Kubernetes mounts it: one file per
// storage key holding its JSON entry. It returns the directory.
func storageConfig(t testing.TB, entries map[string]map[string]any) string {
	t.Helper()
	dir := t.TempDir()
	for key, e := range entries {
		b, err := json.Marshal(e)
		must(t, err)
		must(t, os.WriteFile(filepath.Join(dir, key), b, 0o600))
	}
	return dir
}

// s3Entry is the storage-config entry for bucket on s.
func (s *s3Server) entry(bucket string) map[string]any {
	return map[string]any{"type": "s3", "access_key_id": s.AccessKey, "secret_access_key": s.SecretKey,
		"endpoint_url": s.Endpoint, "default_bucket": bucket, "region": s.Region}
}

// blackhole accepts TCP connections and never answers: a store that hangs.
func blackhole(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			go io.Copy(io.Discard, c)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}

// throttle forwards TCP connections to target at about bytesPerSec towards the client, a
// slow link to a real store. It returns the address to dial.
func throttle(t testing.TB, target string, bytesPerSec int) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	done := make(chan struct{})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			go func() { io.Copy(up, c); up.Close() }()
			go func() {
				defer c.Close()
				buf := make([]byte, 16<<10)
				tick := time.Duration(float64(time.Second) * float64(len(buf)) / float64(bytesPerSec))
				for {
					n, err := up.Read(buf)
					if n > 0 {
						if _, werr := c.Write(buf[:n]); werr != nil {
							return
						}
						select {
						case <-time.After(tick):
						case <-done:
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() { close(done); ln.Close() })
	return ln.Addr().String()
}

// writeTarGz writes files (path: bytes) as a .tar.gz archive at p.
func writeTarGz(t testing.TB, p string, files map[string][]byte) {
	t.Helper()
	f, err := os.Create(p)
	must(t, err)
	gz := gzip.NewWriter(f)
	tw := tar.NewWriter(gz)
	for name, b := range files {
		must(t, tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(b)), Typeflag: tar.TypeReg}))
		_, err := tw.Write(b)
		must(t, err)
	}
	must(t, tw.Close())
	must(t, gz.Close())
	must(t, f.Close())
}
