package triton

import "testing"

func TestSumMetric(t *testing.T) {
	const text = `# HELP nv_gpu_memory_total_bytes GPU total memory, in bytes
# TYPE nv_gpu_memory_total_bytes gauge
nv_gpu_memory_total_bytes{gpu_uuid="GPU-a"} 25769803776
nv_gpu_memory_total_bytes{gpu_uuid="GPU-b"} 25769803776
nv_gpu_memory_total_bytes_extra 7
nv_cpu_memory_total_bytes 67108864000
`
	tests := []struct {
		name      string
		metric    string
		want      int64
		wantFound bool
	}{
		{"sums every GPU", "nv_gpu_memory_total_bytes", 2 * 25769803776, true},
		{"plain sample", "nv_cpu_memory_total_bytes", 67108864000, true},
		{"absent", "nv_energy_consumption", 0, false},
	}
	for _, tt := range tests {
		got, found := sumMetric(text, tt.metric)
		if got != tt.want || found != tt.wantFound {
			t.Errorf("%s: %d, %v; want %d, %v", tt.name, got, found, tt.want, tt.wantFound)
		}
	}
}
