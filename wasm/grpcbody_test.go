package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/proto/inference"
)

// frame prefixes msg with an uncompressed gRPC message header.
func frame(msg ...[]byte) []byte {
	m := bytes.Join(msg, nil)
	return append(binary.BigEndian.AppendUint32([]byte{0}, uint32(len(m))), m...)
}

// str encodes a length-delimited field (field < 16, len < 128): tag, length, bytes.
func str(field byte, s string) []byte {
	return append([]byte{field<<3 | wireBytes, byte(len(s))}, s...)
}

func TestFirstMessage(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		give     []byte
		want     bodyModel
		complete bool
		wantErr  error
	}{
		{name: "empty", give: nil},
		{name: "partial prefix", give: []byte{0, 0, 0}},
		{name: "prefix only", give: []byte{0, 0, 0, 0, 9}},
		{name: "partial message", give: frame(str(1, "iris"))[:8]},
		{name: "empty message", give: frame(), complete: true},
		{name: "name", give: frame(str(1, "iris")), want: bodyModel{name: "iris"}, complete: true},
		{name: "name and version", give: frame(str(1, "iris"), str(2, "3")), want: bodyModel{"iris", "3"}, complete: true},
		{name: "version before name", give: frame(str(2, "3"), str(1, "iris")), want: bodyModel{"iris", "3"}, complete: true},
		{name: "last occurrence wins", give: frame(str(1, "a"), str(3, "x"), str(1, "b")), want: bodyModel{name: "b"}, complete: true},
		{name: "trailing data after the first message is not read",
			give: append(frame(str(1, "iris")), 0xff, 0xff), want: bodyModel{name: "iris"}, complete: true},
		{name: "unknown fields of every wire type",
			give: frame(
				[]byte{3<<3 | wireVarint, 0x96, 0x01}, // varint 150
				[]byte{4<<3 | wireFixed64, 1, 2, 3, 4, 5, 6, 7, 8},
				[]byte{5<<3 | wireFixed32, 1, 2, 3, 4},
				str(6, "tensor"),
				[]byte{7<<3 | wireStartGroup, 1<<3 | wireBytes, 1, 'x', 7<<3 | wireEndGroup}, // group hiding a field 1
				[]byte{0x80, 0x01, 0},                                                        // field 16, varint, two-byte tag
				[]byte{0xf8, 0xff, 0xff, 0xff, 0x0f, 0},                                      // field 2^29-1, varint
				str(1, "iris"), str(2, "7"),
			),
			want: bodyModel{"iris", "7"}, complete: true},
		{name: "field 1 as varint is an unknown field", give: frame([]byte{1<<3 | wireVarint, 5}, str(2, "1")),
			want: bodyModel{version: "1"}, complete: true},
		{name: "nested groups", give: frame([]byte{7<<3 | 3, 8<<3 | 3, 8<<3 | 4, 7<<3 | 4}, str(1, "m")), want: bodyModel{name: "m"}, complete: true},
		{name: "compressed", give: append([]byte{1, 0, 0, 0, 2}, 0xde, 0xad), complete: true},
		{name: "compressed, incomplete", give: []byte{1, 0, 0, 0, 9}, complete: true},
		{name: "bad flag", give: append([]byte{2, 0, 0, 0, 6}, str(1, "iris")...), wantErr: errInvalid},
		{name: "too large", give: []byte{0, 0, 0x10, 0, 1}, wantErr: errTooLarge},
		{name: "truncated tag varint", give: frame([]byte{0x80}), wantErr: errInvalid},
		{name: "truncated value varint", give: frame([]byte{3 << 3, 0x80, 0x80}), wantErr: errInvalid},
		{name: "varint over 10 bytes", give: frame([]byte{3 << 3, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0}), wantErr: errInvalid},
		{name: "varint overflowing 64 bits", give: frame([]byte{3 << 3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02}), wantErr: errInvalid},
		{name: "length beyond the message", give: frame([]byte{1<<3 | wireBytes, 5, 'i', 'r'}), wantErr: errInvalid},
		{name: "length overflowing int", give: frame([]byte{1<<3 | wireBytes, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}), wantErr: errInvalid},
		{name: "truncated fixed64", give: frame([]byte{4<<3 | wireFixed64, 1, 2, 3}), wantErr: errInvalid},
		{name: "truncated fixed32", give: frame([]byte{5<<3 | wireFixed32, 1}), wantErr: errInvalid},
		{name: "field number 0", give: frame([]byte{0 | wireBytes, 0}), wantErr: errInvalid},
		{name: "field number too large", give: frame([]byte{0x80, 0x80, 0x80, 0x80, 0x10, 0}), wantErr: errInvalid},
		{name: "wire type 6", give: frame([]byte{1<<3 | 6}), wantErr: errInvalid},
		{name: "wire type 7", give: frame([]byte{1<<3 | 7}), wantErr: errInvalid},
		{name: "end group without start", give: frame([]byte{7<<3 | 4}), wantErr: errInvalid},
		{name: "mismatched end group", give: frame([]byte{7<<3 | 3, 8<<3 | 4}), wantErr: errInvalid},
		{name: "unterminated group", give: frame([]byte{7<<3 | 3}, str(1, "x")), wantErr: errInvalid},
		{name: "groups too deep", give: frame(bytes.Repeat([]byte{7<<3 | 3}, maxGroupDepth+1)), wantErr: errInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, complete, err := firstMessage(tt.give, 1<<20)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("error %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want || complete != tt.complete {
				t.Errorf("got %+v complete %v, want %+v %v", got, complete, tt.want, tt.complete)
			}
		})
	}
}

