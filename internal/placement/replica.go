package placement

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
