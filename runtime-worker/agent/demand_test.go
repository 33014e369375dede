package agent

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/runtime-worker/tensor"
)

func (fx *fixture) replica(t *testing.T, name string) Replica {
	t.Helper()
	replicas, _ := fx.agent.Snapshot()
	for _, r := range replicas {
		if r.Model.Name == name {
			return r
		}
	}
	t.Fatalf("%s is not resident", name)
	return Replica{}
}

// TestExtraReplicaEvictsNothing: an extra copy loads only into memory free with the
// watermark kept; where that is short it is refused at once, and every resident model stays.
func TestExtraReplicaEvictsNothing(t *testing.T) {
	t.Parallel()
	fx := newFixtureWith(t, placement.HostMemory(10000), func(c *Config) { c.FreeWatermark = placement.HostMemory(2000) })
	ctx := context.Background()
	for _, s := range []Spec{fx.spec("a", 3000), fx.spec("b", 3000)} {
		if _, err := fx.agent.Load(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	extra := fx.spec("c", 3000) // 4000 free: 3000 would leave less than the watermark
	extra.Extra = true
	_, err := fx.agent.Load(ctx, extra)
	if !errors.Is(err, ErrNoCapacity) || !strings.Contains(err.Error(), "evicts nothing") {
		t.Fatalf("extra load into too little free room: %v, want ErrNoCapacity saying it evicts nothing", err)
	}
	if got := fx.resident(t); len(got) != 2 || fx.backend.loadCount("c") != 0 {
		t.Fatalf("after the refused extra load: resident %v, runtime loads of c %d", got, fx.backend.loadCount("c"))
	}
	extra = fx.spec("c", 2000)
	extra.Extra = true
	res, err := fx.agent.Load(ctx, extra)
	if err != nil || len(res.Evicted) != 0 || !res.Replica.Extra {
		t.Fatalf("extra load that fits with the watermark kept: %+v, %v", res, err)
	}
	// A load without Extra makes the copy an ordinary replica.
	if res, err = fx.agent.Load(ctx, fx.spec("c", 2000)); err != nil || res.Replica.Extra || res.Loaded {
		t.Fatalf("ordinary load of the extra copy: %+v, %v", res, err)
	}
}

// TestExtraReplicaGoesFirstUnderPressure: a load that needs room evicts the extra copy,
// busy, before an idle ordinary model, and the copy drains (its request finishes) first.
func TestExtraReplicaGoesFirstUnderPressure(t *testing.T) {
	t.Parallel()
	fx := newFixture(t, 3000)
	ctx := context.Background()
	if _, err := fx.agent.Load(ctx, fx.spec("a", 1000)); err != nil {
		t.Fatal(err)
	}
	extra := fx.spec("b", 1000)
	extra.Extra = true
	if _, err := fx.agent.Load(ctx, extra); err != nil {
		t.Fatal(err)
	}
	fx.infer(t, "b")
	fx.infer(t, "b") // worth more than a by GDSF, were it not extra
	_, _, release, err := fx.agent.Acquire(placement.ModelVersion{Name: "b"})
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		res LoadResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := fx.agent.Load(ctx, fx.spec("c", 2000))
		done <- result{res, err}
	}()
	waitFor(t, "b draining", func() bool { return fx.resident(t)["b"] == placement.StateDraining })
	select {
	case r := <-done:
		t.Fatalf("the load finished while the evicted copy still had a request: %+v", r)
	case <-time.After(20 * time.Millisecond):
	}
	release()
	r := <-done
	if r.err != nil || len(r.res.Evicted) != 1 || r.res.Evicted[0].Name != "b" {
		t.Fatalf("load needing room: evicted %v, %v; want the extra copy b", r.res.Evicted, r.err)
	}
	if got := fx.resident(t); got["a"] != placement.StateReady {
		t.Fatalf("the idle ordinary model went: %v", got)
	}
}

// TestSlotsQueueAndShowInDemand: with Concurrency 1, a second request waits for the first,
// the replica's demand counts it queued, and a request whose deadline ends in the queue
// fails without running.
func TestSlotsQueueAndShowInDemand(t *testing.T) {
	t.Parallel()
	fx := newFixtureWith(t, placement.HostMemory(10000), func(c *Config) { c.Concurrency = 1; c.DemandWindow = time.Millisecond })
	fx.backend.block = make(chan struct{})
	ctx := context.Background()
	if _, err := fx.agent.Load(ctx, fx.spec("a", 1000)); err != nil {
		t.Fatal(err)
	}
	req := func() *tensor.Request {
		return &tensor.Request{Model: placement.ModelVersion{Name: "a"},
			Inputs: []tensor.Tensor{{Name: "x", Datatype: tensor.FP32, Shape: []int64{1}, Data: []float32{1}}}}
	}
	errs := make(chan error, 2)
	for range 2 {
		go func() { _, err := fx.agent.Infer(ctx, req()); errs <- err }()
	}
	// The fixture's clock moves 1 ms per reading: with a 1 ms window the averages follow the
	// counts within a few readings.
	waitFor(t, "one running, one queued", func() bool {
		d := fx.replica(t, "a").Demand
		return d.Queued > 0.9 && d.InFlight > 1.9
	})
	tctx, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	defer cancel()
	if _, err := fx.agent.Infer(tctx, req()); !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "slots") {
		t.Fatalf("request whose deadline ended in the queue: %v", err)
	}
	close(fx.backend.block)
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "queue empty", func() bool { d := fx.replica(t, "a").Demand; return d.Queued < 0.1 && d.InFlight < 0.1 })
}

// TestLoadWaitsForLoadsUnderWay: a load that fits only once other loads end (their replicas
// evictable then) waits for them instead of failing at once; an extra replica loading counts.
func TestLoadWaitsForLoadsUnderWay(t *testing.T) {
	t.Parallel()
	fx := newFixture(t, 2500)
	fx.backend.gate = make(chan struct{})
	ctx := context.Background()
	extra := fx.spec("b", 1000)
	extra.Extra = true
	errs := make(chan error, 2)
	for _, s := range []Spec{fx.spec("a", 1000), extra} {
		go func() { _, err := fx.agent.Load(ctx, s); errs <- err }()
	}
	waitFor(t, "both reserved", func() bool {
		_, used := fx.agent.Snapshot()
		return used.Host == 2000
	})
	done := make(chan error, 1)
	go func() { _, err := fx.agent.Load(ctx, fx.spec("c", 1000)); done <- err }()
	select {
	case err := <-done:
		t.Fatalf("the load that fits once the others end returned at once: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(fx.backend.gate)
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		t.Fatalf("the waiting load: %v", err)
	}
	// Which of a and b went depends on which was ready first when c chose.
	if got := fx.resident(t); got["c"] != placement.StateReady || len(got) != 2 {
		t.Fatalf("resident %v, want c ready and one of a and b evicted for it", got)
	}
}
