//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/proto/inference"
	"github.com/modelmesh/mesh/proto/meshv1"
	"github.com/modelmesh/mesh/runtime-worker/agent"
	"github.com/modelmesh/mesh/runtime-worker/onnx"
	"github.com/modelmesh/mesh/runtime-worker/tensor"
)

// result is one measured path: latency percentiles of sequential calls and throughput of
// concurrent ones.
type result struct {
	p50, p99   time.Duration
	throughput float64
}

// measure times b.N sequential calls of op, then the same number spread over 4 goroutines.
func measure(b *testing.B, op func() error) result {
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		if err := op(); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(lat)
	r := result{p50: lat[len(lat)/2], p99: lat[len(lat)*99/100]}

	const workers = 4
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	start := time.Now()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < b.N; i += workers {
				if err := op(); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		b.Fatal(err)
	}
	r.throughput = float64(b.N) / time.Since(start).Seconds()
	b.ReportMetric(float64(r.p50.Microseconds()), "p50-µs")
	b.ReportMetric(float64(r.p99.Microseconds()), "p99-µs")
	b.ReportMetric(r.throughput, "req/s")
	return r
}

// BenchmarkWorkerIris compares one-row iris inference through the worker, over REST and
// over gRPC, with the same model called in-process through ONNX Runtime, in one run, and
// logs the ratios.
func BenchmarkWorkerIris(b *testing.B) {
	w := startWorker(b, "bench", "--capacity", "1GiB", "--log-level", "warn")
	w.load(b, "iris", 0)
	row := []float32{5.1, 3.5, 1.4, 0.2}
	m := placement.ModelVersion{Name: "iris", Version: "1"}
	results := map[string]result{}

	b.Run("in-process", func(b *testing.B) {
		backend, err := onnx.New(onnx.Config{Library: ortLibrary(b)})
		if err != nil {
			b.Fatal(err)
		}
		defer backend.Close()
		if _, err := backend.Load(context.Background(), m, agent.Files{Path: filepath.Join(models(b), "iris", "1", "model.onnx"), GPU: -1}); err != nil {
			b.Fatal(err)
		}
		req := &tensor.Request{Model: m, Inputs: []tensor.Tensor{{Name: "input", Datatype: tensor.FP32, Shape: []int64{1, 4}, Data: row}}}
		results["in-process"] = measure(b, func() error {
			_, err := backend.Infer(context.Background(), m, req)
			return err
		})
	})
	b.Run("rest", func(b *testing.B) {
		body := []byte(`{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}`)
		url := "http://" + w.DataAddr + "/v2/models/iris/infer"
		client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
		results["rest"] = measure(b, func() error {
			resp, err := client.Post(url, "application/json", bytes.NewReader(body))
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			out, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 200 {
				return fmt.Errorf("status %d: %s", resp.StatusCode, out)
			}
			return nil
		})
	})
	b.Run("grpc", func(b *testing.B) {
		raw, _ := tensor.EncodeRaw(tensor.Tensor{Datatype: tensor.FP32, Data: row})
		req := &inference.ModelInferRequest{ModelName: "iris",
			Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: "input", Datatype: "FP32", Shape: []int64{1, 4}}},
			RawInputContents: [][]byte{raw}}
		results["grpc"] = measure(b, func() error {
			_, err := w.Infer.ModelInfer(context.Background(), req)
			return err
		})
	})
	base, ok := results["in-process"]
	if !ok || len(results) != 3 {
		return
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "\n%-11s %9s %9s %10s %10s %11s\n", "path", "p50", "p99", "req/s", "p50 ratio", "req/s ratio")
	for _, name := range []string{"in-process", "rest", "grpc"} {
		r := results[name]
		fmt.Fprintf(&sb, "%-11s %9v %9v %10.0f %9.1fx %10.2fx\n", name, r.p50, r.p99, r.throughput,
			float64(r.p50)/float64(base.p50), r.throughput/base.throughput)
	}
	fmt.Print(sb.String())
}

// BenchmarkWorkerLoad measures load time per MiB of model through the worker's management
// API (fetch into the cache, session creation, measurement) against session creation
// in-process, for the synthetic 16 and 32 MiB models.
func BenchmarkWorkerLoad(b *testing.B) {
	w := startWorker(b, "bench-load", "--capacity", "1GiB", "--log-level", "warn")
	backend, err := onnx.New(onnx.Config{Library: ortLibrary(b)})
	if err != nil {
		b.Fatal(err)
	}
	defer backend.Close()
	var sb strings.Builder
	fmt.Fprintf(&sb, "\n%-15s %12s %14s %8s\n", "model", "worker ms/MiB", "in-proc ms/MiB", "ratio")
	names := []string{"synthetic-16mb", "synthetic-32mb"}
	sort.Strings(names)
	for _, name := range names {
		path := filepath.Join(models(b), name, "1", "model.onnx")
		fi, err := os.Stat(path)
		if err != nil {
			b.Fatal(err)
		}
		mib := float64(fi.Size()) / (1 << 20)
		m := placement.ModelVersion{Name: name, Version: "1"}
		var workerPerMiB, inProcPerMiB float64
		b.Run(name, func(b *testing.B) {
			var viaWorker, inProc time.Duration
			for range b.N {
				start := time.Now()
				_, err := w.Mgmt.Load(context.Background(), &meshv1.LoadRequest{Model: &meshv1.ModelRef{Name: name, Version: "1"}, StorageUri: "file://" + path})
				if err != nil {
					b.Fatal(err)
				}
				viaWorker += time.Since(start)
				if _, err := w.Mgmt.Unload(context.Background(), &meshv1.UnloadRequest{Model: &meshv1.ModelRef{Name: name, Version: "1"}}); err != nil {
					b.Fatal(err)
				}
				start = time.Now()
				if _, err := backend.Load(context.Background(), m, agent.Files{Path: path, GPU: -1}); err != nil {
					b.Fatal(err)
				}
				inProc += time.Since(start)
				backend.Unload(context.Background(), m)
			}
			perMiB := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / float64(b.N) / mib }
			workerPerMiB, inProcPerMiB = perMiB(viaWorker), perMiB(inProc)
			b.ReportMetric(workerPerMiB, "worker-ms/MiB")
			b.ReportMetric(inProcPerMiB, "inproc-ms/MiB")
		})
		if inProcPerMiB > 0 {
			fmt.Fprintf(&sb, "%-15s %12.2f %14.2f %7.2fx\n", name, workerPerMiB, inProcPerMiB, workerPerMiB/inProcPerMiB)
		}
	}
	fmt.Print(sb.String())
}
