//go:build wasip1

package proxywasm

import (
	"fmt"
	"math"
	"unsafe"
)

// retData and retSize receive the address and size of memory the host returns. They are
// package-level so that they never move: the host writes them after calling
// proxy_on_memory_allocate, which runs Go code that may grow (and so move) the goroutine
// stack, and a stack variable's old address would then be stale.
var retData, retSize uint32

// returned takes the memory a host call has just returned.
func returned() ([]byte, error) {
	b, err := reg.take(retData, retSize)
	retData, retSize = 0, 0
	return b, err
}

// GetVMConfiguration returns vm_config.configuration; only during VMContext.OnVMStart.
func GetVMConfiguration() ([]byte, error) {
	return getBuffer(bufferVMConfiguration, 0, math.MaxInt32)
}

// GetPluginConfiguration returns the plugin's configuration; only during
// PluginContext.OnPluginStart.
func GetPluginConfiguration() ([]byte, error) {
	return getBuffer(bufferPluginConfiguration, 0, math.MaxInt32)
}

// GetHttpRequestBody returns up to maxSize bytes of the request body buffered in the host,
// from start; only during HttpContext.OnHttpRequestBody.
func GetHttpRequestBody(start, maxSize int) ([]byte, error) {
	return getBuffer(bufferHTTPRequestBody, start, maxSize)
}

func getBuffer(bt bufferType, start, maxSize int) ([]byte, error) {
	if start < 0 || maxSize < 0 || start > math.MaxInt32 || maxSize > math.MaxInt32 {
		return nil, fmt.Errorf("buffer range %d+%d out of bounds", start, maxSize)
	}
	if err := proxyGetBufferBytes(bt, uint32(start), uint32(maxSize), &retData, &retSize).err(); err != nil {
		return nil, err
	}
	return returned()
}

// GetHttpRequestHeaders returns every request header (pseudo-headers such as :path
// included) in the host's order; during the request callbacks.
func GetHttpRequestHeaders() ([][2]string, error) {
	if err := proxyGetHeaderMapPairs(mapHTTPRequestHeaders, &retData, &retSize).err(); err != nil {
		return nil, err
	}
	b, err := returned()
	if err != nil {
		return nil, err
	}
	return decodeMap(b)
}

// GetHttpRequestHeader returns the first value of the request header key;
// types.ErrorStatusNotFound when there is none.
func GetHttpRequestHeader(key string) (string, error) {
	if err := proxyGetHeaderMapValue(mapHTTPRequestHeaders, key, &retData, &retSize).err(); err != nil {
		return "", err
	}
	b, err := returned()
	return string(b), err
}

// ReplaceHttpRequestHeader sets the request header key to the single value, adding it if
// absent; during the request callbacks, while the headers have not been passed on.
func ReplaceHttpRequestHeader(key, value string) error {
	return proxyReplaceHeaderMapValue(mapHTTPRequestHeaders, key, value).err()
}

// RemoveHttpRequestHeader removes every value of the request header key.
func RemoveHttpRequestHeader(key string) error {
	return proxyRemoveHeaderMapValue(mapHTTPRequestHeaders, key).err()
}

// SendHttpResponse answers the stream locally with statusCode, headers and body; the
// request goes no further. gRPCStatus -1 means none; otherwise a gRPC client sees that
// status with the body as its message. Return types.ActionPause from the callback after it.
func SendHttpResponse(statusCode uint32, headers [][2]string, body []byte, gRPCStatus int32) error {
	h := encodeMap(headers)
	return proxySendLocalResponse(statusCode, "",
		unsafe.Pointer(unsafe.SliceData(body)), uint32(len(body)),
		unsafe.Pointer(unsafe.SliceData(h)), uint32(len(h)), gRPCStatus).err()
}

// CallForeignFunction calls a function the host registered under funcName with param and
// returns its result; types.ErrorStatusNotFound when the host has no such function.
func CallForeignFunction(funcName string, param []byte) ([]byte, error) {
	if err := proxyCallForeignFunction(funcName, unsafe.Pointer(unsafe.SliceData(param)), uint32(len(param)),
		&retData, &retSize).err(); err != nil {
		return nil, err
	}
	return returned()
}

// MetricCounter is a counter defined in the host's stats (in Envoy, under the wasmcustom
// namespace).
type MetricCounter uint32

// DefineCounterMetric defines (or finds) the counter called name. Like the SDK's, it panics
// when the host refuses.
func DefineCounterMetric(name string) MetricCounter {
	var id uint32
	if err := proxyDefineMetric(metricCounter, name, &id).err(); err != nil {
		panic(fmt.Sprintf("define counter %s: %v", name, err))
	}
	return MetricCounter(id)
}

// Increment adds offset to the counter. Like the SDK's, it panics when the host refuses.
func (m MetricCounter) Increment(offset uint64) {
	if err := proxyIncrementMetric(uint32(m), int64(offset)).err(); err != nil {
		panic(fmt.Sprintf("increment counter %d: %v", uint32(m), err))
	}
}

// DebugEnabled reports whether the host logs at debug level: callers check it before they
// format a debug message, which otherwise costs its formatting on every request while the
// host drops it.
func DebugEnabled() bool {
	var level logLevel
	return proxyGetLogLevel(&level) != statusOK || level <= logDebug
}

// LogDebugf logs at debug level in the host's log.
func LogDebugf(format string, args ...any) { proxyLog(logDebug, fmt.Sprintf(format, args...)) }

// LogInfof logs at info level in the host's log.
func LogInfof(format string, args ...any) { proxyLog(logInfo, fmt.Sprintf(format, args...)) }

// LogWarnf logs at warn level in the host's log.
func LogWarnf(format string, args ...any) { proxyLog(logWarn, fmt.Sprintf(format, args...)) }

// LogErrorf logs at error level in the host's log.
func LogErrorf(format string, args ...any) { proxyLog(logError, fmt.Sprintf(format, args...)) }
