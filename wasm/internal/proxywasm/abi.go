// Package proxywasm is a small binding of the proxy-wasm ABI 0.2.1 for standard Go built as a
// wasip1 reactor (GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared), which Envoy 1.33
// and newer load (they call _initialize before any other export).
//
// It exists because github.com/tetratelabs/proxy-wasm-go-sdk, whose API it copies in shape,
// compiles only with TinyGo. Only the host calls the model id filter needs are bound; the
// function names and signatures match the SDK's so that moving to it is a change of import
// paths.
//
// The files tagged wasip1 hold the ABI itself (go:wasmimport host calls and go:wasmexport
// callbacks); the rest (context registry, pinned allocations, header map encoding) is plain
// Go tested natively. Every callback and host call runs on the host's single thread for this
// VM, so nothing here takes locks.
package proxywasm

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/modelmesh/mesh/wasm/internal/proxywasm/types"
)

// Enumerations of the ABI (proxy-wasm spec, abi-versions/v0.2.1).
type (
	bufferType uint32
	mapType    uint32
	logLevel   uint32
	metricType uint32
	status     uint32
)

const (
	bufferHTTPRequestBody     bufferType = 0
	bufferVMConfiguration     bufferType = 6
	bufferPluginConfiguration bufferType = 7

	mapHTTPRequestHeaders mapType = 0

	logTrace    logLevel = 0
	logDebug    logLevel = 1
	logInfo     logLevel = 2
	logWarn     logLevel = 3
	logError    logLevel = 4
	logCritical logLevel = 5

	metricCounter metricType = 0

	statusOK              status = 0
	statusNotFound        status = 1
	statusBadArgument     status = 2
	statusEmpty           status = 7
	statusCasMismatch     status = 8
	statusInternalFailure status = 10
	statusUnimplemented   status = 12
)

// err turns a host status into the SDK's error values.
func (s status) err() error {
	switch s {
	case statusOK:
		return nil
	case statusNotFound:
		return types.ErrorStatusNotFound
	case statusBadArgument:
		return types.ErrorStatusBadArgument
	case statusEmpty:
		return types.ErrorStatusEmpty
	case statusCasMismatch:
		return types.ErrorStatusCasMismatch
	case statusInternalFailure:
		return types.ErrorInternalFailure
	case statusUnimplemented:
		return types.ErrorUnimplemented
	}
	return fmt.Errorf("unknown status %d returned by host", uint32(s))
}

var errBadMap = errors.New("malformed header map from host")

// encodeMap lays out header pairs as the ABI wants them: a little-endian uint32 count, then
// the key and value sizes of each pair, then each key and value followed by a NUL byte.
func encodeMap(pairs [][2]string) []byte {
	size := 4
	for _, p := range pairs {
		size += 8 + len(p[0]) + 1 + len(p[1]) + 1
	}
	b := make([]byte, 4+8*len(pairs), size)
	binary.LittleEndian.PutUint32(b, uint32(len(pairs)))
	for i, p := range pairs {
		binary.LittleEndian.PutUint32(b[4+8*i:], uint32(len(p[0])))
		binary.LittleEndian.PutUint32(b[8+8*i:], uint32(len(p[1])))
	}
	for _, p := range pairs {
		b = append(b, p[0]...)
		b = append(b, 0)
		b = append(b, p[1]...)
		b = append(b, 0)
	}
	return b
}

// decodeMap reads the layout encodeMap writes. It checks every size against the buffer, so
// a host bug yields an error rather than a panic.
func decodeMap(b []byte) ([][2]string, error) {
	if len(b) == 0 {
		return nil, nil
	}
	if len(b) < 4 {
		return nil, errBadMap
	}
	n := uint64(binary.LittleEndian.Uint32(b))
	if n > uint64(len(b)-4)/8 {
		return nil, errBadMap
	}
	sizes, data := b[4:4+8*n], b[4+8*n:]
	pairs := make([][2]string, n)
	for i := range pairs {
		for j := range 2 {
			size := uint64(binary.LittleEndian.Uint32(sizes[8*i+4*j:]))
			if size+1 > uint64(len(data)) || data[size] != 0 {
				return nil, errBadMap // each key and value ends with a NUL byte
			}
			pairs[i][j] = string(data[:size])
			data = data[size+1:]
		}
	}
	return pairs, nil
}
