// Package tensor holds the worker's protocol-free form of inference requests and responses,
// and the raw little-endian encoding the KServe v2 protocol uses for tensor bytes.
package tensor

import (
	"errors"
	"fmt"
	"math"
)

// ErrInvalid marks a request the client got wrong (shape, datatype, data); the edge maps it
// to HTTP 400 and gRPC INVALID_ARGUMENT.
var ErrInvalid = errors.New("invalid tensor")

// Datatype is a KServe v2 tensor datatype name.
type Datatype string

// The datatypes the worker serves.
const (
	FP32  Datatype = "FP32"
	FP64  Datatype = "FP64"
	INT32 Datatype = "INT32"
	INT64 Datatype = "INT64"
	BOOL  Datatype = "BOOL"
	BYTES Datatype = "BYTES"
)

// ParseDatatype accepts the datatypes the worker serves.
func ParseDatatype(s string) (Datatype, error) {
	switch d := Datatype(s); d {
	case FP32, FP64, INT32, INT64, BOOL, BYTES:
		return d, nil
	}
	return "", fmt.Errorf("%w: datatype %q not supported (FP32, FP64, INT32, INT64, BOOL, BYTES)", ErrInvalid, s)
}

// Tensor is one named input or output. Data holds the elements flat, row-major, as the Go
// slice type of the datatype: []float32, []float64, []int32, []int64, []bool or [][]byte.
type Tensor struct {
	Name     string
	Datatype Datatype
	Shape    []int64
	Data     any
}

// MaxElements bounds the element count a shape may declare, so a tiny request cannot make
// the worker allocate a huge tensor.
const MaxElements = 1 << 28

// Elements is the product of the shape; it fails on negative or oversized dimensions.
func Elements(shape []int64) (int, error) {
	n := int64(1)
	for _, d := range shape {
		if d < 0 {
			return 0, fmt.Errorf("%w: negative dimension %d in shape %v", ErrInvalid, d, shape)
		}
		if d != 0 && n > MaxElements/d {
			return 0, fmt.Errorf("%w: shape %v has more than %d elements", ErrInvalid, shape, MaxElements)
		}
		n *= d
	}
	return int(n), nil
}

// Len is the number of elements in Data, or -1 if Data is not a slice of a served type.
func (t Tensor) Len() int {
	switch d := t.Data.(type) {
	case []float32:
		return len(d)
	case []float64:
		return len(d)
	case []int32:
		return len(d)
	case []int64:
		return len(d)
	case []bool:
		return len(d)
	case [][]byte:
		return len(d)
	}
	return -1
}

// Validate checks that Data matches the datatype and the shape.
func (t Tensor) Validate() error {
	n, err := Elements(t.Shape)
	if err != nil {
		return fmt.Errorf("tensor %q: %w", t.Name, err)
	}
	if !matches(t.Datatype, t.Data) {
		return fmt.Errorf("%w: tensor %q: datatype %s does not match data %T", ErrInvalid, t.Name, t.Datatype, t.Data)
	}
	if got := t.Len(); got != n {
		return fmt.Errorf("%w: tensor %q: shape %v needs %d elements, got %d", ErrInvalid, t.Name, t.Shape, n, got)
	}
	return nil
}

// matches reports whether data is the Go slice type that carries datatype d.
func matches(d Datatype, data any) bool {
	switch data.(type) {
	case []float32:
		return d == FP32
	case []float64:
		return d == FP64
	case []int32:
		return d == INT32
	case []int64:
		return d == INT64
	case []bool:
		return d == BOOL
	case [][]byte:
		return d == BYTES
	}
	return false
}

// ElementSize is the fixed byte width of one element, or 0 for BYTES.
func ElementSize(d Datatype) int {
	switch d {
	case FP32, INT32:
		return 4
	case FP64, INT64:
		return 8
	case BOOL:
		return 1
	}
	return 0
}

