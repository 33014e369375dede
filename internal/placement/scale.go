package placement

import (
	"math"
	"time"
)

// ScalePolicy says how a model version's replica count follows its measured demand
// (docs/architecture.md, "Replicas that follow demand"). The count moves one replica at a
// time, and only after the want has held for UpAfter or DownAfter: a burst shorter than
// that, or a lull, changes nothing.
type ScalePolicy struct {
	// TargetInFlight is the mean number of requests in flight one replica should carry: a
	// version whose ready replicas together carry more than TargetInFlight × their number
	// wants another.
	TargetInFlight float64
	// MaxQueueWait: a replica whose requests wait longer than this for a slot on their
	// worker wants another replica, whatever the in-flight count says. Zero: not used.
	MaxQueueWait time.Duration
	// DownFraction is the hysteresis: a replica goes only when the ones left would carry at
	// most DownFraction × TargetInFlight each (with 0.5, a version scaled up at 2 × target
	// on one replica scales down below 0.5 × target on one).
	DownFraction float64
	// UpAfter and DownAfter are how long the want must hold before a replica is added or
	// removed; each step starts the wait again.
	UpAfter, DownAfter time.Duration
}

// Want is the replica count a version's demand asks for, within [max(lo, 1), max(hi, lo)]:
// demands are those of its ready replicas, current counts them and the ones loading (a
// replica on its way is counted, so a want is not asked twice).
func (p ScalePolicy) Want(demands []Demand, current, lo, hi int) int {
	lo = max(lo, 1)
	hi = max(hi, lo)
	total := 0.0
	up := 0
	for _, d := range demands {
		total += d.InFlight
		if p.MaxQueueWait > 0 && d.QueueWait() > p.MaxQueueWait {
			up = current + 1
		}
	}
	want := current
	if p.TargetInFlight > 0 {
		up = max(up, replicasFor(total, p.TargetInFlight))
		switch {
		case up > current:
			want = up
		case p.DownFraction > 0 && replicasFor(total, p.TargetInFlight*p.DownFraction) < current:
			want = replicasFor(total, p.TargetInFlight*p.DownFraction)
		}
	} else if up > current {
		want = up
	}
	return min(max(want, lo), hi)
}

// ScaleState is the hysteresis of one model version: which way its want has pointed, and
// since when. The zero value points nowhere.
type ScaleState struct {
	Direction int
	Since     time.Time
}

// Step turns a want into a change of at most one replica at now: +1 once want > current has
// held for UpAfter, -1 once want < current has held for DownAfter, else 0. It returns the
// state to keep for the next step.
func (p ScalePolicy) Step(st ScaleState, now time.Time, current, want int) (ScaleState, int) {
	dir := 0
	switch {
	case want > current:
		dir = 1
	case want < current:
		dir = -1
	}
	if dir == 0 {
		return ScaleState{}, 0
	}
	if st.Direction != dir {
		st = ScaleState{Direction: dir, Since: now}
	}
	wait := p.UpAfter
	if dir < 0 {
		wait = p.DownAfter
	}
	if now.Sub(st.Since) < wait {
		return st, 0
	}
	return ScaleState{Direction: dir, Since: now}, dir
}

// replicasFor is how many replicas carry total at per each (rounded up; per > 0).
func replicasFor(total, per float64) int {
	return int(math.Ceil(total/per - 1e-9))
}
