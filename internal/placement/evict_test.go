package placement

import (
	"math"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

const mib = 1 << 20

// gdsf is a ready, idle candidate of size MiB with the policy's inputs.
func gdsf(name string, size float64, requests float64, load time.Duration, clock float64, lastUsed int) Candidate {
	return Candidate{Model: ModelVersion{Name: name, Version: "1"}, State: StateReady, Memory: HostMemory(int64(size * mib)),
		Requests: requests, LoadTime: load, Clock: clock, LastUsed: time.Unix(int64(1000+lastUsed), 0)}
}

func names(cs []Candidate) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Model.Name)
	}
	return out
}

func TestPriority(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		give Candidate
		want float64
	}{
		{"clock plus requests times seconds per MiB", gdsf("a", 2, 10, 200*time.Millisecond, 3, 0), 3 + 10*0.2/2},
		{"no requests: the clock", gdsf("a", 2, 0, time.Second, 7, 0), 7},
		{"a load that measured nothing counts MinLoadCost", gdsf("a", 1, 1, 0, 0, 0), MinLoadCost.Seconds()},
		{"every dimension counts toward the size", Candidate{Memory: Memory{Host: mib, GPU: []int64{0, 3 * mib}}, Requests: 4, LoadTime: time.Second}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := tt.give.Priority(); math.Abs(got-tt.want) > 1e-12 {
				t.Errorf("Priority() = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestChooseEvictionsCostAware(t *testing.T) {
	t.Parallel()
	const ms = time.Millisecond
	tests := []struct {
		name   string
		give   []Candidate
		need   Memory
		want   []string
		wantOK bool
	}{
		{"frequency beats recency: the model used once goes, though used last",
			[]Candidate{gdsf("often", 1, 20, 10*ms, 0, 1), gdsf("once", 1, 1, 10*ms, 0, 9)}, HostMemory(mib), []string{"once"}, true},
		{"size: of two used alike, the larger goes",
			[]Candidate{gdsf("small", 1, 5, 10*ms, 0, 1), gdsf("large", 8, 5, 10*ms, 0, 9)}, HostMemory(mib), []string{"large"}, true},
		{"load cost: of two used alike, the cheaper to reload goes",
			[]Candidate{gdsf("slow", 1, 5, time.Second, 0, 1), gdsf("fast", 1, 5, 10*ms, 0, 9)}, HostMemory(mib), []string{"fast"}, true},
		{"the clock: a model last used before the clock rose goes before one used since, whatever it once had",
			[]Candidate{gdsf("old-hot", 1, 100, 10*ms, 0, 1), gdsf("new", 1, 1, 10*ms, 5, 9)}, HostMemory(mib), []string{"old-hot"}, true},
		{"equal priorities: least recently used, then id",
			[]Candidate{gdsf("b", 1, 0, 0, 0, 5), gdsf("c", 1, 0, 0, 0, 1), gdsf("a", 1, 0, 0, 0, 5)}, HostMemory(2 * mib), []string{"c", "a"}, true},
		{"in priority order until need is paid",
			[]Candidate{gdsf("p3", 1, 3, 10*ms, 0, 0), gdsf("p1", 1, 1, 10*ms, 0, 0), gdsf("p2", 1, 2, 10*ms, 0, 0)}, HostMemory(mib + 1), []string{"p1", "p2"}, true},
		{"all or nothing", []Candidate{gdsf("a", 1, 1, 10*ms, 0, 0), {Model: ModelVersion{Name: "busy", Version: "1"}, State: StateReady,
			Memory: HostMemory(mib), InFlight: 1}}, HostMemory(2 * mib), nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, ok := ChooseEvictions(tt.give, tt.need)
			if diff := cmp.Diff(tt.want, names(got)); diff != "" || ok != tt.wantOK {
				t.Errorf("ChooseEvictions ok=%v (want %v), victims (-want +got):\n%s", ok, tt.wantOK, diff)
			}
		})
	}
}

func TestChooseHeadroomTakesWhatIsIdle(t *testing.T) {
	t.Parallel()
	cands := []Candidate{
		gdsf("a", 1, 1, time.Millisecond, 0, 0),
		gdsf("b", 1, 2, time.Millisecond, 0, 0),
		func() Candidate { c := gdsf("recent", 4, 9, time.Millisecond, 0, 0); c.Recent = true; return c }(), // worth more than a and b
		{Model: ModelVersion{Name: "pinned", Version: "1"}, State: StateReady, Memory: HostMemory(4 * mib), Pinned: true},
	}
	tests := []struct {
		name string
		need Memory
		want []string
	}{
		{"nothing short", Memory{}, nil},
		{"short by less than one: the lowest", HostMemory(1), []string{"a"}},
		{"short by more than the idle hold: every idle one, in order", HostMemory(8 * mib), []string{"a", "b"}},
		{"a shortfall on a GPU is not paid by host memory", Memory{GPU: []int64{mib}}, nil},
	}
	lowRecent := append([]Candidate{func() Candidate { c := gdsf("new", 1, 0, 0, 0, 9); c.Recent = true; return c }()}, cands...)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if diff := cmp.Diff(tt.want, names(ChooseHeadroom(cands, tt.need))); diff != "" {
				t.Errorf("ChooseHeadroom (-want +got):\n%s", diff)
			}
		})
	}
	// A recent replica first in the order is waited for: nothing worth more goes before it.
	if got := ChooseHeadroom(lowRecent, HostMemory(8*mib)); got != nil {
		t.Errorf("ChooseHeadroom past a recent replica worth least: %v", names(got))
	}
}

