package placement

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestValidateID(t *testing.T) {
	t.Parallel()
	tests := []struct {
		give string
		ok   bool
	}{
		{"iris", true},
		{"Iris-v2.onnx_1", true},
		{"a", true},
		{"7", true},
		{strings.Repeat("a", 253), true},
		{strings.Repeat("a", 254), false},
		{"", false},
		{"-iris", false},
		{"iris-", false},
		{".hidden", false},
		{"a..b", false},
		{"a/b", false},
		{"a%2fb", false},
		{"a b", false},
		{"a:b", false},
		{"ünï", false},
		{"a\x00b", false},
	}
	for _, tt := range tests {
		t.Run(tt.give, func(t *testing.T) {
			t.Parallel()
			err := ValidateID(tt.give)
			if (err == nil) != tt.ok {
				t.Fatalf("ValidateID(%q) = %v, want ok=%v", tt.give, err, tt.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalidID) {
				t.Fatalf("error %v does not wrap ErrInvalidID", err)
			}
		})
	}
}

func TestParseModelVersionRoundTrip(t *testing.T) {
	t.Parallel()
	m := ModelVersion{Name: "digits", Version: "12"}
	got, err := ParseModelVersion(m.String())
	if err != nil || got != m {
		t.Fatalf("ParseModelVersion(%q) = %v, %v", m.String(), got, err)
	}
	if _, err := ParseModelVersion("digits"); err == nil {
		t.Fatal("a string without a version parsed")
	}
}

func TestNewerVersion(t *testing.T) {
	t.Parallel()
	tests := []struct {
		a, b string
		want bool
	}{
		{"10", "9", true},
		{"9", "10", false},
		{"2", "2", false},
		{"b", "a", true},
		{"1", "canary", true},
		{"canary", "1", false},
	}
	for _, tt := range tests {
		if got := NewerVersion(tt.a, tt.b); got != tt.want {
			t.Errorf("NewerVersion(%q, %q) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
	}
}

func TestChooseEvictions(t *testing.T) {
	t.Parallel()
	t0 := time.Unix(1000, 0)
	mv := func(n string) ModelVersion { return ModelVersion{Name: n, Version: "1"} }
	idle := func(n string, bytes int64, age int) Candidate {
		return Candidate{Model: mv(n), State: StateReady, Memory: HostMemory(bytes), LastUsed: t0.Add(-time.Duration(age) * time.Second)}
	}
	rep := func(n string, m Memory, age int) Candidate {
		return Candidate{Model: ModelVersion{Name: n, Version: "1"}, State: StateReady, Memory: m, LastUsed: t0.Add(-time.Duration(age) * time.Second)}
	}
	onGPU := func(d int, gpu, host int64) Memory { return Footprint{Host: host, GPU: gpu}.On(d) }
	tests := []struct {
		name   string
		give   []Candidate
		need   Memory
		want   []string
		wantOK bool
	}{
		{"nothing needed", []Candidate{idle("a", 10, 1)}, Memory{}, nil, true},
		{"least recently used first", []Candidate{idle("new", 10, 1), idle("old", 10, 100), idle("mid", 10, 50)}, HostMemory(15), []string{"old", "mid"}, true},
		{"stops once enough is freed", []Candidate{idle("a", 100, 3), idle("b", 100, 2)}, HostMemory(50), []string{"a"}, true},
		{"skips busy, pinned, recent, loading and draining", []Candidate{
			{Model: mv("busy"), State: StateReady, Memory: HostMemory(50), InFlight: 1},
			{Model: mv("pinned"), State: StateReady, Memory: HostMemory(50), Pinned: true},
			{Model: mv("loading"), State: StateLoading, Memory: HostMemory(50)},
			{Model: mv("draining"), State: StateDraining, Memory: HostMemory(50)},
			{Model: mv("recent"), State: StateReady, Memory: HostMemory(50), Recent: true},
			idle("free", 50, 1),
		}, HostMemory(40), []string{"free"}, true},
		{"not enough evictable memory changes nothing", []Candidate{
			{Model: mv("pinned"), State: StateReady, Memory: HostMemory(100), Pinned: true}, idle("small", 10, 9),
		}, HostMemory(50), nil, false},
		{"ties broken by id", []Candidate{idle("b", 10, 5), idle("a", 10, 5)}, HostMemory(5), []string{"a"}, true},
		{"a full GPU evicts only models on that GPU, even younger ones",
			[]Candidate{rep("gpu0-old", onGPU(0, 100, 1), 90), rep("host-old", HostMemory(500), 80), rep("gpu1", onGPU(1, 100, 1), 70), rep("gpu0-new", onGPU(0, 100, 1), 10)},
			Memory{GPU: []int64{0, 150}}, nil, false},
		{"gpu1 short by 80: its one model goes",
			[]Candidate{rep("gpu0", onGPU(0, 100, 1), 90), rep("host", HostMemory(500), 80), rep("gpu1", onGPU(1, 100, 1), 10)},
			Memory{GPU: []int64{0, 80}}, []string{"gpu1"}, true},
		{"host and a GPU short together: least recently used that still help, until both are paid",
			[]Candidate{rep("gpu0-a", onGPU(0, 60, 10), 90), rep("host", HostMemory(500), 80), rep("gpu0-b", onGPU(0, 60, 10), 70), rep("gpu1", onGPU(1, 100, 400), 95)},
			Memory{Host: 400, GPU: []int64{100}}, []string{"gpu1", "gpu0-a", "gpu0-b"}, true},
		{"a shortfall elsewhere is not paid by host memory",
			[]Candidate{rep("host", HostMemory(1<<30), 90)}, Memory{GPU: []int64{1}}, nil, false},
		{"negative dimensions are room, not need",
			[]Candidate{rep("host", HostMemory(10), 90)}, Memory{Host: 5, GPU: []int64{-100}}, []string{"host"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, ok := ChooseEvictions(tt.give, tt.need)
			var names []string
			for _, c := range got {
				names = append(names, c.Model.Name)
			}
			if ok != tt.wantOK {
				t.Fatalf("ok = %v, want %v", ok, tt.wantOK)
			}
			if diff := cmp.Diff(tt.want, names); diff != "" {
				t.Fatalf("evictions (-want +got):\n%s", diff)
			}
			if ok && !Freed(got).Covers(tt.need) {
				t.Fatalf("freed %s does not cover %s", Freed(got), tt.need)
			}
		})
	}
}

func TestMemoryArithmetic(t *testing.T) {
	t.Parallel()
	a := Memory{Host: 10, GPU: []int64{5, 7}}
	b := Memory{Host: 3, GPU: []int64{5}}
	if got, want := a.Plus(b), (Memory{Host: 13, GPU: []int64{10, 7}}); !cmp.Equal(got, want) {
		t.Errorf("Plus = %v, want %v", got, want)
	}
	if got, want := b.Minus(a), (Memory{Host: -7, GPU: []int64{0, -7}}); !cmp.Equal(got, want) {
		t.Errorf("Minus = %v, want %v", got, want)
	}
	if got := a.Minus(a); !got.IsZero() || got.GPU != nil {
		t.Errorf("a - a = %#v, want zero with no GPU entries", got)
	}
	if !b.Within(a) || a.Within(b) {
		t.Errorf("Within: %v in %v should hold, not the reverse", b, a)
	}
	if (Memory{GPU: []int64{0, 0, 1}}).Within(a) {
		t.Error("memory on a device the limit lacks must not fit")
	}
	if got, want := a.String(), "host=10 gpu0=5 gpu1=7"; got != want {
		t.Errorf("String = %q, want %q", got, want)
	}
	if got, want := (Memory{Host: 3, GPU: []int64{14, 0, 9}}).Footprint(), (Footprint{Host: 3, GPU: 14}); got != want {
		t.Errorf("Footprint = %+v, want %+v: the largest share of one GPU, not the sum", got, want)
	}
	if got, want := (Footprint{Host: 2, GPU: 8}).On(1), (Memory{Host: 2, GPU: []int64{0, 8}}); !cmp.Equal(got, want) {
		t.Errorf("On(1) = %v, want %v", got, want)
	}
	if got, want := (Footprint{Host: 2, GPU: 8}).On(-1), HostMemory(10); !cmp.Equal(got, want) {
		t.Errorf("On(-1) = %v, want %v: without a GPU everything is host memory", got, want)
	}
}

func TestPlace(t *testing.T) {
	t.Parallel()
	twoGPUs := Memory{Host: 100, GPU: []int64{50, 50}}
	tests := []struct {
		name                   string
		f                      Footprint
		capacity, used         Memory
		wantDevice             int
		wantFits, wantPossible bool
	}{
		{"host-only worker", Footprint{Host: 10, GPU: 5}, HostMemory(100), HostMemory(80), -1, true, true},
		{"host-only worker counts GPU bytes as host", Footprint{Host: 10, GPU: 15}, HostMemory(100), HostMemory(80), -1, false, true},
		{"most free device", Footprint{Host: 1, GPU: 20}, twoGPUs, Memory{GPU: []int64{40, 10}}, 1, true, true},
		{"lowest index on ties", Footprint{GPU: 20}, twoGPUs, Memory{}, 0, true, true},
		{"fits after evicting", Footprint{GPU: 45}, twoGPUs, Memory{GPU: []int64{10, 10}}, 0, false, true},
		{"larger than any device", Footprint{GPU: 60}, twoGPUs, Memory{}, 0, false, false},
		{"host memory short", Footprint{Host: 90, GPU: 1}, twoGPUs, HostMemory(20), 0, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d, fits, possible := Place(tt.f, tt.capacity, tt.used)
			if d != tt.wantDevice || fits != tt.wantFits || possible != tt.wantPossible {
				t.Fatalf("Place = %d, %v, %v; want %d, %v, %v", d, fits, possible, tt.wantDevice, tt.wantFits, tt.wantPossible)
			}
		})
	}
}
