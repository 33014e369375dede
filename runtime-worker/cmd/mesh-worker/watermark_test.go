package main

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/modelmesh/mesh/internal/placement"
)

func TestFreeWatermark(t *testing.T) {
	t.Parallel()
	capacity := placement.Memory{Host: 1000, GPU: []int64{200, 400}}
	tests := []struct {
		give string
		want placement.Memory
		ok   bool
	}{
		{"10%", placement.Memory{Host: 100, GPU: []int64{20, 40}}, true},
		{"0.25", placement.Memory{Host: 250, GPU: []int64{50, 100}}, true},
		{"150", placement.Memory{Host: 150, GPU: []int64{100, 150}}, true}, // at most half of each budget
		{"1KiB", placement.Memory{Host: 500, GPU: []int64{100, 200}}, true},
		{"0", placement.Memory{GPU: []int64{0, 0}}, true},
		{"0%", placement.Memory{GPU: []int64{0, 0}}, true},
		{"60%", placement.Memory{}, false},
		{"0.9", placement.Memory{}, false},
		{"-5%", placement.Memory{}, false},
		{"lots", placement.Memory{}, false},
	}
	for _, tt := range tests {
		var w watermark
		err := w.Set(tt.give)
		if (err == nil) != tt.ok {
			t.Errorf("Set(%q): %v, want ok=%v", tt.give, err, tt.ok)
			continue
		}
		if !tt.ok {
			continue
		}
		if diff := cmp.Diff(tt.want, w.of(capacity)); diff != "" {
			t.Errorf("Set(%q).of (-want +got):\n%s", tt.give, diff)
		}
	}
	var def Config
	def.FreeWatermark = watermark{fraction: 0.1}
	if got := def.FreeWatermark.String(); got != "10%" {
		t.Errorf("default shows as %q, want 10%%", got)
	}
}