func TestWaitsForRecent(t *testing.T) {
	t.Parallel()
	recent := func(c Candidate) Candidate { c.Recent = true; return c }
	tests := []struct {
		name string
		give []Candidate
		need Memory
		want bool
	}{
		{"nothing recent", []Candidate{gdsf("a", 1, 1, time.Millisecond, 0, 0)}, HostMemory(mib), false},
		{"the one to go is recent", []Candidate{recent(gdsf("new", 1, 0, 0, 0, 9)), gdsf("used", 1, 5, time.Millisecond, 0, 0)}, HostMemory(mib), true},
		{"a recent one worth more is not waited for", []Candidate{recent(gdsf("hot", 1, 50, time.Millisecond, 0, 9)), gdsf("cold", 1, 1, time.Millisecond, 0, 0)}, HostMemory(mib), false},
		{"busy is not recent: not waited for", []Candidate{{Model: ModelVersion{Name: "busy", Version: "1"}, State: StateReady, Memory: HostMemory(mib), InFlight: 1}, gdsf("b", 1, 5, time.Millisecond, 0, 0)}, HostMemory(mib), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := WaitsForRecent(tt.give, tt.need); got != tt.want {
				t.Errorf("WaitsForRecent = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestRaiseClock(t *testing.T) {
	t.Parallel()
	victims := []Candidate{gdsf("a", 1, 1, time.Second, 2, 0), gdsf("b", 2, 1, time.Second, 2, 0)}
	if got := RaiseClock(0, victims); got != 3 {
		t.Errorf("RaiseClock(0) = %v, want the highest victim's priority 3", got)
	}
	if got := RaiseClock(10, victims); got != 10 {
		t.Errorf("RaiseClock(10) = %v, want 10: the clock never falls", got)
	}
	if got := RaiseClock(4, nil); got != 4 {
		t.Errorf("RaiseClock without victims = %v, want 4", got)
	}
}

func TestFrequencyAges(t *testing.T) {
	t.Parallel()
	t0 := time.Unix(1000, 0)
	const h = time.Minute
	tests := []struct {
		name     string
		give     Frequency
		at       time.Time
		halfLife time.Duration
		want     float64
	}{
		{"no uses", Frequency{}, t0, h, 0},
		{"at its last use", Frequency{Count: 4, Last: t0}, t0, h, 4},
		{"one half-life later", Frequency{Count: 4, Last: t0}, t0.Add(h), h, 2},
		{"two half-lives later", Frequency{Count: 4, Last: t0}, t0.Add(2 * h), h, 1},
		{"no half-life: never aged", Frequency{Count: 4, Last: t0}, t0.Add(100 * h), 0, 4},
		{"asked before its last use: in full", Frequency{Count: 4, Last: t0}, t0.Add(-h), h, 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := tt.give.At(tt.at, tt.halfLife); math.Abs(got-tt.want) > 1e-9 {
				t.Errorf("At = %v, want %v", got, tt.want)
			}
		})
	}
	f := Frequency{}.Add(t0, h).Add(t0, h).Add(t0.Add(h), h) // two uses, then one a half-life later
	if got := f.At(t0.Add(h), h); math.Abs(got-2) > 1e-9 {
		t.Errorf("two uses aged one half-life, plus one: %v, want 2", got)
	}
}

func TestExtraReplicasGoFirstEvenBusy(t *testing.T) {
	t.Parallel()
	cold := gdsf("cold", 1, 0, 0, 0, 0) // idle, worth least by GDSF
	extra := gdsf("extra", 1, 50, time.Second, 9, 9)
	extra.Extra, extra.InFlight, extra.Recent = true, 3, true
	got, ok := ChooseEvictions([]Candidate{cold, extra}, HostMemory(mib))
	if !ok || !cmp.Equal(names(got), []string{"extra"}) {
		t.Fatalf("chose %v (%v), want the busy extra copy before the idle model", names(got), ok)
	}
	busy := gdsf("busy", 1, 0, 0, 0, 0)
	busy.InFlight = 1
	if busy.Evictable() {
		t.Error("a busy replica that is not extra is evictable")
	}
	extra.Pinned = true
	if extra.Evictable() {
		t.Error("a pinned extra replica is evictable")
	}
}
