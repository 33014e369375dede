// Package modellabel bounds the values of a Prometheus "model" label: a stream of requests
// for ever new model names must not grow the number of series without end.
package modellabel

import (
	"sync"

	"github.com/modelmesh/mesh/internal/placement"
)

// Other is the label of every model beyond the bound, and of names that are not model ids.
const Other = "_other"

// Set hands out model labels: the first Max distinct valid names as themselves, the rest as
// Other. Safe for concurrent use.
type Set struct {
	max  int
	mu   sync.Mutex
	seen map[string]bool
}

// New returns a Set of at most max distinct names.
func New(max int) *Set { return &Set{max: max, seen: map[string]bool{}} }

// Label is name's label.
func (s *Set) Label(name string) string {
	if placement.ValidateID(name) != nil {
		return Other
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.seen[name] {
		if len(s.seen) >= s.max {
			return Other
		}
		s.seen[name] = true
	}
	return name
}
