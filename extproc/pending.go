package extproc

import (
	"sync"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/internal/residency"
)

// pending counts, per worker, the loads this replica has asked and not yet seen answered.
// Workers' records show a load in progress only after a write to Redis and a snapshot, so
// during a burst of cold models every flight would otherwise see the same idle fleet and
// the worker whose loads finish fastest would take them all.
type pending struct {
	mu sync.Mutex
	n  map[string]int
}

// start counts a load on worker id; the returned func ends it.
func (p *pending) start(id string) (done func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.n == nil {
		p.n = map[string]int{}
	}
	p.n[id]++
	return func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.n[id]--; p.n[id] <= 0 {
			delete(p.n, id)
		}
	}
}

// candidates is Candidates with this replica's pending loads counted on each worker.
func (s *Server) candidates(snap *residency.Snapshot, t Target) []residency.Worker {
	nodes := snap.Nodes()
	s.pending.mu.Lock()
	for i := range nodes {
		nodes[i].Pending = s.pending.n[nodes[i].ID]
	}
	s.pending.mu.Unlock()
	return workersOf(snap, placement.Candidates(nodes, t.load()))
}
