package placement

import (
	"math"
	"time"
)

// Demand is what one replica is asked to serve, as its worker measures it: time-averaged
// over the worker's demand window (an exponential average with that time constant), so
// that a burst of a second moves it a little and a minute of load moves it fully. Workers
// publish it in their replica records; ext_proc's scaler reads it (Scale).
type Demand struct {
	// InFlight is the mean number of requests on the replica, running or waiting for a slot.
	InFlight float64 `json:"in_flight"`
	// Queued is the mean number of them waiting for a slot (the worker's per-replica
	// concurrency bound); zero on a runtime that does not queue in the worker.
	Queued float64 `json:"queued"`
	// Rate is the requests arriving per second.
	Rate float64 `json:"rate"`
}

// QueueWait is the mean time a request waits for a slot, by Little's law (Queued / Rate).
func (d Demand) QueueWait() time.Duration {
	if d.Rate <= 0 || d.Queued <= 0 {
		return 0
	}
	return time.Duration(d.Queued / d.Rate * float64(time.Second))
}

// Level is the exponential time average of a count that changes in steps (requests in
// flight, requests queued): the count weighs exp(-age/window) of the average after it held
// for age. The zero value is a count of 0 that has always been 0.
type Level struct {
	avg float64
	cur int
	at  time.Time
}

// Step changes the count by delta at time t.
func (l Level) Step(t time.Time, delta int, window time.Duration) Level {
	return Level{avg: l.Mean(t, window), cur: l.cur + delta, at: t}
}

// Mean is the average at time t; a window of 0 or less is no averaging (the count itself).
func (l Level) Mean(t time.Time, window time.Duration) float64 {
	age := t.Sub(l.at)
	if window <= 0 || l.at.IsZero() {
		return float64(l.cur)
	}
	if age <= 0 {
		return l.avg
	}
	w := math.Exp(-float64(age) / float64(window))
	return l.avg*w + float64(l.cur)*(1-w)
}

// Rate is the arrival rate per second that a Frequency aged with RateHalfLife(window) counts
// at t: its aged count over the window (for steady arrivals at r per second the aged count
// tends to r × window).
func Rate(f Frequency, t time.Time, window time.Duration) float64 {
	if window <= 0 {
		return 0
	}
	return f.At(t, RateHalfLife(window)) / window.Seconds()
}

// RateHalfLife is the half-life that ages a Frequency as an exponential average with time
// constant window: window × ln 2.
func RateHalfLife(window time.Duration) time.Duration {
	return time.Duration(float64(window) * math.Ln2)
}
