// Package placement is the mesh's domain core: model identities, replica states and the order
// in which idle models are evicted. It is shared by the worker, ext_proc and the control plane
// and imports nothing but the standard library.
package placement

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// MaxIDLength bounds model names and versions; 253 keeps an id usable as a DNS name.
const MaxIDLength = 253

// ErrInvalidID reports a model name or version outside the id grammar.
var ErrInvalidID = errors.New("invalid model id")

// ModelVersion names one version of one model. An empty Version means "the default version"
// where an API allows it; a resident replica always has a concrete version.
type ModelVersion struct {
	Name    string
	Version string
}

// String renders "name:version"; ':' is outside the id grammar, so it is unambiguous.
func (m ModelVersion) String() string { return m.Name + ":" + m.Version }

// ParseModelVersion is the inverse of String.
func ParseModelVersion(s string) (ModelVersion, error) {
	name, version, ok := strings.Cut(s, ":")
	if !ok {
		return ModelVersion{}, fmt.Errorf("%w: %q has no version", ErrInvalidID, s)
	}
	m := ModelVersion{Name: name, Version: version}
	return m, m.Validate()
}

// Validate checks the name and, when set, the version against the id grammar.
func (m ModelVersion) Validate() error {
	if err := ValidateID(m.Name); err != nil {
		return fmt.Errorf("model name: %w", err)
	}
	if m.Version == "" {
		return nil
	}
	if err := ValidateID(m.Version); err != nil {
		return fmt.Errorf("model version: %w", err)
	}
	return nil
}

// ValidateID checks one id: 1 to 253 characters of [A-Za-z0-9], with '.', '-' and '_'
// allowed inside but not first or last, and no "..". The grammar keeps ids safe as path
// segments, header values, Redis key parts and Envoy cluster names.
func ValidateID(id string) error {
	switch {
	case id == "":
		return fmt.Errorf("%w: empty", ErrInvalidID)
	case len(id) > MaxIDLength:
		return fmt.Errorf("%w: %d characters, at most %d allowed", ErrInvalidID, len(id), MaxIDLength)
	case strings.Contains(id, ".."):
		return fmt.Errorf("%w: %q contains \"..\"", ErrInvalidID, id)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if isAlnum(c) {
			continue
		}
		if (c == '.' || c == '-' || c == '_') && i > 0 && i < len(id)-1 {
			continue
		}
		return fmt.Errorf("%w: %q: character %q at offset %d not allowed", ErrInvalidID, id, c, i)
	}
	return nil
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// NewerVersion reports whether version a sorts after b: numerically when both are decimal
// integers (so "10" > "9"), else lexically. It picks a model's default version, the newest
// resident one, as Triton does.
func NewerVersion(a, b string) bool {
	ai, aerr := strconv.ParseUint(a, 10, 64)
	bi, berr := strconv.ParseUint(b, 10, 64)
	if aerr == nil && berr == nil {
		return ai > bi
	}
	if (aerr == nil) != (berr == nil) {
		return aerr == nil // numbered versions sort after named ones
	}
	return a > b
}
