//go:build e2e

package e2e

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// openLoad sends one request every 1/rate seconds, each on its own goroutine, whatever the
// answers: an open loop, as clients that do not wait for each other send. Each request is
// recorded with its start and end and whether it was answered 200 with the right label.
type openLoad struct {
	stopped chan struct{}
	done    chan struct{}
	wg      sync.WaitGroup
	mu      sync.Mutex
	results []request
}

type request struct {
	start, end time.Time
	ok         bool
	failure    string
}

// steadyLoad starts an open loop of rate requests a second for model (iris-shaped answers:
// label 0 is right) through gateway.
func steadyLoad(gateway, model, body string, rate int) *openLoad {
	return steadyLoadChecked(gateway, model, body, rate, func(out map[string]any) error {
		if labelOf(out) != 0 {
			return fmt.Errorf("wrong answer %v", out)
		}
		return nil
	})
}

// steadyLoadChecked is steadyLoad with answers checked by check.
func steadyLoadChecked(gateway, model, body string, rate int, check func(map[string]any) error) *openLoad {
	l := &openLoad{stopped: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		tick := time.NewTicker(time.Second / time.Duration(rate))
		defer tick.Stop()
		for {
			select {
			case <-l.stopped:
				l.wg.Wait()
				return
			case <-tick.C:
			}
			l.wg.Go(func() {
				r := checkedRequest(gateway, model, body, check)
				l.mu.Lock()
				l.results = append(l.results, r)
				l.mu.Unlock()
			})
		}
	}()
	return l
}

// checkedRequest sends one request for model through gateway and records its outcome, the
// answer checked by check.
func checkedRequest(gateway, model, body string, check func(map[string]any) error) request {
	r := request{start: time.Now()}
	code, out, err := postInfer(gateway, model, body, nil)
	r.end = time.Now()
	switch {
	case err != nil:
		r.failure = err.Error()
	case code != 200:
		r.failure = fmt.Sprintf("%d %v", code, out)
	default:
		if err := check(out); err != nil {
			r.failure = err.Error()
		} else {
			r.ok = true
		}
	}
	return r
}

// sent is how many requests have been answered so far.
func (l *openLoad) sent() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.results)
}

// await waits until n more requests have been answered, whatever the answers: the load
// went on that long after whatever just happened.
func (l *openLoad) await(t testing.TB, n int) {
	t.Helper()
	want := l.sent() + n
	eventually(t, 30*time.Second, fmt.Sprintf("%d more requests answered", n), func() bool { return l.sent() >= want })
}

// loadReport sorts a load's requests around a fault at one instant.
type loadReport struct {
	total, before, after int
	// failedBefore are requests that failed before the fault (none should); failedInFlight
	// those sent before it that failed after (they may: they were on the worker that died);
	// failedAfter those sent after it.
	failedBefore, failedInFlight, failedAfter int
	firstFailure                              string
	// firstAfter is when the first request sent after the fault was answered, from the
	// fault; slowestAfter the longest such request.
	firstAfter, slowestAfter time.Duration
}

// stop ends the load, waits for every request and reports them around fault.
func (l *openLoad) stop(fault time.Time) loadReport {
	close(l.stopped)
	<-l.done
	var r loadReport
	for _, q := range l.results {
		r.total++
		if q.start.Before(fault) {
			r.before++
			switch {
			case !q.ok && q.end.After(fault):
				r.failedInFlight++
			case !q.ok:
				r.failedBefore++
				r.firstFailure = q.failure
			}
			continue
		}
		r.after++
		if !q.ok {
			r.failedAfter++
			if r.firstFailure == "" {
				r.firstFailure = fmt.Sprintf("sent %s after the fault, failed after %s: %s", q.start.Sub(fault), q.end.Sub(q.start), q.failure)
			}
			continue
		}
		if d := q.end.Sub(fault); r.firstAfter == 0 || d < r.firstAfter {
			r.firstAfter = d
		}
		r.slowestAfter = max(r.slowestAfter, q.end.Sub(q.start))
	}
	return r
}
