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
	renew := func(cp string, keep time.Duration) {
		t.Helper()
		must(RenewControlPlane(ctx, rdb, keys, cp, []string{"w1"}, keep))
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

	// A control plane that stopped renewing still counts until its keep time ends: its
	// gateways may keep routing by its last word.
	write("cp-b", "iris:1")
	renew("cp-b", 300*time.Millisecond)
	if unrouted() {
		t.Fatal("a control plane's routed set was dropped before its keep time ended")
	}
	time.Sleep(300 * time.Millisecond)
	if !unrouted() {
		t.Fatal("a control plane whose keep time ended still held the drain")
	}

	// Sets are renewed with their control plane and expire without it.
	renew("cp-a", time.Hour)
	if ttl := rdb.PTTL(ctx, keys.Routed("w1", "cp-a")).Val(); ttl <= time.Hour-time.Minute || ttl > time.Hour {
		t.Fatalf("routed set ttl %v, want renewed to the keep time", ttl)
	}
	// Control planes whose keep time ended leave the set of control planes.
	must(RenewControlPlane(ctx, rdb, keys, "cp-c", nil, time.Minute))
	if got := rdb.ZRange(ctx, keys.ControlPlanes(), 0, -1).Val(); len(got) != 2 || got[0] != "cp-c" || got[1] != "cp-a" {
		t.Fatalf("control planes %v, want cp-c and cp-a, cp-b forgotten", got)
	}
}
