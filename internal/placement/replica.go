package placement

import (
	"cmp"
	"slices"
	"time"
)

// State is where a replica is in its life: loading, then ready, then draining before unload.
type State int

const (
	StateLoading State = iota + 1
	StateReady
	StateDraining
)

// String gives the lower-case name used in Redis records, metrics and logs.
func (s State) String() string {
	switch s {
	case StateLoading:
		return "loading"
	case StateReady:
		return "ready"
	case StateDraining:
		return "draining"
	}
	return "unknown"
}

// ParseState is the inverse of String.
func ParseState(s string) (State, bool) {
	for _, st := range []State{StateLoading, StateReady, StateDraining} {
		if st.String() == s {
			return st, true
		}
	}
	return 0, false
}

// MarshalText writes the state's name, as Redis records hold it.
func (s State) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText reads a state's name. A name this version does not know (a newer worker's)
// reads as the zero State, which no placement rule takes for loading, ready or draining.
func (s *State) UnmarshalText(b []byte) error {
	*s, _ = ParseState(string(b))
	return nil
}

// SizeSource says where the bytes counted for a replica came from, best first.
type SizeSource string

const (
	// SizeDeclared is the size the registry declared for the model.
	SizeDeclared SizeSource = "declared"
	// SizeMeasured was measured by the runtime at load.
	SizeMeasured SizeSource = "measured"
	// SizeLearned was measured at an earlier load, here or on another worker.
	SizeLearned SizeSource = "learned"
	// SizeEstimated is derived from the size of the model files.
	SizeEstimated SizeSource = "estimated"
)

// Candidate is a resident replica as the eviction policy sees it.
type Candidate struct {
	Model    ModelVersion
	State    State
	Memory   Memory
	LastUsed time.Time
	InFlight int
	Pinned   bool
	// Recent marks a replica used too recently to evict: requests may be on their way to it.
	Recent bool
}

// Evictable reports whether the replica may be evicted now: ready, idle, not used recently
// and not pinned.
func (c Candidate) Evictable() bool {
	return c.State == StateReady && c.InFlight == 0 && !c.Pinned && !c.Recent
}

// ChooseEvictions picks replicas to evict so that every positive dimension of need is freed,
// least recently used first (ties broken by id, so the choice is deterministic). A replica
// that frees nothing where memory is short (a host-only model when a GPU is full, or a model
// on another GPU) is never chosen. It returns nil and false, choosing nothing, when the
// evictable replicas together cannot free need.
func ChooseEvictions(cands []Candidate, need Memory) ([]Candidate, bool) {
	need = need.Positive()
	if need.IsZero() {
		return nil, true
	}
	var pool []Candidate
	for _, c := range cands {
		if c.Evictable() {
			pool = append(pool, c)
		}
	}
	slices.SortFunc(pool, func(a, b Candidate) int {
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
			return chosen, true
		}
	}
	return nil, false
}

// Freed is the memory the candidates hold together.
func Freed(cands []Candidate) Memory {
	var m Memory
	for _, c := range cands {
		m = m.Plus(c.Memory)
	}
	return m
}
