package main

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/modelmesh/mesh/internal/wire"
)

// grpcPrefixSize is the size of a gRPC message's prefix: a compressed flag byte and the
// big-endian length of the message that follows.
const grpcPrefixSize = 5

// Protobuf wire types.
const (
	wireVarint     = 0
	wireFixed64    = 1
	wireBytes      = 2
	wireStartGroup = 3
	wireEndGroup   = 4
	wireFixed32    = 5
)

// maxFieldNumber is the largest field number protobuf allows; maxGroupDepth bounds nested
// (deprecated) groups so that a hostile body costs little.
const (
	maxFieldNumber = 1<<29 - 1
	maxGroupDepth  = 64
)

var errTruncated = errors.New("truncated")

// bodyModel is what the first message of a KServe v2 gRPC call names: fields 1 (model_name
// or name) and 2 (model_version or version) of ModelInferRequest, ModelMetadataRequest and
// ModelReadyRequest. Empty strings when the fields are absent.
type bodyModel struct {
	name, version string
}

// firstMessage inspects the body buffered so far. complete is false while the first gRPC
// message is not all there. A compressed message (flag 1) is complete with no fields: the
// filter does not decompress. A message longer than maxSize fails with errTooLarge before it
// is buffered; malformed input fails with an error wrapping errInvalid. It never panics.
func firstMessage(body []byte, maxSize uint32) (m bodyModel, complete bool, err error) {
	if len(body) < grpcPrefixSize {
		return m, false, nil
	}
	switch body[0] {
	case 0:
	case 1:
		return m, true, nil
	default:
		return m, false, fmt.Errorf("%w: gRPC message flag %d is neither 0 nor 1", errInvalid, body[0])
	}
	size := binary.BigEndian.Uint32(body[1:grpcPrefixSize])
	if size > maxSize {
		return m, false, fmt.Errorf("%w: the first gRPC message is %d bytes, more than the %d this gateway buffers to find the model name; send the %s header",
			errTooLarge, size, maxSize, wire.HeaderModel)
	}
	if uint64(len(body)-grpcPrefixSize) < uint64(size) {
		return m, false, nil
	}
	m, err = parseModelFields(body[grpcPrefixSize : grpcPrefixSize+int(size)])
	if err != nil {
		return bodyModel{}, false, fmt.Errorf("%w: malformed gRPC request message: %w", errInvalid, err)
	}
	return m, true, nil
}

// parseModelFields reads fields 1 and 2 of a protobuf message as strings, skipping every
// other field whatever its wire type. As in protobuf's own decoders, the last occurrence
// of a field wins, and a field 1 or 2 that is not length-delimited is an unknown field.
func parseModelFields(msg []byte) (bodyModel, error) {
	var m bodyModel
	var groups []uint64 // field numbers of the groups being skipped, innermost last
	for len(msg) > 0 {
		tag, n := varint(msg)
		if n == 0 {
			return m, fmt.Errorf("tag: %w", errTruncated)
		}
		msg = msg[n:]
		field, wire := tag>>3, tag&7
		if field == 0 || field > maxFieldNumber {
			return m, fmt.Errorf("field number %d out of range", field)
		}
		switch wire {
		case wireVarint:
			if _, n := varint(msg); n == 0 {
				return m, fmt.Errorf("field %d varint: %w", field, errTruncated)
			} else {
				msg = msg[n:]
			}
		case wireFixed64, wireFixed32:
			size := 8
			if wire == wireFixed32 {
				size = 4
			}
			if len(msg) < size {
				return m, fmt.Errorf("field %d fixed: %w", field, errTruncated)
			}
			msg = msg[size:]
		case wireBytes:
			size, n := varint(msg)
			if n == 0 {
				return m, fmt.Errorf("field %d length: %w", field, errTruncated)
			}
			msg = msg[n:]
			if size > uint64(len(msg)) {
				return m, fmt.Errorf("field %d: length %d beyond the %d bytes left", field, size, len(msg))
			}
			if len(groups) == 0 {
				switch field {
				case 1:
					m.name = string(msg[:size])
				case 2:
					m.version = string(msg[:size])
				}
			}
			msg = msg[size:]
		case wireStartGroup:
			if len(groups) == maxGroupDepth {
				return m, fmt.Errorf("groups nested deeper than %d", maxGroupDepth)
			}
			groups = append(groups, field)
		case wireEndGroup:
			if len(groups) == 0 || groups[len(groups)-1] != field {
				return m, fmt.Errorf("end of group %d that was not started", field)
			}
			groups = groups[:len(groups)-1]
		default:
			return m, fmt.Errorf("field %d: invalid wire type %d", field, wire)
		}
	}
	if len(groups) > 0 {
		return m, fmt.Errorf("group %d: %w", groups[len(groups)-1], errTruncated)
	}
	return m, nil
}

// varint decodes a base-128 varint of at most 10 bytes. n is 0 when b ends inside the
// varint or the varint overflows 64 bits.
func varint(b []byte) (v uint64, n int) {
	for i := 0; i < len(b) && i < 10; i++ {
		c := b[i]
		if i == 9 && c > 1 {
			return 0, 0 // the tenth byte may carry only the 64th bit
		}
		v |= uint64(c&0x7f) << (7 * i)
		if c < 0x80 {
			return v, i + 1
		}
	}
	return 0, 0
}
