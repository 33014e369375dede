package triton

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"

	"github.com/modelmesh/mesh/internal/placement"
)

// Capacity reads the memory Triton can give models from its metrics endpoint (metricsURL,
// for example http://127.0.0.1:8002/metrics), less reserve per dimension (for CUDA
// contexts, Triton itself and the stubs): one budget per GPU from nv_gpu_memory_total_bytes,
// in the order Triton lists its GPUs; on a server without GPUs, a host budget from
// nv_cpu_memory_total_bytes. It reports which metric it used.
func Capacity(ctx context.Context, metricsURL string, reserve int64) (placement.Memory, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, metricsURL, nil)
	if err != nil {
		return placement.Memory{}, "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return placement.Memory{}, "", fmt.Errorf("triton metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return placement.Memory{}, "", fmt.Errorf("triton metrics: %s", resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return placement.Memory{}, "", fmt.Errorf("triton metrics: %w", err)
	}
	for _, metric := range []string{"nv_gpu_memory_total_bytes", "nv_cpu_memory_total_bytes"} {
		samples := metricSamples(string(body), metric)
		if len(samples) == 0 {
			continue
		}
		budgets := make([]int64, len(samples))
		for i, total := range samples {
			if total == 0 {
				// Triton samples memory every --metrics-interval-ms; it reads 0 until the first.
				return placement.Memory{}, metric, fmt.Errorf("%s not sampled yet: %w", metric, ErrNotYet)
			}
			if total-reserve <= 0 {
				return placement.Memory{}, metric, fmt.Errorf("%s is %d bytes, not more than the %d-byte reserve", metric, total, reserve)
			}
			budgets[i] = total - reserve
		}
		if metric == "nv_cpu_memory_total_bytes" {
			return placement.HostMemory(budgets[0]), metric, nil
		}
		return placement.Memory{GPU: budgets}, metric, nil
	}
	return placement.Memory{}, "", errors.New("triton metrics report neither GPU nor CPU memory")
}

// metricSamples lists the samples of a metric family in Prometheus text format, in order.
func metricSamples(text, name string) []int64 {
	var out []int64
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		fields := strings.Fields(line)
		v, err := strconv.ParseFloat(fields[len(fields)-1], 64)
		if err != nil || v < 0 || v > math.MaxInt64/2 {
			continue
		}
		out = append(out, int64(v))
	}
	return out
}
