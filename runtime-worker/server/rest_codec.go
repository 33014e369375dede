package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/runtime-worker/tensor"
)

// restRequest is the KServe v2 REST inference request body.
type restRequest struct {
	ID         string          `json:"id,omitempty"`
	Parameters json.RawMessage `json:"parameters,omitempty"`
	Inputs     []restTensor    `json:"inputs"`
	Outputs    []restOutput    `json:"outputs,omitempty"`
}

type restTensor struct {
	Name       string          `json:"name"`
	Shape      []int64         `json:"shape"`
	Datatype   string          `json:"datatype"`
	Parameters map[string]any  `json:"parameters,omitempty"`
	Data       json.RawMessage `json:"data"`
}

type restOutput struct {
	Name       string         `json:"name"`
	Parameters map[string]any `json:"parameters,omitempty"`
}

type restResponse struct {
	ModelName    string          `json:"model_name"`
	ModelVersion string          `json:"model_version,omitempty"`
	ID           string          `json:"id,omitempty"`
	Outputs      []restOutTensor `json:"outputs"`
}

type restOutTensor struct {
	Name     string  `json:"name"`
	Datatype string  `json:"datatype"`
	Shape    []int64 `json:"shape"`
	Data     any     `json:"data"`
}

// DecodeRESTRequest parses a KServe v2 REST inference body for model m. Tensor data may be
// flat or nested row-major arrays. With Triton's binary tensor extension, jsonLen (the
// Inference-Header-Content-Length header) is the length of the JSON part and the raw tensor
// bytes follow it, in input order, each input giving its length as the binary_data_size
// parameter; jsonLen < 0 means the whole body is JSON. Every failure wraps tensor.ErrInvalid.
func DecodeRESTRequest(m placement.ModelVersion, body []byte, jsonLen int) (*tensor.Request, error) {
	var bin []byte
	if jsonLen >= 0 {
		if jsonLen > len(body) {
			return nil, fmt.Errorf("%w: Inference-Header-Content-Length %d is longer than the %d-byte body", tensor.ErrInvalid, jsonLen, len(body))
		}
		body, bin = body[:jsonLen], body[jsonLen:]
	}
	var rr restRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rr); err != nil {
		return nil, fmt.Errorf("%w: request body is not a valid inference request: %v", tensor.ErrInvalid, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: request body has data after the JSON object (binary tensors need the Inference-Header-Content-Length header)", tensor.ErrInvalid)
	}
	if len(rr.Inputs) == 0 {
		return nil, fmt.Errorf("%w: request has no inputs", tensor.ErrInvalid)
	}
	req := &tensor.Request{Model: m, ID: rr.ID}
	for _, in := range rr.Inputs {
		var t tensor.Tensor
		var err error
		if size, ok := in.Parameters["binary_data_size"]; ok {
			t, bin, err = decodeBinaryTensor(in, size, bin, jsonLen >= 0)
		} else {
			t, err = decodeRESTTensor(in)
		}
		if err != nil {
			return nil, err
		}
		req.Inputs = append(req.Inputs, t)
	}
	if len(bin) > 0 {
		return nil, fmt.Errorf("%w: %d bytes of binary data after the last binary input", tensor.ErrInvalid, len(bin))
	}
	for _, o := range rr.Outputs {
		if o.Name == "" {
			return nil, fmt.Errorf("%w: requested output without a name", tensor.ErrInvalid)
		}
		req.Outputs = append(req.Outputs, o.Name)
	}
	return req, nil
}

// decodeBinaryTensor takes an input's raw bytes from the front of bin and returns the rest.
func decodeBinaryTensor(in restTensor, size any, bin []byte, binary bool) (tensor.Tensor, []byte, error) {
	fail := func(format string, args ...any) (tensor.Tensor, []byte, error) {
		return tensor.Tensor{}, nil, fmt.Errorf("%w: input %q: "+format, append([]any{tensor.ErrInvalid, in.Name}, args...)...)
	}
	if !binary {
		return fail("binary_data_size without the Inference-Header-Content-Length header")
	}
	n, ok := size.(float64)
	if !ok || n < 0 || n != float64(int(n)) {
		return fail("binary_data_size %v is not a byte count", size)
	}
	if int(n) > len(bin) {
		return fail("binary_data_size %d overruns the %d bytes of binary data left", int(n), len(bin))
	}
	if len(in.Data) > 0 {
		return fail("both data and binary_data_size")
	}
	if in.Name == "" {
		return fail("no name")
	}
	dt, err := tensor.ParseDatatype(in.Datatype)
	if err != nil {
		return tensor.Tensor{}, nil, fmt.Errorf("input %q: %w", in.Name, err)
	}
	t, err := tensor.DecodeRaw(in.Name, dt, in.Shape, bin[:int(n)])
	if err != nil {
		return tensor.Tensor{}, nil, err
	}
	return t, bin[int(n):], t.Validate()
}

func decodeRESTTensor(in restTensor) (tensor.Tensor, error) {
	if in.Name == "" {
		return tensor.Tensor{}, fmt.Errorf("%w: input without a name", tensor.ErrInvalid)
	}
	dt, err := tensor.ParseDatatype(in.Datatype)
	if err != nil {
		return tensor.Tensor{}, fmt.Errorf("input %q: %w", in.Name, err)
	}
	if in.Shape == nil {
		return tensor.Tensor{}, fmt.Errorf("%w: input %q has no shape", tensor.ErrInvalid, in.Name)
	}
	n, err := tensor.Elements(in.Shape)
	if err != nil {
		return tensor.Tensor{}, fmt.Errorf("input %q: %w", in.Name, err)
	}
	data, err := flatten(in.Data, dt, n)
	if err != nil {
		return tensor.Tensor{}, fmt.Errorf("%w: input %q: %v", tensor.ErrInvalid, in.Name, err)
	}
	t := tensor.Tensor{Name: in.Name, Datatype: dt, Shape: in.Shape, Data: data}
	return t, t.Validate()
}

