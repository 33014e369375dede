//go:build wasip1

package proxywasm

import "unsafe"

// Host functions of the proxy-wasm ABI 0.2.1 that the binding uses, imported from module
// "env". Pointers are addresses in this module's linear memory; ret* arguments are where
// the host writes the address and size of memory it obtained from proxy_on_memory_allocate.
// Strings are passed as (address, length) pairs by the Go compiler.

//go:wasmimport env proxy_log
func proxyLog(level logLevel, msg string) status

//go:wasmimport env proxy_get_log_level
func proxyGetLogLevel(retLevel *logLevel) status

//go:wasmimport env proxy_get_buffer_bytes
func proxyGetBufferBytes(bt bufferType, start, maxSize uint32, retData, retSize *uint32) status

//go:wasmimport env proxy_get_header_map_pairs
func proxyGetHeaderMapPairs(mt mapType, retData, retSize *uint32) status

//go:wasmimport env proxy_get_header_map_value
func proxyGetHeaderMapValue(mt mapType, key string, retData, retSize *uint32) status

//go:wasmimport env proxy_replace_header_map_value
func proxyReplaceHeaderMapValue(mt mapType, key, value string) status

//go:wasmimport env proxy_remove_header_map_value
func proxyRemoveHeaderMapValue(mt mapType, key string) status

//go:wasmimport env proxy_send_local_response
func proxySendLocalResponse(statusCode uint32, details string, body unsafe.Pointer, bodySize uint32,
	headers unsafe.Pointer, headersSize uint32, grpcStatus int32) status

//go:wasmimport env proxy_define_metric
func proxyDefineMetric(mt metricType, name string, retID *uint32) status

//go:wasmimport env proxy_increment_metric
func proxyIncrementMetric(id uint32, offset int64) status

//go:wasmimport env proxy_call_foreign_function
func proxyCallForeignFunction(name string, param unsafe.Pointer, paramSize uint32, retData, retSize *uint32) status
