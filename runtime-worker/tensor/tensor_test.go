package tensor

import (
	"errors"
	"math"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestRawRoundTrip(t *testing.T) {
	t.Parallel()
	tests := []Tensor{
		{Name: "f32", Datatype: FP32, Shape: []int64{2, 2}, Data: []float32{1.5, -2, float32(math.Inf(1)), 0}},
		{Name: "f64", Datatype: FP64, Shape: []int64{3}, Data: []float64{math.Pi, -1e300, 0}},
		{Name: "i32", Datatype: INT32, Shape: []int64{2}, Data: []int32{math.MinInt32, math.MaxInt32}},
		{Name: "i64", Datatype: INT64, Shape: []int64{1, 2}, Data: []int64{math.MinInt64, 42}},
		{Name: "bool", Datatype: BOOL, Shape: []int64{3}, Data: []bool{true, false, true}},
		{Name: "bytes", Datatype: BYTES, Shape: []int64{3}, Data: [][]byte{[]byte("héllo"), {}, {0, 1, 2}}},
		{Name: "empty", Datatype: FP32, Shape: []int64{0, 4}, Data: []float32{}},
	}
	for _, want := range tests {
		t.Run(want.Name, func(t *testing.T) {
			t.Parallel()
			raw, err := EncodeRaw(want)
			if err != nil {
				t.Fatal(err)
			}
			got, err := DecodeRaw(want.Name, want.Datatype, want.Shape, raw)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Fatalf("round trip (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRawLayoutIsLittleEndian(t *testing.T) {
	t.Parallel()
	raw, err := EncodeRaw(Tensor{Datatype: INT32, Shape: []int64{1}, Data: []int32{0x01020304}})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]byte{4, 3, 2, 1}, raw); diff != "" {
		t.Fatal(diff)
	}
	raw, _ = EncodeRaw(Tensor{Datatype: BYTES, Shape: []int64{1}, Data: [][]byte{[]byte("ab")}})
	if diff := cmp.Diff([]byte{2, 0, 0, 0, 'a', 'b'}, raw); diff != "" {
		t.Fatal(diff)
	}
}

func TestDecodeRawRejects(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		dt    Datatype
		shape []int64
		raw   []byte
	}{
		{"short fp32", FP32, []int64{2}, make([]byte, 7)},
		{"long int64", INT64, []int64{1}, make([]byte, 9)},
		{"negative dimension", FP32, []int64{-1}, nil},
		{"huge shape", FP32, []int64{1 << 20, 1 << 20}, nil},
		{"truncated length prefix", BYTES, []int64{1}, []byte{1, 0}},
		{"element overruns", BYTES, []int64{1}, []byte{9, 0, 0, 0, 'a'}},
		{"too few BYTES elements", BYTES, []int64{2}, []byte{1, 0, 0, 0, 'a'}},
		{"length prefix near 4 GiB", BYTES, []int64{1}, []byte{0xff, 0xff, 0xff, 0xff, 'a'}},
		{"unknown datatype", Datatype("FP16"), []int64{1}, []byte{0, 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if _, err := DecodeRaw("x", tt.dt, tt.shape, tt.raw); !errors.Is(err, ErrInvalid) {
				t.Fatalf("DecodeRaw error = %v, want ErrInvalid", err)
			}
		})
	}
}

func TestMetadataCheck(t *testing.T) {
	t.Parallel()
	meta := Metadata{
		Inputs:  []Spec{{Name: "input", Datatype: FP32, Shape: []int64{-1, 4}}},
		Outputs: []Spec{{Name: "label", Datatype: INT64, Shape: []int64{-1}}},
	}
	in := func(dt Datatype, shape ...int64) Tensor { return Tensor{Name: "input", Datatype: dt, Shape: shape} }
	tests := []struct {
		name string
		give Request
		ok   bool
	}{
		{"fits with any batch", Request{Inputs: []Tensor{in(FP32, 7, 4)}}, true},
		{"requested output known", Request{Inputs: []Tensor{in(FP32, 1, 4)}, Outputs: []string{"label"}}, true},
		{"wrong datatype", Request{Inputs: []Tensor{in(FP64, 1, 4)}}, false},
		{"wrong fixed dimension", Request{Inputs: []Tensor{in(FP32, 1, 3)}}, false},
		{"wrong rank", Request{Inputs: []Tensor{in(FP32, 4)}}, false},
		{"unknown input", Request{Inputs: []Tensor{in(FP32, 1, 4), {Name: "extra", Datatype: FP32, Shape: []int64{1}}}}, false},
		{"input twice", Request{Inputs: []Tensor{in(FP32, 1, 4), in(FP32, 1, 4)}}, false},
		{"missing input", Request{}, false},
		{"unknown output", Request{Inputs: []Tensor{in(FP32, 1, 4)}, Outputs: []string{"nope"}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := meta.Check(&tt.give)
			if (err == nil) != tt.ok {
				t.Fatalf("Check = %v, want ok=%v", err, tt.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
		})
	}
}

func TestValidateRejectsMismatch(t *testing.T) {
	t.Parallel()
	tests := []Tensor{
		{Name: "count", Datatype: FP32, Shape: []int64{3}, Data: []float32{1, 2}},
		{Name: "type", Datatype: FP32, Shape: []int64{1}, Data: []float64{1}},
		{Name: "nil", Datatype: INT64, Shape: []int64{1}},
	}
	for _, tt := range tests {
		if err := tt.Validate(); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Validate = %v, want ErrInvalid", tt.Name, err)
		}
	}
}