func TestVarint(t *testing.T) {
	t.Parallel()
	tests := []struct {
		give []byte
		v    uint64
		n    int
	}{
		{[]byte{0}, 0, 1},
		{[]byte{1, 0xff}, 1, 1},
		{[]byte{0x96, 0x01}, 150, 2},
		{[]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, 1<<64 - 1, 10},
		{[]byte{0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01}, 1 << 63, 10},
		{[]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02}, 0, 0},
		{[]byte{0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00}, 0, 0},
		{[]byte{0x80}, 0, 0},
		{nil, 0, 0},
	}
	for _, tt := range tests {
		if v, n := varint(tt.give); v != tt.v || n != tt.n {
			t.Errorf("varint(% x) = %d, %d; want %d, %d", tt.give, v, n, tt.v, tt.n)
		}
	}
}

// bodyModelFor parses a body the way the filter does, including the id grammar: what the
// fuzzers check.
func bodyModelFor(body []byte) (placement.ModelVersion, bool, error) {
	m, complete, err := firstMessage(body, 1<<16)
	if err != nil || !complete || m.name == "" {
		return placement.ModelVersion{}, complete, err
	}
	mv := placement.ModelVersion{Name: m.name, Version: m.version}
	return mv, true, validate(mv, sourceBody, sourceBody)
}

// FuzzFirstMessage checks that the body parser never panics, that what it accepts passes
// the id grammar, and that it agrees with protobuf-go on every message protobuf-go accepts.
func FuzzFirstMessage(f *testing.F) {
	seed := func(m proto.Message) {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(frame(b))
	}
	seed(&inference.ModelInferRequest{ModelName: "iris", ModelVersion: "1", Id: "req",
		Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: "x", Datatype: "FP32", Shape: []int64{1, 4}}},
		RawInputContents: [][]byte{{1, 2, 3, 4}},
		Parameters:       map[string]*inference.InferParameter{"p": {ParameterChoice: &inference.InferParameter_Int64Param{Int64Param: -1}}},
	})
	seed(&inference.ModelReadyRequest{Name: "digits"})
	seed(&inference.ModelMetadataRequest{Name: "a.b-c_d", Version: "v2"})
	f.Add(frame([]byte{7<<3 | 3, 1<<3 | 2, 1, 'x', 7<<3 | 4}, str(1, "m")))
	f.Add([]byte{1, 0, 0, 0, 0})
	f.Add([]byte{0, 0, 0, 0, 3, 0x80, 0x80, 0x80})
	f.Fuzz(func(t *testing.T, body []byte) {
		mv, complete, err := bodyModelFor(body)
		if err != nil {
			if !errors.Is(err, errInvalid) && !errors.Is(err, errTooLarge) {
				t.Fatalf("error of no class: %v", err)
			}
			return
		}
		if mv.Name != "" {
			if verr := mv.Validate(); verr != nil {
				t.Fatalf("accepted %+v: %v", mv, verr)
			}
		}
		// Differential check on complete, uncompressed messages.
		if !complete || body[0] != 0 {
			return
		}
		size := binary.BigEndian.Uint32(body[1:5])
		msg := body[5 : 5+size]
		var req inference.ModelInferRequest
		if proto.Unmarshal(msg, &req) != nil {
			return // protobuf-go is stricter on the fields the filter skips
		}
		m, perr := parseModelFields(msg)
		if perr != nil {
			t.Fatalf("protobuf-go accepts % x, the filter does not: %v", msg, perr)
		}
		if m.name != req.ModelName || m.version != req.ModelVersion {
			t.Fatalf("filter read %+v, protobuf-go %q %q", m, req.ModelName, req.ModelVersion)
		}
	})
}

// TestFirstMessageMatchesProtobuf checks that the same bytes give the same fields to the
// filter and to protobuf-go for each request type, the name as field 1 in each.
func TestFirstMessageMatchesProtobuf(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("x", 300) // a length over one varint byte
	for _, m := range []proto.Message{
		&inference.ModelInferRequest{ModelName: "iris", ModelVersion: "2", Id: long, RawInputContents: [][]byte{[]byte(long)}},
		&inference.ModelMetadataRequest{Name: "digits", Version: "1"},
		&inference.ModelReadyRequest{Name: "breast-cancer"},
	} {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		got, complete, err := firstMessage(frame(b), 1<<20)
		if err != nil || !complete {
			t.Fatalf("%T: complete %v, error %v", m, complete, err)
		}
		var want bodyModel
		switch m := m.(type) {
		case *inference.ModelInferRequest:
			want = bodyModel{m.ModelName, m.ModelVersion}
		case *inference.ModelMetadataRequest:
			want = bodyModel{m.Name, m.Version}
		case *inference.ModelReadyRequest:
			want = bodyModel{m.Name, m.Version}
		}
		if got != want || !utf8.ValidString(got.name) {
			t.Errorf("%T: got %+v, want %+v", m, got, want)
		}
	}
}
