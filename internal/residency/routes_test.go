package residency

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/internal/redistest"
)

func TestWaitUnroutedAsksEveryLiveControlPlane(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()
	ctx := context.Background()
	keys := Keys{Prefix: "r"}
	iris := placement.ModelVersion{Name: "iris", Version: "1"}
	routes := NewRoutes(rdb, keys, "w1")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	// unrouted reports whether WaitUnrouted returns within a short wait.
	unrouted := func() bool {
		t.Helper()
		wctx, cancel := context.WithTimeout(ctx, 150*time.Millisecond)
		defer cancel()
		err := routes.WaitUnrouted(wctx, iris)
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			t.Fatal(err)
		}
		return err == nil
	}
	write := func(cp string, models ...string) {
		t.Helper()
		must(WriteRouted(ctx, rdb, keys, cp, map[string][]string{"w1": models}, nil, time.Minute))
	}
	renew := func(cp string, lease time.Duration) {
		t.Helper()
		must(RenewControlPlane(ctx, rdb, keys, cp, []string{"w1"}, lease, time.Hour))
	}

	if !unrouted() {
		t.Fatal("with no control plane ever, a model must count as unrouted")
	}
	// Two replicas of the control plane; each one's gateways route iris to w1.
	renew("cp-a", time.Minute)
	renew("cp-b", time.Minute)
	write("cp-a", "iris:1", "digits:1")
	write("cp-b", "iris:1")
	if unrouted() {
		t.Fatal("unrouted while both control planes' gateways route iris here")
	}
	// cp-a's gateways acknowledged a configuration without iris; cp-b's did not yet.
	write("cp-a", "digits:1")
	if unrouted() {
		t.Fatal("unrouted while cp-b's gateways still route iris here (the last writer must not win)")
	}
	write("cp-b")
	if !unrouted() {
		t.Fatal("still routed after both control planes' gateways stopped")
	}

	// A control plane whose lease ended is ignored: its gateways reconnected elsewhere.
	write("cp-b", "iris:1")
	renew("cp-b", time.Millisecond)
	time.Sleep(10 * time.Millisecond)
	if !unrouted() {
		t.Fatal("a dead control plane's routed set held the drain")
	}
	// With no live control plane at all, every set counts: the gateways keep the last
	// configuration they were given.
	renew("cp-a", time.Millisecond)
	time.Sleep(10 * time.Millisecond)
	if unrouted() {
		t.Fatal("unrouted with every control plane gone, though cp-b's last word routes iris here")
	}

	// Sets of a control plane are renewed with it and expire without it.
	if ttl := rdb.PTTL(ctx, keys.Routed("w1", "cp-b")).Val(); ttl <= 0 || ttl > time.Hour+time.Minute {
		t.Fatalf("routed set ttl %v, want renewed to the lease plus the forget time", ttl)
	}
	// Control planes gone for longer than the forget time leave the set of control planes.
	must(RenewControlPlane(ctx, rdb, keys, "cp-c", nil, time.Minute, time.Millisecond))
	if got := rdb.ZRange(ctx, keys.ControlPlanes(), 0, -1).Val(); len(got) != 1 || got[0] != "cp-c" {
		t.Fatalf("control planes %v, want only cp-c after the others were forgotten", got)
	}
}