// flatten reads a JSON array, nested to any depth, of elements of datatype dt. It stops
// with an error as soon as more than limit elements appear, so a huge body with a small
// declared shape is not decoded whole.
func flatten(raw json.RawMessage, dt tensor.Datatype, limit int) (any, error) {
	if len(bytes.TrimSpace(raw)) == 0 {
		return nil, errors.New("no data")
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	acc := newAccumulator(dt, limit)
	depth := 0
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("data: %v", err)
		}
		switch v := tok.(type) {
		case json.Delim:
			switch v {
			case '[':
				depth++
			case ']':
				depth--
			default:
				return nil, errors.New("data must be an array of values, not an object")
			}
			continue
		case nil:
			return nil, errors.New("data contains null")
		}
		if depth == 0 {
			return nil, errors.New("data must be an array")
		}
		if acc.n() >= limit {
			return nil, fmt.Errorf("more than the %d elements the shape declares", limit)
		}
		if err := acc.add(tok); err != nil {
			return nil, fmt.Errorf("element %d: %v", acc.n(), err)
		}
	}
	return acc.data(), nil
}

// accumulator collects JSON tokens as typed elements.
type accumulator struct {
	dt  tensor.Datatype
	f32 []float32
	f64 []float64
	i32 []int32
	i64 []int64
	b   []bool
	s   [][]byte
}

func newAccumulator(dt tensor.Datatype, limit int) *accumulator {
	a := &accumulator{dt: dt}
	capacity := min(limit, 1<<16)
	switch dt {
	case tensor.FP32:
		a.f32 = make([]float32, 0, capacity)
	case tensor.FP64:
		a.f64 = make([]float64, 0, capacity)
	case tensor.INT32:
		a.i32 = make([]int32, 0, capacity)
	case tensor.INT64:
		a.i64 = make([]int64, 0, capacity)
	case tensor.BOOL:
		a.b = make([]bool, 0, capacity)
	case tensor.BYTES:
		a.s = make([][]byte, 0, capacity)
	}
	return a
}

func (a *accumulator) n() int {
	return len(a.f32) + len(a.f64) + len(a.i32) + len(a.i64) + len(a.b) + len(a.s)
}

func (a *accumulator) data() any {
	switch a.dt {
	case tensor.FP32:
		return a.f32
	case tensor.FP64:
		return a.f64
	case tensor.INT32:
		return a.i32
	case tensor.INT64:
		return a.i64
	case tensor.BOOL:
		return a.b
	}
	return a.s
}

func (a *accumulator) add(tok json.Token) error {
	switch a.dt {
	case tensor.BOOL:
		v, ok := tok.(bool)
		if !ok {
			return fmt.Errorf("%v is not a BOOL", tok)
		}
		a.b = append(a.b, v)
		return nil
	case tensor.BYTES:
		v, ok := tok.(string)
		if !ok {
			return fmt.Errorf("%v is not a string for BYTES", tok)
		}
		a.s = append(a.s, []byte(v))
		return nil
	}
	num, ok := tok.(json.Number)
	if !ok {
		return fmt.Errorf("%v is not a number for %s", tok, a.dt)
	}
	switch a.dt {
	case tensor.FP32:
		v, err := strconv.ParseFloat(string(num), 32)
		if err != nil {
			return fmt.Errorf("%s is not an FP32", num)
		}
		a.f32 = append(a.f32, float32(v))
	case tensor.FP64:
		v, err := strconv.ParseFloat(string(num), 64)
		if err != nil {
			return fmt.Errorf("%s is not an FP64", num)
		}
		a.f64 = append(a.f64, v)
	case tensor.INT32:
		v, err := strconv.ParseInt(string(num), 10, 32)
		if err != nil {
			return fmt.Errorf("%s is not an INT32", num)
		}
		a.i32 = append(a.i32, int32(v))
	case tensor.INT64:
		v, err := strconv.ParseInt(string(num), 10, 64)
		if err != nil {
			return fmt.Errorf("%s is not an INT64", num)
		}
		a.i64 = append(a.i64, v)
	}
	return nil
}

// EncodeRESTResponse renders a response body. BYTES elements are rendered as strings; a
// non-finite float, which JSON cannot carry, is an error.
func EncodeRESTResponse(r *tensor.Response) ([]byte, error) {
	out := restResponse{ModelName: r.Model.Name, ModelVersion: r.Model.Version, ID: r.ID, Outputs: make([]restOutTensor, 0, len(r.Outputs))}
	for _, t := range r.Outputs {
		data := t.Data
		switch d := t.Data.(type) {
		case [][]byte:
			s := make([]string, len(d))
			for i, b := range d {
				s[i] = string(b)
			}
			data = s
		case []float32:
			for _, v := range d {
				if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
					return nil, fmt.Errorf("output %q holds %v, which JSON cannot carry; use gRPC", t.Name, v)
				}
			}
		case []float64:
			for _, v := range d {
				if math.IsNaN(v) || math.IsInf(v, 0) {
					return nil, fmt.Errorf("output %q holds %v, which JSON cannot carry; use gRPC", t.Name, v)
				}
			}
		}
		out.Outputs = append(out.Outputs, restOutTensor{Name: t.Name, Datatype: string(t.Datatype), Shape: t.Shape, Data: data})
	}
	return json.Marshal(out)
}
