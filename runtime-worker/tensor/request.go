package tensor

import (
	"fmt"

	"github.com/modelmesh/mesh/internal/placement"
)

// Request is one inference call, decoded from REST or gRPC and validated.
type Request struct {
	Model  placement.ModelVersion
	ID     string
	Inputs []Tensor
	// Outputs names the outputs wanted; empty means all of them.
	Outputs []string
}

// Response is the answer to a Request.
type Response struct {
	Model   placement.ModelVersion
	ID      string
	Outputs []Tensor
}

// Metadata describes a model's signature. A -1 dimension is variable.
type Metadata struct {
	Platform string
	Inputs   []Spec
	Outputs  []Spec
}

// Spec is the name, datatype and shape of one model input or output.
type Spec struct {
	Name     string
	Datatype Datatype
	Shape    []int64
}

// Check validates the request's inputs against the model's signature: every input known,
// none missing, datatypes and fixed dimensions as declared; every requested output known.
func (m Metadata) Check(r *Request) error {
	seen := make(map[string]bool, len(r.Inputs))
	for _, in := range r.Inputs {
		spec, ok := find(m.Inputs, in.Name)
		if !ok {
			return fmt.Errorf("%w: model has no input %q (inputs: %s)", ErrInvalid, in.Name, names(m.Inputs))
		}
		if seen[in.Name] {
			return fmt.Errorf("%w: input %q given twice", ErrInvalid, in.Name)
		}
		seen[in.Name] = true
		if in.Datatype != spec.Datatype {
			return fmt.Errorf("%w: input %q: datatype %s, model expects %s", ErrInvalid, in.Name, in.Datatype, spec.Datatype)
		}
		if !shapeFits(spec.Shape, in.Shape) {
			return fmt.Errorf("%w: input %q: shape %v, model expects %v (-1 is any size)", ErrInvalid, in.Name, in.Shape, spec.Shape)
		}
	}
	for _, spec := range m.Inputs {
		if !seen[spec.Name] {
			return fmt.Errorf("%w: input %q missing", ErrInvalid, spec.Name)
		}
	}
	for _, o := range r.Outputs {
		if _, ok := find(m.Outputs, o); !ok {
			return fmt.Errorf("%w: model has no output %q (outputs: %s)", ErrInvalid, o, names(m.Outputs))
		}
	}
	return nil
}

func shapeFits(spec, got []int64) bool {
	if len(spec) != len(got) {
		return false
	}
	for i, d := range spec {
		if d >= 0 && d != got[i] {
			return false
		}
	}
	return true
}

func find(specs []Spec, name string) (Spec, bool) {
	for _, s := range specs {
		if s.Name == name {
			return s, true
		}
	}
	return Spec{}, false
}

func names(specs []Spec) string {
	s := ""
	for i, sp := range specs {
		if i > 0 {
			s += ", "
		}
		s += sp.Name
	}
	return s
}
