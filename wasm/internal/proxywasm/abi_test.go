package proxywasm

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/modelmesh/mesh/wasm/internal/proxywasm/types"
)

func TestMapRoundTrip(t *testing.T) {
	t.Parallel()
	for _, pairs := range [][][2]string{
		{},
		{{":path", "/v2/models/iris/infer"}},
		{{"a", ""}, {"", "b"}, {"x-mesh-foo", "1"}, {"x-mesh-foo", "2"}},
	} {
		got, err := decodeMap(encodeMap(pairs))
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(pairs, got); diff != "" {
			t.Errorf("round trip (-want +got):\n%s", diff)
		}
	}
}

func TestMapLayout(t *testing.T) {
	t.Parallel()
	want := []byte{1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 'k', 0, 'v', 'w', 0}
	if diff := cmp.Diff(want, encodeMap([][2]string{{"k", "vw"}})); diff != "" {
		t.Errorf("layout (-want +got):\n%s", diff)
	}
}

func TestDecodeMapMalformed(t *testing.T) {
	t.Parallel()
	for _, b := range [][]byte{
		{1, 0},
		{1, 0, 0, 0},                         // one pair, no sizes
		{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0}, // count overflowing the buffer
		{1, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 'k'},         // key beyond the data
		{1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 'k', 0, 'v'}, // value without its NUL
		{1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0},
	} {
		if _, err := decodeMap(b); !errors.Is(err, errBadMap) {
			t.Errorf("decodeMap(% x) error %v, want errBadMap", b, err)
		}
	}
}

func TestStatusErr(t *testing.T) {
	t.Parallel()
	if statusOK.err() != nil || !errors.Is(statusNotFound.err(), types.ErrorStatusNotFound) ||
		!errors.Is(statusBadArgument.err(), types.ErrorStatusBadArgument) || status(99).err() == nil {
		t.Error("status errors do not match the SDK's")
	}
}

// FuzzDecodeMap checks that no host answer makes the decoder panic, and that what it
// decodes is what the input encodes (bytes after the last pair aside).
func FuzzDecodeMap(f *testing.F) {
	f.Add(encodeMap([][2]string{{"a", "b"}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		pairs, err := decodeMap(b)
		if err != nil || len(b) == 0 {
			return
		}
		if enc := encodeMap(pairs); len(enc) > len(b) || string(b[:len(enc)]) != string(enc) {
			t.Fatalf("decoded %q does not re-encode to the input's prefix", pairs)
		}
	})
}
