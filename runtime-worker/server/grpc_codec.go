package server

import (
	"fmt"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/proto/inference"
	"github.com/modelmesh/mesh/runtime-worker/tensor"
)

// decodeGRPCRequest turns a ModelInferRequest into the protocol-free form. Inputs come from
// raw_input_contents when present (one entry per input, in order), else from each input's
// typed contents. It reports whether raw contents were used, so the answer can mirror them.
func decodeGRPCRequest(r *inference.ModelInferRequest) (*tensor.Request, bool, error) {
	m := placement.ModelVersion{Name: r.GetModelName(), Version: r.GetModelVersion()}
	if err := m.Validate(); err != nil {
		return nil, false, fmt.Errorf("%w: %v", tensor.ErrInvalid, err)
	}
	if len(r.GetInputs()) == 0 {
		return nil, false, fmt.Errorf("%w: request has no inputs", tensor.ErrInvalid)
	}
	raw := r.GetRawInputContents()
	if len(raw) > 0 && len(raw) != len(r.GetInputs()) {
		return nil, false, fmt.Errorf("%w: %d raw_input_contents for %d inputs", tensor.ErrInvalid, len(raw), len(r.GetInputs()))
	}
	req := &tensor.Request{Model: m, ID: r.GetId()}
	for i, in := range r.GetInputs() {
		dt, err := tensor.ParseDatatype(in.GetDatatype())
		if err != nil {
			return nil, false, fmt.Errorf("input %q: %w", in.GetName(), err)
		}
		var t tensor.Tensor
		if len(raw) > 0 {
			if in.GetContents() != nil {
				return nil, false, fmt.Errorf("%w: input %q has both contents and raw_input_contents", tensor.ErrInvalid, in.GetName())
			}
			t, err = tensor.DecodeRaw(in.GetName(), dt, in.GetShape(), raw[i])
			if err != nil {
				return nil, false, err
			}
		} else {
			t = tensor.Tensor{Name: in.GetName(), Datatype: dt, Shape: in.GetShape(), Data: contentsData(dt, in.GetContents())}
		}
		if in.GetName() == "" {
			return nil, false, fmt.Errorf("%w: input without a name", tensor.ErrInvalid)
		}
		if err := t.Validate(); err != nil {
			return nil, false, err
		}
		req.Inputs = append(req.Inputs, t)
	}
	for _, o := range r.GetOutputs() {
		req.Outputs = append(req.Outputs, o.GetName())
	}
	return req, len(raw) > 0, nil
}

func contentsData(dt tensor.Datatype, c *inference.InferTensorContents) any {
	switch dt {
	case tensor.FP32:
		return nonNil(c.GetFp32Contents())
	case tensor.FP64:
		return nonNil(c.GetFp64Contents())
	case tensor.INT32:
		return nonNil(c.GetIntContents())
	case tensor.INT64:
		return nonNil(c.GetInt64Contents())
	case tensor.BOOL:
		return nonNil(c.GetBoolContents())
	}
	return nonNil(c.GetBytesContents())
}

// nonNil keeps the slice's type for a nil slice, so an empty tensor validates by type.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// encodeGRPCResponse renders outputs as raw_output_contents when raw is set (as Triton does,
// and as tritonclient expects), else as typed contents.
func encodeGRPCResponse(r *tensor.Response, raw bool) (*inference.ModelInferResponse, error) {
	out := &inference.ModelInferResponse{ModelName: r.Model.Name, ModelVersion: r.Model.Version, Id: r.ID}
	for _, t := range r.Outputs {
		o := &inference.ModelInferResponse_InferOutputTensor{Name: t.Name, Datatype: string(t.Datatype), Shape: t.Shape}
		if raw {
			b, err := tensor.EncodeRaw(t)
			if err != nil {
				return nil, err
			}
			out.RawOutputContents = append(out.RawOutputContents, b)
		} else {
			o.Contents = &inference.InferTensorContents{}
			switch d := t.Data.(type) {
			case []float32:
				o.Contents.Fp32Contents = d
			case []float64:
				o.Contents.Fp64Contents = d
			case []int32:
				o.Contents.IntContents = d
			case []int64:
				o.Contents.Int64Contents = d
			case []bool:
				o.Contents.BoolContents = d
			case [][]byte:
				o.Contents.BytesContents = d
			default:
				return nil, fmt.Errorf("output %q: data of type %T", t.Name, t.Data)
			}
		}
		out.Outputs = append(out.Outputs, o)
	}
	return out, nil
}
