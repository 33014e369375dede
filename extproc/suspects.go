package extproc

import (
	"context"
	"maps"
	"sync"
	"time"

	"github.com/modelmesh/mesh/internal/residency"
)

// suspects are the workers this replica found unreachable (their management port refused a
// connection) in the last Config.SuspectFor. Decisions leave them out until the snapshot
// does: their lease was ended in Redis at the same moment (Config.EndLease), so the next
// snapshot, here and in every other reader, no longer holds them, unless the worker is alive
// after all and writes itself back.
type suspects struct {
	mu    sync.Mutex
	until map[string]time.Time
}

// add marks worker id unreachable until until.
func (s *suspects) add(id string, until time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.until == nil {
		s.until = map[string]time.Time{}
	}
	s.until[id] = until
}

// filter is snap without the workers suspected at now; snap itself when there are none.
func (s *suspects) filter(snap *residency.Snapshot, now time.Time) *residency.Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	maps.DeleteFunc(s.until, func(_ string, until time.Time) bool { return !now.Before(until) })
	if snap == nil || len(s.until) == 0 {
		return snap
	}
	out := *snap
	out.Workers = maps.Clone(snap.Workers)
	for id := range s.until {
		delete(out.Workers, id)
	}
	return &out
}

// snapshot is the view's latest snapshot without the suspected workers.
func (s *Server) snapshot() *residency.Snapshot {
	return s.suspects.filter(s.view.Snapshot(), time.Now())
}

// suspect records that w's management port refuses connections: decisions here leave it
// out at once, and its lease is ended so that the control plane stops routing to it in its
// next push instead of when the lease runs out.
func (s *Server) suspect(ctx context.Context, w residency.Worker) {
	s.suspects.add(w.ID, time.Now().Add(s.cfg.SuspectFor))
	s.metrics.unreachable.Inc()
	if s.cfg.EndLease == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	if err := s.cfg.EndLease(ctx, w.ID); err != nil {
		s.log.WarnContext(ctx, "end the lease of an unreachable worker", "worker", w.ID, "error", err)
		return
	}
	s.log.WarnContext(ctx, "worker unreachable: lease ended", "worker", w.ID, "mgmt_addr", w.MgmtAddr)
}
