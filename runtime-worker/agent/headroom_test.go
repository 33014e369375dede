package agent

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/modelmesh/mesh/internal/placement"
)

// waitFor polls cond until it holds; the deadline only keeps a broken agent from hanging
// the test.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: never happened", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// TestHeadroomIsKeptAheadOfDemand: once less than the watermark is free, the idle model
// worth least is evicted in the background, drained first; the load that took the room
// evicted nothing itself, and the next one finds room too.
func TestHeadroomIsKeptAheadOfDemand(t *testing.T) {
	t.Parallel()
	fx := newFixtureWith(t, placement.HostMemory(10000), func(c *Config) { c.FreeWatermark = placement.HostMemory(3000) })
	router := fx.withRouter()
	ctx := context.Background()
	for _, s := range []Spec{fx.spec("a", 2500), fx.spec("b", 2500), fx.spec("c", 2000)} {
		if _, err := fx.agent.Load(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	// 3000 free: at the watermark. a is used most, b once, c never: c is worth least.
	fx.infer(t, "a")
	fx.infer(t, "a")
	fx.infer(t, "b")
	res, err := fx.agent.Load(ctx, fx.spec("d", 1000))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Evicted) != 0 {
		t.Errorf("d, which fitted, evicted %v", res.Evicted)
	}
	// 2000 free: c drains in the background, still serving, until the mesh lets it go.
	c := placement.ModelVersion{Name: "c", Version: "1"}
	if got := <-router.asked; got != c {
		t.Fatalf("drained %v ahead of demand, want c", got)
	}
	if got := fx.resident(t)["c"]; got != placement.StateDraining {
		t.Fatalf("c is %v, want draining", got)
	}
	fx.infer(t, "c")
	close(router.gate(c))
	waitFor(t, "c unloaded", func() bool { _, ok := fx.resident(t)["c"]; return !ok })
	if got := testutil.ToFloat64(fx.agent.metrics.headroomEvictions); got != 1 {
		t.Errorf("headroom evictions %v, want 1", got)
	}
	if got := testutil.ToFloat64(fx.agent.metrics.evictions); got != 1 {
		t.Errorf("evictions %v, want 1", got)
	}
	if got := fx.resident(t); len(got) != 3 {
		t.Errorf("resident %v, want a, b and d: the watermark is met", got)
	}
}

// TestHeadroomSparesRecentPinnedAndBusyModels: the watermark never takes a model the rules
// keep (pinned, in use, just handed out), even when that leaves the worker short of it.
func TestHeadroomSparesRecentPinnedAndBusyModels(t *testing.T) {
	t.Parallel()
	fx := newFixtureWith(t, placement.HostMemory(10000), func(c *Config) {
		c.FreeWatermark = placement.HostMemory(5000)
		c.MinIdle = time.Hour // a Load's hand-out protects until its request comes
	})
	ctx := context.Background()
	pinned := fx.spec("a", 3000)
	pinned.Pinned = true
	for _, s := range []Spec{pinned, fx.spec("b", 3000), fx.spec("c", 3000)} {
		if _, err := fx.agent.Load(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	_, _, release, err := fx.agent.Acquire(placement.ModelVersion{Name: "b"}) // b busy
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	// c was handed out by its Load and no request came: it may be on its way.
	fx.agent.squeezed()
	time.Sleep(50 * time.Millisecond) // the headroom loop runs; nothing may go
	for n, want := range map[string]placement.State{"a": placement.StateReady, "b": placement.StateReady, "c": placement.StateReady} {
		if got := fx.resident(t)[n]; got != want {
			t.Errorf("%s is %v, want %v", n, got, want)
		}
	}
}

// TestALoadThatFitsDoesNotWaitForAnotherLoadsDrain: while one load waits for its victim to
// leave the gateway's routes, a load that fits in what is free (and not promised to the
// first) goes ahead.
func TestALoadThatFitsDoesNotWaitForAnotherLoadsDrain(t *testing.T) {
	t.Parallel()
	fx := newFixture(t, 4000)
	router := fx.withRouter()
	ctx := context.Background()
	for _, n := range []string{"a", "b"} {
		if _, err := fx.agent.Load(ctx, fx.spec(n, 1000)); err != nil {
			t.Fatal(err)
		}
	}
	fx.infer(t, "b") // a goes first
	big := make(chan error, 1)
	go func() {
		_, err := fx.agent.Load(ctx, fx.spec("c", 2500))
		big <- err
	}()
	a := placement.ModelVersion{Name: "a", Version: "1"}
	if got := <-router.asked; got != a {
		t.Fatalf("drained %v, want a", got)
	}
	// 2000 free now, 500 of it not promised to c: d (500) loads while a still drains.
	if _, err := fx.agent.Load(ctx, fx.spec("d", 500)); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-big:
		t.Fatalf("c loaded (%v) before its victim left the routes", err)
	default:
	}
	close(router.gate(a))
	if err := <-big; err != nil {
		t.Fatal(err)
	}
	if got := fx.resident(t)["c"]; got != placement.StateReady {
		t.Fatalf("c is %v, want ready", got)
	}
}

// TestDrainUnloadsOnceUnroutedWithoutGrace: a drained model goes as soon as the mesh stops
// routing it and nothing is in flight; Config.DrainGrace is for shutdown only.
func TestDrainUnloadsOnceUnroutedWithoutGrace(t *testing.T) {
	t.Parallel()
	fx := newFixtureWith(t, placement.HostMemory(10000), func(c *Config) { c.DrainGrace = time.Hour })
	router := fx.withRouter()
	ctx := context.Background()
	if _, err := fx.agent.Load(ctx, fx.spec("a", 0)); err != nil {
		t.Fatal(err)
	}
	a := placement.ModelVersion{Name: "a", Version: "1"}
	drained := make(chan error, 1)
	go func() { drained <- fx.agent.Drain(ctx, a) }()
	<-router.asked
	close(router.gate(a))
	if err := <-drained; err != nil { // an hour's grace would hold it here
		t.Fatal(err)
	}
	if got := fx.resident(t); len(got) != 0 {
		t.Fatalf("resident after the drain: %v", got)
	}
}

// countingRouter answers at once that nothing is routed, and counts the questions.
type countingRouter struct{ asked chan placement.ModelVersion }

func (c countingRouter) WaitUnrouted(context.Context, placement.ModelVersion) error {
	c.asked <- placement.ModelVersion{}
	return nil
}

// TestUnroutedIsBelievedOnlyOnceARouteWouldShow: a replica found unrouted right after it
// turned ready is asked about again after Config.RouteSettle (a control plane may be about
// to route it); one ready for longer is believed at once.
func TestUnroutedIsBelievedOnlyOnceARouteWouldShow(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		age  time.Duration // how long the replica has been ready when drained
		want int           // questions asked
	}{
		{"just ready", 0, 2},
		{"ready for longer than the settle time", time.Minute, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fx := newFixtureWith(t, placement.HostMemory(10000), func(c *Config) { c.RouteSettle = 20 * time.Millisecond })
			router := countingRouter{asked: make(chan placement.ModelVersion, 10)}
			fx.agent.router = router
			fx.agent.cfg.DrainTimeout = 10 * time.Second
			ctx := context.Background()
			if _, err := fx.agent.Load(ctx, fx.spec("a", 0)); err != nil {
				t.Fatal(err)
			}
			fx.mu.Lock()
			*fx.clock = fx.clock.Add(tt.age)
			fx.mu.Unlock()
			if err := fx.agent.Drain(ctx, placement.ModelVersion{Name: "a", Version: "1"}); err != nil {
				t.Fatal(err)
			}
			if got := len(router.asked); got != tt.want {
				t.Errorf("asked %d times, want %d", got, tt.want)
			}
		})
	}
}

