package placement

import (
	"cmp"
	"math"
	"slices"
	"time"
)

// Eviction order: Greedy-Dual-Size-Frequency (GDSF; Cherkasova's extension of Cao and
// Irani's GreedyDual-Size, as in Squid's heap GDSF). A replica is worth keeping in proportion
// to how often it is used and what reloading it costs, per byte it holds:
//
//	priority = clock at its last use + requests × load time / size
//
// and the replica of lowest priority goes first. The clock starts at 0 and is raised to the
// priority of each victim, so replicas that stop being used fall behind those in use however
// many requests they once had: recency enters through the clock. Requests are counted since
// the replica was loaded and aged (Frequency). With no requests and no load time counted,
// every priority is the clock, and the order is least recently used first.
//
// Extra replicas (copies added for demand, beside a model's first) come before every other
// in that order, and may go while busy: the model keeps its other replicas, and a victim
// drains before it unloads.

// MinLoadCost is the least load time a candidate counts: a replica whose load measured
// nothing is still worth its requests.
const MinLoadCost = time.Millisecond

// Candidate is a resident replica as the eviction policy sees it.
type Candidate struct {
	Model    ModelVersion
	State    State
	Memory   Memory
	LastUsed time.Time
	InFlight int
	Pinned   bool
	// Extra marks a copy added for demand beside the model's other replicas.
	Extra bool
	// Recent marks a replica used too recently to evict: requests may be on their way to it.
	Recent bool
	// Requests is how often the replica has been used since it was loaded, aged
	// (Frequency.At at the time of the choice).
	Requests float64
	// LoadTime is what its load took (fetch and the runtime's load, no waits): what
	// evicting it costs if it is wanted again.
	LoadTime time.Duration
	// Clock is the policy's clock at the replica's last use, or at its load.
	Clock float64
}

// Evictable reports whether the replica may be evicted now: ready, not pinned, and idle and
// not used recently unless it is an extra copy.
func (c Candidate) Evictable() bool {
	return c.State == StateReady && !c.Pinned && (c.Extra || c.InFlight == 0 && !c.Recent)
}

// Priority is the replica's GDSF priority: Clock + Requests × LoadTime (seconds, at least
// MinLoadCost) / size (MiB, every dimension together). The lowest is evicted first.
func (c Candidate) Priority() float64 {
	mib := float64(max(c.Memory.Total(), 1)) / (1 << 20)
	return c.Clock + c.Requests*max(c.LoadTime, MinLoadCost).Seconds()/mib
}

// RaiseClock is the policy's clock once victims are evicted: raised to the highest of their
// priorities, never lowered.
func RaiseClock(clock float64, victims []Candidate) float64 {
	for _, v := range victims {
		clock = max(clock, v.Priority())
	}
	return clock
}

// ChooseEvictions picks replicas to evict so that every positive dimension of need is freed,
// lowest priority first (ties: least recently used, then id, so the choice is
// deterministic). A replica that frees nothing where memory is short (a host-only model when
// a GPU is full, or a model on another GPU) is never chosen. It returns nil and false,
// choosing nothing, when the evictable replicas together cannot free need.
func ChooseEvictions(cands []Candidate, need Memory) ([]Candidate, bool) {
	chosen, rest := chooseInOrder(cands, need)
	if !rest.IsZero() {
		return nil, false
	}
	return chosen, true
}

// WaitsForRecent reports whether the eviction order, were no replica recent, would take a
// recent one to free need: the caller had better wait for it (its protection ends soon) than
// evict replicas worth more in its place.
func WaitsForRecent(cands []Candidate, need Memory) bool {
	patient := make([]Candidate, len(cands))
	for i, c := range cands {
		patient[i] = c
		patient[i].Recent = false
	}
	chosen, _ := chooseInOrder(patient, need)
	for _, c := range chosen {
		for _, o := range cands {
			if o.Model == c.Model && o.Recent {
				return true
			}
		}
	}
	return false
}

// ChooseHeadroom is ChooseEvictions for memory wanted ahead of demand: it picks in the same
// order, even when the evictable replicas cannot free all of need, and stops before a recent
// replica the order would take next (it goes once its protection ends, rather than one worth
// more now). Each replica it frees is room the next load does not have to wait for.
func ChooseHeadroom(cands []Candidate, need Memory) []Candidate {
	patient := make([]Candidate, len(cands))
	for i, c := range cands {
		patient[i] = c
		patient[i].Recent = false
	}
	order, _ := chooseInOrder(patient, need)
	recent := map[ModelVersion]bool{}
	for _, c := range cands {
		recent[c.Model] = c.Recent
	}
	for i, c := range order {
		if recent[c.Model] {
			if i == 0 {
				return nil
			}
			return order[:i:i]
		}
	}
	return order
}

// chooseInOrder takes evictable replicas that help, in eviction order, until need is paid;
// it returns them and what is left unpaid.
func chooseInOrder(cands []Candidate, need Memory) ([]Candidate, Memory) {
	need = need.Positive()
	if need.IsZero() {
		return nil, need
	}
	var pool []Candidate
	for _, c := range cands {
		if c.Evictable() {
			pool = append(pool, c)
		}
	}
	slices.SortFunc(pool, func(a, b Candidate) int {
		if a.Extra != b.Extra {
			return boolFirst(a.Extra)
		}
		if c := cmp.Compare(a.Priority(), b.Priority()); c != 0 {
			return c
		}
		if c := a.LastUsed.Compare(b.LastUsed); c != 0 {
			return c
		}
		return cmp.Compare(a.Model.String(), b.Model.String())
	})
	var chosen []Candidate
	for _, c := range pool {
		if !c.Memory.Helps(need) {
			continue
		}
		chosen = append(chosen, c)
		need = need.Minus(c.Memory).Positive()
		if need.IsZero() {
			break
		}
	}
	return chosen, need
}

// Freed is the memory the candidates hold together.
func Freed(cands []Candidate) Memory {
	var m Memory
	for _, c := range cands {
		m = m.Plus(c.Memory)
	}
	return m
}

// Frequency counts uses with ageing: a use counts half as much for every half-life that has
// passed since it happened. A half-life of 0 or less ages nothing. The zero value has no uses.
type Frequency struct {
	// Count is the aged count as of Last, the time of the last use.
	Count float64
	Last  time.Time
}

// Add records one use at time at.
func (f Frequency) Add(at time.Time, halfLife time.Duration) Frequency {
	return Frequency{Count: f.At(at, halfLife) + 1, Last: at}
}

// At is the aged count at time t; uses after t count in full.
func (f Frequency) At(t time.Time, halfLife time.Duration) float64 {
	age := t.Sub(f.Last)
	if halfLife <= 0 || age <= 0 {
		return f.Count
	}
	return f.Count * math.Exp2(-float64(age)/float64(halfLife))
}
