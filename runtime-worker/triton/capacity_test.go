package triton

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/proto/inference"
)

func TestMetricSamples(t *testing.T) {
	const text = `# HELP nv_gpu_memory_total_bytes GPU total memory, in bytes
# TYPE nv_gpu_memory_total_bytes gauge
nv_gpu_memory_total_bytes{gpu_uuid="GPU-a"} 25769803776
nv_gpu_memory_total_bytes{gpu_uuid="GPU-b"} 8589934592
nv_gpu_memory_total_bytes_extra 7
nv_cpu_memory_total_bytes 67108864000
`
	tests := []struct {
		metric string
		want   []int64
	}{
		{"nv_gpu_memory_total_bytes", []int64{25769803776, 8589934592}}, // one per GPU, in order
		{"nv_cpu_memory_total_bytes", []int64{67108864000}},
		{"nv_energy_consumption", nil},
	}
	for _, tt := range tests {
		if got := metricSamples(text, tt.metric); !cmp.Equal(got, tt.want) {
			t.Errorf("%s: %v, want %v", tt.metric, got, tt.want)
		}
	}
}

func TestMemoryOf(t *testing.T) {
	usage := []*inference.MemoryUsage{
		{Type: "GPU", Id: 1, ByteSize: 3000},
		{Type: "CPU", ByteSize: 100},
		{Type: "CPU_PINNED", ByteSize: 20},
		{Type: "GPU", Id: 1, ByteSize: 500},
		{Type: "GPU", Id: 0, ByteSize: 7},
		{Type: "GPU", Id: 1 << 40, ByteSize: 1}, // no such device: counted, as host memory
	}
	want := placement.Memory{Host: 121, GPU: []int64{7, 3500}}
	if got := memoryOf(usage); !cmp.Equal(got, want) {
		t.Fatalf("memoryOf = %s, want %s", got, want)
	}
}

func TestPinToGPU(t *testing.T) {
	const plain = "name: \"double\"\nbackend: \"python\"\nmax_batch_size: 8\n"
	tests := []struct {
		name   string
		config string
		gpu    int
		want   string // "" means unchanged
	}{
		{"host only: unchanged", plain, -1, ""},
		{"pinned to the reserved device", plain, 1,
			plain + "# placed by mesh-worker on the GPU where it reserved the model's memory\ninstance_group [ { kind: KIND_GPU, count: 1, gpus: [ 1 ] } ]\n"},
		{"no final newline", strings.TrimSuffix(plain, "\n"), 0,
			plain + "# placed by mesh-worker on the GPU where it reserved the model's memory\ninstance_group [ { kind: KIND_GPU, count: 1, gpus: [ 0 ] } ]\n"},
		{"the author's instance groups win", plain + "instance_group [{ kind: KIND_CPU }]\n", 0, ""},
		{"an ensemble has no instances", "name: \"pipeline\"\nplatform: \"ensemble\"\n", 1, ""},
		{"a commented-out instance_group does not count", plain + "# instance_group [{ kind: KIND_CPU }]\n", 0,
			plain + "# instance_group [{ kind: KIND_CPU }]\n# placed by mesh-worker on the GPU where it reserved the model's memory\ninstance_group [ { kind: KIND_GPU, count: 1, gpus: [ 0 ] } ]\n"},
	}
	for _, tt := range tests {
		want := tt.want
		if want == "" {
			want = tt.config
		}
		if got := string(pinToGPU([]byte(tt.config), tt.gpu)); got != want {
			t.Errorf("%s:\ngot  %q\nwant %q", tt.name, got, want)
		}
	}
}
