//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/modelmesh/mesh/proto/meshv1"
)

// storageBenchBytes is the size of the large object: big enough that a download takes
// hundreds of milliseconds on loopback, small enough for a few rounds in seconds.
const storageBenchBytes = 256 << 20

// BenchmarkMeshStorage measures model storage side by side in one run, on one versitygw:
//
//   - download throughput: a 256 MiB object of random bytes read with a plain minio-go
//     GetObject copied to a file (the baseline), against the worker's own fetch of the
//     same bytes into its disk tier. The object is a pad file beside the iris model under
//     one prefix, so the worker downloads it whole through its real path (list, GET,
//     checksum, rename into the tier) and the load then succeeds: ONNX Runtime opens only
//     <dir>/model.onnx. The worker fetches two copies: one uploaded through the S3 API,
//     checked by the store's CRC64NVME, and one with an MD5 ETag only, checked by MD5. The
//     worker's download is timed by its own histogram (mesh_worker_storage_download_seconds),
//     apart from the load. Rounds alternate which goes first.
//   - the disk tier: the first load from S3 (download and load) against the reload of the
//     same model after an unload from memory, served from the tier without a GET, for the
//     256 MiB prefix and for the synthetic 32 MiB model (a real model, whose session
//     creation is a real cost). The tier's budget holds one of the two, so each round's
//     first loads are cold.
//
// Dirty pages are written out (sync) before each timed step, so none pays for another's
// writeback. Medians of the rounds are reported, and for throughput also the best round of
// each side: on a shared machine other work only ever slows a round down. Nothing is
// asserted on speed.
func BenchmarkMeshStorage(b *testing.B) {
	const rounds = 5
	s := startS3(b)
	iris := filepath.Join(models(b), "iris", "1", "model.onnx")
	synthetic := filepath.Join(models(b), "synthetic-32mb", "1", "model.onnx")
	src := b.TempDir()
	must(b, os.WriteFile(filepath.Join(src, "model.onnx"), mustRead(b, iris), 0o644))
	writeRandom(b, filepath.Join(src, "pad.bin"), storageBenchBytes)
	// big is uploaded through the S3 API, so the store keeps a CRC64NVME of each object (as
	// AWS S3 does of every object written since 2025) and the worker checks that; big-md5 is
	// written behind the server with an MD5 ETag only, as older objects are, and the worker
	// checks the MD5.
	s.put(b, "models", "big-md5", src)
	s.upload(b, "models", "big/model.onnx", filepath.Join(src, "model.onnx"))
	s.upload(b, "models", "big/pad.bin", filepath.Join(src, "pad.bin"))
	s.put(b, "models", "synthetic/model.onnx", synthetic)
	bigBytes := int64(storageBenchBytes + len(mustRead(b, iris)))

	cfg := storageConfig(b, map[string]map[string]any{"default": s.entry("models")})
	w := startWorker(b, "storage-bench", "--capacity", "1GiB", "--log-level", "warn", "--storage-config", cfg,
		"--disk-cache-size", fmt.Sprint(bigBytes+1<<20)) // one of the big prefixes at a time
	raw, err := minio.New(strings.TrimPrefix(s.Endpoint, "http://"), &minio.Options{
		Creds: credentials.NewStaticV4(s.AccessKey, s.SecretKey, ""), Region: s.Region})
	must(b, err)
	dst := filepath.Join(b.TempDir(), "raw.bin") // the same file system as the worker's tier

	ctx := context.Background()
	rawGet := func() float64 {
		start := time.Now()
		obj, err := raw.GetObject(ctx, "models", "big/pad.bin", minio.GetObjectOptions{})
		must(b, err)
		f, err := os.Create(dst)
		must(b, err)
		n, err := io.Copy(f, obj)
		must(b, err)
		must(b, f.Close())
		d := time.Since(start)
		obj.Close()
		if n != storageBenchBytes {
			b.Fatalf("raw GET read %d bytes, want %d", n, storageBenchBytes)
		}
		must(b, os.Remove(dst))
		return float64(n) / d.Seconds() / 1e6
	}
	load := func(name, path string) time.Duration {
		start := time.Now()
		_, err := w.Mgmt.Load(ctx, &meshv1.LoadRequest{Model: &meshv1.ModelRef{Name: name, Version: "1"}, StoragePath: path})
		must(b, err)
		d := time.Since(start)
		_, err = w.Mgmt.Unload(ctx, &meshv1.UnloadRequest{Model: &meshv1.ModelRef{Name: name, Version: "1"}})
		must(b, err)
		return d
	}
	// coldThenTier loads path from S3 (checked to be one more GET of each of its files)
	// and again from the disk tier (checked to be a tier hit and no GET).
	coldThenTier := func(name, path string, files int) (cold, tier time.Duration) {
		gets := s.gets(b, "models", path)
		cold = load(name, path)
		if n := s.gets(b, "models", path); n != gets+files {
			b.Fatalf("%s's first load made %d GETs, want %d: it was not a download", name, n-gets, files)
		}
		hits := w.metric(b, "mesh_worker_disk_cache_hits_total")
		tier = load(name, path)
		if n := s.gets(b, "models", path); n != gets+files {
			b.Fatalf("%s's reload read the store", name)
		}
		if got := w.metric(b, "mesh_worker_disk_cache_hits_total"); got != hits+1 {
			b.Fatalf("%s's reload was not a disk tier hit (%v → %v)", name, hits, got)
		}
		return cold, tier
	}
	workerGet := func(name string) (mbps float64, cold, tier time.Duration) {
		secs := sumMetric(b, w.MgmtAddr, "mesh_worker_storage_download_seconds_sum")
		bytes := sumMetric(b, w.MgmtAddr, "mesh_worker_storage_download_bytes_total")
		cold, tier = coldThenTier(name, name, 2)
		secs = sumMetric(b, w.MgmtAddr, "mesh_worker_storage_download_seconds_sum") - secs
		bytes = sumMetric(b, w.MgmtAddr, "mesh_worker_storage_download_bytes_total") - bytes
		if int64(bytes) != bigBytes {
			b.Fatalf("the worker downloaded %v bytes, want %d", bytes, bigBytes)
		}
		return bytes / secs / 1e6, cold, tier
	}

	var rawMBps, workerMBps, md5MBps []float64
	var bigCold, bigTier, synCold, synTier []time.Duration
	for range b.N {
		for r := range rounds {
			var mbps, md5 float64
			var cold, tier time.Duration
			if r%2 == 0 {
				settle()
				rawMBps = append(rawMBps, rawGet())
				settle()
				mbps, cold, tier = workerGet("big")
				settle()
				md5, _, _ = workerGet("big-md5") // evicts big from the tier
			} else {
				settle()
				md5, _, _ = workerGet("big-md5")
				settle()
				mbps, cold, tier = workerGet("big") // evicts big-md5 from the tier
				settle()
				rawMBps = append(rawMBps, rawGet())
			}
			settle()
			workerMBps, md5MBps, bigCold, bigTier = append(workerMBps, mbps), append(md5MBps, md5), append(bigCold, cold), append(bigTier, tier)
			cold, tier = coldThenTier("synthetic", "synthetic/model.onnx", 1) // evicts big from the tier
			synCold, synTier = append(synCold, cold), append(synTier, tier)
		}
	}
	rawMed, workerMed, md5Med := median(rawMBps), median(workerMBps), median(md5MBps)
	rawBest, workerBest, md5Best := slices.Max(rawMBps), slices.Max(workerMBps), slices.Max(md5MBps)
	bigColdMed, bigTierMed := median(bigCold), median(bigTier)
	synColdMed, synTierMed := median(synCold), median(synTier)
	ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
	b.ReportMetric(rawMed, "raw-MB/s")
	b.ReportMetric(workerMed, "worker-MB/s")
	b.ReportMetric(workerMed/rawMed, "worker/raw")
	b.ReportMetric(workerBest/rawBest, "best-worker/raw")
	b.ReportMetric(md5Med/rawMed, "worker-md5/raw")
	b.ReportMetric(ms(bigColdMed), "256MiB-cold-ms")
	b.ReportMetric(ms(bigTierMed), "256MiB-tier-ms")
	b.ReportMetric(ms(synColdMed), "32MiB-cold-ms")
	b.ReportMetric(ms(synTierMed), "32MiB-tier-ms")
	b.ReportMetric(float64(synColdMed)/float64(synTierMed), "32MiB-cold/tier")

	ratios, md5Ratios := make([]float64, len(rawMBps)), make([]float64, len(rawMBps))
	for i := range ratios {
		ratios[i], md5Ratios[i] = workerMBps[i]/rawMBps[i], md5MBps[i]/rawMBps[i]
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "model storage, versitygw on loopback, %d rounds, MB = 10^6 bytes\n", len(rawMBps))
	fmt.Fprintf(&sb, "%-36s %7s %7s   %s\n", "256 MiB object into a file, MB/s", "median", "best", "rounds")
	fmt.Fprintf(&sb, "%-36s %7.0f %7.0f   %s\n", "raw: minio-go GetObject + io.Copy", rawMed, rawBest, fmtFloats(rawMBps))
	fmt.Fprintf(&sb, "%-36s %7.0f %7.0f   %s\n", "worker, checked by CRC64NVME", workerMed, workerBest, fmtFloats(workerMBps))
	fmt.Fprintf(&sb, "%-36s %7.0f %7.0f   %s\n", "worker, checked by MD5 (ETag only)", md5Med, md5Best, fmtFloats(md5MBps))
	fmt.Fprintf(&sb, "%-36s %6.2fx %6.2fx   %s\n", "worker (CRC64NVME)/raw", workerMed/rawMed, workerBest/rawBest, fmtRatios(ratios))
	fmt.Fprintf(&sb, "%-36s %6.2fx %6.2fx   %s\n", "worker (MD5)/raw", md5Med/rawMed, md5Best/rawBest, fmtRatios(md5Ratios))
	fmt.Fprintf(&sb, "%-36s %9s %9s %7s\n", "load (median)", "from S3", "from tier", "ratio")
	fmt.Fprintf(&sb, "%-36s %7.1fms %7.1fms %6.1fx\n", "256 MiB prefix (iris + pad file)", ms(bigColdMed), ms(bigTierMed), float64(bigColdMed)/float64(bigTierMed))
	fmt.Fprintf(&sb, "%-36s %7.1fms %7.1fms %6.1fx", "synthetic-32mb", ms(synColdMed), ms(synTierMed), float64(synColdMed)/float64(synTierMed))
	b.Log(sb.String())
}

// settle writes the file systems' dirty pages out before a timed step, so that no step
// pays for the writeback of another's files.
func settle() { syscall.Sync() }

// writeRandom writes n random bytes to p (not compressible, so no layer can shrink them).
func writeRandom(t testing.TB, p string, n int) {
	t.Helper()
	rng := rand.NewChaCha8([32]byte{1})
	f, err := os.Create(p)
	must(t, err)
	_, err = io.CopyN(f, rng, int64(n))
	must(t, err)
	must(t, f.Close())
}

// median is the middle value of xs (the mean of the two middle ones for an even count).
func median[T int64 | float64 | time.Duration](xs []T) T {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 0 {
		return (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return s[len(s)/2]
}

func fmtRatios(xs []float64) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = fmt.Sprintf("%.2f", x)
	}
	return strings.Join(parts, " ")
}

func fmtFloats(xs []float64) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = fmt.Sprintf("%.0f", x)
	}
	return strings.Join(parts, " ")
}
