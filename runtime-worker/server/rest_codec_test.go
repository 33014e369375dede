package server

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/runtime-worker/tensor"
)

var iris = placement.ModelVersion{Name: "iris", Version: "1"}

func TestDecodeRESTRequest(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		give string
		want *tensor.Request
	}{
		{
			name: "nested FP32 with requested output",
			give: `{"id":"r1","inputs":[{"name":"input","shape":[2,2],"datatype":"FP32","data":[[1,2.5],[3,4]]}],"outputs":[{"name":"label"}]}`,
			want: &tensor.Request{Model: iris, ID: "r1", Outputs: []string{"label"},
				Inputs: []tensor.Tensor{{Name: "input", Datatype: tensor.FP32, Shape: []int64{2, 2}, Data: []float32{1, 2.5, 3, 4}}}},
		},
		{
			name: "every datatype, flat",
			give: `{"inputs":[
				{"name":"a","shape":[2],"datatype":"FP64","data":[1e300,-2]},
				{"name":"b","shape":[2],"datatype":"INT32","data":[-2147483648,7]},
				{"name":"c","shape":[1],"datatype":"INT64","data":[9007199254740993]},
				{"name":"d","shape":[2],"datatype":"BOOL","data":[true,false]},
				{"name":"e","shape":[2],"datatype":"BYTES","data":["héllo",""]}]}`,
			want: &tensor.Request{Model: iris, Inputs: []tensor.Tensor{
				{Name: "a", Datatype: tensor.FP64, Shape: []int64{2}, Data: []float64{1e300, -2}},
				{Name: "b", Datatype: tensor.INT32, Shape: []int64{2}, Data: []int32{-2147483648, 7}},
				{Name: "c", Datatype: tensor.INT64, Shape: []int64{1}, Data: []int64{9007199254740993}},
				{Name: "d", Datatype: tensor.BOOL, Shape: []int64{2}, Data: []bool{true, false}},
				{Name: "e", Datatype: tensor.BYTES, Shape: []int64{2}, Data: [][]byte{[]byte("héllo"), []byte("")}},
			}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := DecodeRESTRequest(iris, []byte(tt.give), -1)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Fatalf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestDecodeRESTRequestRejects(t *testing.T) {
	t.Parallel()
	in := func(s string) string { return `{"inputs":[` + s + `]}` }
	tests := []struct{ name, give string }{
		{"not JSON", `{"inputs":`},
		{"trailing data", in(`{"name":"x","shape":[1],"datatype":"FP32","data":[1]}`) + `{}`},
		{"unknown field", `{"inputs":[],"bogus":1}`},
		{"no inputs", `{"inputs":[]}`},
		{"unnamed input", in(`{"shape":[1],"datatype":"FP32","data":[1]}`)},
		{"no shape", in(`{"name":"x","datatype":"FP32","data":[1]}`)},
		{"unknown datatype", in(`{"name":"x","shape":[1],"datatype":"FP16","data":[1]}`)},
		{"too few elements", in(`{"name":"x","shape":[3],"datatype":"FP32","data":[1,2]}`)},
		{"too many elements", in(`{"name":"x","shape":[1],"datatype":"FP32","data":[1,2]}`)},
		{"negative dimension", in(`{"name":"x","shape":[-1],"datatype":"FP32","data":[]}`)},
		{"string for FP32", in(`{"name":"x","shape":[1],"datatype":"FP32","data":["1"]}`)},
		{"fraction for INT64", in(`{"name":"x","shape":[1],"datatype":"INT64","data":[1.5]}`)},
		{"INT32 overflow", in(`{"name":"x","shape":[1],"datatype":"INT32","data":[2147483648]}`)},
		{"FP32 overflow", in(`{"name":"x","shape":[1],"datatype":"FP32","data":[1e39]}`)},
		{"number for BOOL", in(`{"name":"x","shape":[1],"datatype":"BOOL","data":[1]}`)},
		{"number for BYTES", in(`{"name":"x","shape":[1],"datatype":"BYTES","data":[1]}`)},
		{"null element", in(`{"name":"x","shape":[1],"datatype":"FP32","data":[null]}`)},
		{"object element", in(`{"name":"x","shape":[1],"datatype":"FP32","data":[{"a":1}]}`)},
		{"scalar data", in(`{"name":"x","shape":[1],"datatype":"FP32","data":1}`)},
		{"no data", in(`{"name":"x","shape":[1],"datatype":"FP32"}`)},
		{"binary size without the header", in(`{"name":"x","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4}}`)},
		{"unnamed output", in(`{"name":"x","shape":[1],"datatype":"FP32","data":[1]}`) + `,"outputs":[{}]}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if _, err := DecodeRESTRequest(iris, []byte(tt.give), -1); !errors.Is(err, tensor.ErrInvalid) {
				t.Fatalf("error = %v, want tensor.ErrInvalid", err)
			}
		})
	}
}

func TestEncodeRESTResponse(t *testing.T) {
	t.Parallel()
	out, err := EncodeRESTResponse(&tensor.Response{Model: iris, ID: "r1", Outputs: []tensor.Tensor{
		{Name: "label", Datatype: tensor.INT64, Shape: []int64{2}, Data: []int64{0, 2}},
		{Name: "text", Datatype: tensor.BYTES, Shape: []int64{1}, Data: [][]byte{[]byte("setosa")}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	want := `{"model_name":"iris","model_version":"1","id":"r1","outputs":[{"name":"label","datatype":"INT64","shape":[2],"data":[0,2]},{"name":"text","datatype":"BYTES","shape":[1],"data":["setosa"]}]}`
	if diff := cmp.Diff(want, string(out)); diff != "" {
		t.Fatal(diff)
	}
}

func FuzzDecodeInferRequest(f *testing.F) {
	for _, seed := range []string{
		`{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[[1,2,3,4]]}]}`,
		`{"inputs":[{"name":"b","shape":[2],"datatype":"BYTES","data":["a","b"]}],"outputs":[{"name":"label"}]}`,
		`{"inputs":[{"name":"x","shape":[1000000000,1000000000],"datatype":"BOOL","data":[true]}]}`,
		`{"inputs":[{"name":"x","shape":[2],"datatype":"INT64","data":[[[1]],[[2]]]}]}`,
	} {
		f.Add([]byte(seed), -1)
	}
	bin := `{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4}}]}`
	f.Add(append([]byte(bin), 0, 0, 128, 63), len(bin))
	f.Fuzz(func(t *testing.T, body []byte, jsonLen int) {
		req, err := DecodeRESTRequest(iris, body, jsonLen)
		if err != nil {
			if !errors.Is(err, tensor.ErrInvalid) {
				t.Fatalf("error %v is not a client error", err)
			}
			return
		}
		for _, in := range req.Inputs {
			if err := in.Validate(); err != nil {
				t.Fatalf("decoded an invalid tensor: %v", err)
			}
		}
	})
}

func TestDecodeRESTRequestBinaryExtension(t *testing.T) {
	t.Parallel()
	js := `{"inputs":[{"name":"a","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}},` +
		`{"name":"b","shape":[1],"datatype":"INT64","data":[7]},` +
		`{"name":"c","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":6}}]}`
	a, _ := tensor.EncodeRaw(tensor.Tensor{Datatype: tensor.FP32, Data: []float32{1.5, -2}})
	c, _ := tensor.EncodeRaw(tensor.Tensor{Datatype: tensor.BYTES, Data: [][]byte{[]byte("hi")}})
	body := append(append([]byte(js), a...), c...)
	got, err := DecodeRESTRequest(iris, body, len(js))
	if err != nil {
		t.Fatal(err)
	}
	want := &tensor.Request{Model: iris, Inputs: []tensor.Tensor{
		{Name: "a", Datatype: tensor.FP32, Shape: []int64{2}, Data: []float32{1.5, -2}},
		{Name: "b", Datatype: tensor.INT64, Shape: []int64{1}, Data: []int64{7}},
		{Name: "c", Datatype: tensor.BYTES, Shape: []int64{1}, Data: [][]byte{[]byte("hi")}},
	}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("(-want +got):\n%s", diff)
	}
	for _, tt := range []struct {
		name    string
		body    []byte
		jsonLen int
	}{
		{"header longer than the body", body, len(body) + 1},
		{"bytes left over", append(body, 0), len(js)},
		{"size overruns", body[:len(body)-1], len(js)},
		{"size not a count", []byte(`{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":1.5}}]}`), 89},
	} {
		if _, err := DecodeRESTRequest(iris, tt.body, tt.jsonLen); !errors.Is(err, tensor.ErrInvalid) {
			t.Errorf("%s: error %v, want tensor.ErrInvalid", tt.name, err)
		}
	}
}