// EncodeRaw renders Data in the protocol's raw form: little-endian elements, BOOL as one
// byte, each BYTES element prefixed by its 4-byte little-endian length.
func EncodeRaw(t Tensor) ([]byte, error) {
	switch d := t.Data.(type) {
	case []float32:
		b := make([]byte, 0, 4*len(d))
		for _, v := range d {
			b = le32(b, math.Float32bits(v))
		}
		return b, nil
	case []float64:
		b := make([]byte, 0, 8*len(d))
		for _, v := range d {
			b = le64(b, math.Float64bits(v))
		}
		return b, nil
	case []int32:
		b := make([]byte, 0, 4*len(d))
		for _, v := range d {
			b = le32(b, uint32(v))
		}
		return b, nil
	case []int64:
		b := make([]byte, 0, 8*len(d))
		for _, v := range d {
			b = le64(b, uint64(v))
		}
		return b, nil
	case []bool:
		b := make([]byte, len(d))
		for i, v := range d {
			if v {
				b[i] = 1
			}
		}
		return b, nil
	case [][]byte:
		var b []byte
		for _, v := range d {
			b = le32(b, uint32(len(v)))
			b = append(b, v...)
		}
		return b, nil
	}
	return nil, fmt.Errorf("%w: tensor %q: data of type %T", ErrInvalid, t.Name, t.Data)
}

// DecodeRaw parses raw bytes for a tensor of the given datatype and shape.
func DecodeRaw(name string, dt Datatype, shape []int64, raw []byte) (Tensor, error) {
	n, err := Elements(shape)
	if err != nil {
		return Tensor{}, fmt.Errorf("tensor %q: %w", name, err)
	}
	t := Tensor{Name: name, Datatype: dt, Shape: shape}
	if size := ElementSize(dt); size > 0 && len(raw) != n*size {
		return Tensor{}, fmt.Errorf("%w: tensor %q: shape %v of %s needs %d raw bytes, got %d", ErrInvalid, name, shape, dt, n*size, len(raw))
	}
	switch dt {
	case FP32:
		d := make([]float32, n)
		for i := range d {
			d[i] = math.Float32frombits(u32(raw[4*i:]))
		}
		t.Data = d
	case FP64:
		d := make([]float64, n)
		for i := range d {
			d[i] = math.Float64frombits(u64(raw[8*i:]))
		}
		t.Data = d
	case INT32:
		d := make([]int32, n)
		for i := range d {
			d[i] = int32(u32(raw[4*i:]))
		}
		t.Data = d
	case INT64:
		d := make([]int64, n)
		for i := range d {
			d[i] = int64(u64(raw[8*i:]))
		}
		t.Data = d
	case BOOL:
		d := make([]bool, n)
		for i := range d {
			d[i] = raw[i] != 0
		}
		t.Data = d
	case BYTES:
		d := make([][]byte, 0, n)
		for len(raw) > 0 {
			if len(raw) < 4 {
				return Tensor{}, fmt.Errorf("%w: tensor %q: truncated BYTES length prefix", ErrInvalid, name)
			}
			l := u32(raw)
			if uint64(l) > uint64(len(raw)-4) {
				return Tensor{}, fmt.Errorf("%w: tensor %q: BYTES element of %d bytes overruns the data", ErrInvalid, name, l)
			}
			d = append(d, raw[4:4+l])
			raw = raw[4+l:]
		}
		if len(d) != n {
			return Tensor{}, fmt.Errorf("%w: tensor %q: shape %v needs %d BYTES elements, got %d", ErrInvalid, name, shape, n, len(d))
		}
		t.Data = d
	default:
		return Tensor{}, fmt.Errorf("%w: tensor %q: datatype %q not supported", ErrInvalid, name, dt)
	}
	return t, nil
}

func le32(b []byte, v uint32) []byte {
	return append(b, byte(v), byte(v>>8), byte(v>>16), byte(v>>24))
}

func le64(b []byte, v uint64) []byte {
	return le32(le32(b, uint32(v)), uint32(v>>32))
}

func u32(b []byte) uint32 {
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}

func u64(b []byte) uint64 { return uint64(u32(b)) | uint64(u32(b[4:]))<<32 }
