package agent

import "time"

// handout is a replica's last hand-out: a moment after which requests may be on their way
// to it that the worker has not seen. The mesh confirms a replica with a Load before it sends
// it a cold request (and the requests waiting for a load are sent when it ends); a runtime
// serving on its own port (Triton) reports uses the worker never sees. Requests through the
// worker are counted in flight once they arrive, and those the gateway routes here are
// waited for by the drain; a hand-out's are covered by this.
type handout struct {
	at time.Time
	// arrived is when the first request after it came through the worker; zero: none yet.
	arrived time.Time
}

const (
	// handoutSpread bounds how much later than the first the other requests of one hand-out
	// arrive, in multiples of the first one's way here: they were sent together (ext_proc
	// answers every request waiting for a load at once).
	handoutSpread = 4
	// minHandoutWait is the least a hand-out protects a replica once its first request came.
	minHandoutWait = 10 * time.Millisecond
)

// arrive records a request through the worker at time t.
func (h handout) arrive(t time.Time) handout {
	if !h.at.IsZero() && h.arrived.IsZero() {
		h.arrived = t
	}
	return h
}

// protects reports whether the replica must not be evicted at now: within limit of the
// hand-out, until its first request has come through the worker and handoutSpread times
// that request's way here (at least minHandoutWait) has passed since. A runtime's own use
// (no request through the worker) protects for the whole limit.
func (h handout) protects(now time.Time, limit time.Duration) bool {
	end := h.at.Add(limit)
	if !h.arrived.IsZero() {
		end = minTime(end, h.arrived.Add(max(minHandoutWait, handoutSpread*h.arrived.Sub(h.at))))
	}
	return now.Before(end)
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