func TestHandoutProtection(t *testing.T) {
	t.Parallel()
	t0 := time.Unix(1000, 0)
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	const limit = time.Second
	tests := []struct {
		name string
		give handout
		now  time.Time
		want bool
	}{
		{"no hand-out", handout{}, ms(0), false},
		{"handed out, nothing arrived yet", handout{at: t0}, ms(999), true},
		{"handed out, nothing arrived within the limit", handout{at: t0}, ms(1000), false},
		{"arrived after 2 ms: protected 10 ms more at least", handout{at: t0, arrived: ms(2)}, ms(11), true},
		{"arrived after 2 ms: free after 10 ms", handout{at: t0, arrived: ms(2)}, ms(12), false},
		{"arrived after 20 ms: four times that more", handout{at: t0, arrived: ms(20)}, ms(99), true},
		{"arrived after 20 ms: free after 80 ms", handout{at: t0, arrived: ms(20)}, ms(100), false},
		{"never beyond the limit", handout{at: t0, arrived: ms(900)}, ms(1000), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := tt.give.protects(tt.now, limit); got != tt.want {
				t.Errorf("protects = %v, want %v", got, tt.want)
			}
		})
	}
	h := handout{at: t0}.arrive(ms(5)).arrive(ms(7))
	if !h.arrived.Equal(ms(5)) {
		t.Errorf("arrived %v, want the first arrival", h.arrived)
	}
	if got := (handout{}).arrive(ms(5)); !got.arrived.IsZero() {
		t.Errorf("an arrival with no hand-out recorded: %v", got)
	}
}
