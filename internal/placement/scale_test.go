package placement

import (
	"math"
	"testing"
	"time"
)

func TestLevelAveragesSteps(t *testing.T) {
	t.Parallel()
	t0 := time.Unix(1000, 0)
	const window = 5 * time.Second
	var l Level
	if got := l.Mean(t0, window); got != 0 {
		t.Fatalf("zero level reads %v, want 0", got)
	}
	l = l.Step(t0, 4, window) // 4 in flight from t0 on
	for _, tt := range []struct {
		after time.Duration
		want  float64
	}{{0, 0}, {window, 4 * (1 - math.Exp(-1))}, {10 * window, 4 * (1 - math.Exp(-10))}} {
		if got := l.Mean(t0.Add(tt.after), window); math.Abs(got-tt.want) > 1e-9 {
			t.Errorf("4 in flight for %v: mean %v, want %v", tt.after, got, tt.want)
		}
	}
	l = l.Step(t0.Add(10*window), -4, window) // back to none: the average decays from ~4
	if got := l.Mean(t0.Add(11*window), window); math.Abs(got-4*(1-math.Exp(-10))*math.Exp(-1)) > 1e-9 {
		t.Errorf("one window after the load ended: mean %v", got)
	}
	if got := l.Mean(t0.Add(11*window), 0); got != 0 {
		t.Errorf("no window: mean %v, want the count now (0)", got)
	}
}

func TestRateOfSteadyArrivals(t *testing.T) {
	t.Parallel()
	const window = 5 * time.Second
	t0 := time.Unix(1000, 0)
	var f Frequency
	for i := range 2000 { // 40 per second for 50 s: ten windows
		f = f.Add(t0.Add(time.Duration(i)*25*time.Millisecond), RateHalfLife(window))
	}
	if got := Rate(f, t0.Add(50*time.Second), window); math.Abs(got-40) > 1 {
		t.Errorf("rate of 40 requests per second read %v", got)
	}
	if got := (Demand{Queued: 2, Rate: 40}).QueueWait(); got != 50*time.Millisecond {
		t.Errorf("2 queued at 40/s: wait %v, want 50ms (Little's law)", got)
	}
	if got := (Demand{Queued: 2}).QueueWait(); got != 0 {
		t.Errorf("no arrivals: wait %v, want 0", got)
	}
}

func TestScalePolicyWant(t *testing.T) {
	t.Parallel()
	p := ScalePolicy{TargetInFlight: 2, MaxQueueWait: 100 * time.Millisecond, DownFraction: 0.5}
	in := func(fs ...float64) []Demand {
		out := make([]Demand, len(fs))
		for i, f := range fs {
			out[i] = Demand{InFlight: f, Rate: 10}
		}
		return out
	}
	tests := []struct {
		name            string
		demands         []Demand
		current, lo, hi int
		want            int
	}{
		{"one replica at target stays", in(2), 1, 1, 3, 1},
		{"one replica over target wants two", in(3.5), 1, 1, 3, 2},
		{"far over target wants enough at once", in(9), 1, 1, 8, 5},
		{"capped by maxReplicas", in(9), 1, 1, 3, 3},
		{"maxReplicas 1 never scales", in(9), 1, 1, 1, 1},
		{"a replica loading counts: no second ask", in(3.5), 2, 1, 3, 2},
		{"two replicas at target keep two", in(2, 2), 2, 1, 3, 2},
		{"inside the hysteresis band: keep two", in(1, 0.5), 2, 1, 3, 2},
		{"below the band: one goes", in(0.5, 0.4), 2, 1, 3, 1},
		{"idle: down to minReplicas, not below", in(0, 0, 0), 3, 2, 3, 2},
		{"never below one", in(0), 1, 0, 3, 1},
		{"queue wait over the bound asks for one more", []Demand{{InFlight: 1, Queued: 3, Rate: 10}}, 1, 1, 3, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := p.Want(tt.demands, tt.current, tt.lo, tt.hi); got != tt.want {
				t.Errorf("Want = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestScalePolicyStepWaits(t *testing.T) {
	t.Parallel()
	p := ScalePolicy{UpAfter: 4 * time.Second, DownAfter: 30 * time.Second}
	t0 := time.Unix(1000, 0)
	var st ScaleState
	var d int
	if st, d = p.Step(st, t0, 1, 2); d != 0 {
		t.Fatal("scaled up at the first ask")
	}
	if st, d = p.Step(st, t0.Add(3*time.Second), 1, 2); d != 0 {
		t.Fatal("scaled up before UpAfter")
	}
	if _, d = p.Step(st, t0.Add(2*time.Second), 1, 1); d != 0 {
		t.Fatal("a want met changed the count")
	}
	if st, d = p.Step(st, t0.Add(4*time.Second), 1, 2); d != 1 {
		t.Fatalf("after UpAfter: step %d, want +1", d)
	}
	if _, d = p.Step(st, t0.Add(5*time.Second), 2, 3); d != 0 {
		t.Fatal("a second replica at once: each step waits again")
	}
	// A lull shorter than DownAfter, interrupted, starts over.
	st = ScaleState{}
	st, _ = p.Step(st, t0, 2, 1)
	st, _ = p.Step(st, t0.Add(20*time.Second), 2, 2)
	st, d = p.Step(st, t0.Add(31*time.Second), 2, 1)
	if d != 0 {
		t.Fatal("scaled down though demand came back within DownAfter")
	}
	if _, d = p.Step(st, t0.Add(61*time.Second), 2, 1); d != -1 {
		t.Fatalf("after DownAfter of lull: step %d, want -1", d)
	}
}
