//go:build wasip1

package proxywasm

// Callbacks of the proxy-wasm ABI 0.2.1, exported to the host: only those the filter needs.
// The host skips a callback the module does not export (the response's headers, body and
// trailers, proxy_on_log, proxy_on_done), and each one it does call is a crossing into the
// Go runtime on every request (docs/benchmarks.md, "Hot path attribution"). Each one
// brackets its work with reg.enter/exit so that memory allocated for the host is released
// once the host is done with it. Booleans cross the ABI as i32 (0 false, anything else
// true).

//go:wasmexport proxy_abi_version_0_2_1
func proxyABIVersion() {}

//go:wasmexport proxy_on_memory_allocate
func proxyOnMemoryAllocate(size uint32) uint32 { return reg.allocate(size) }

//go:wasmexport proxy_on_context_create
func proxyOnContextCreate(id, parent uint32) {
	reg.enter()
	defer reg.exit()
	reg.contextCreate(id, parent)
}

//go:wasmexport proxy_on_vm_start
func proxyOnVMStart(_ uint32, size uint32) bool {
	reg.enter()
	defer reg.exit()
	return reg.vmStart(int(size))
}

//go:wasmexport proxy_on_configure
func proxyOnConfigure(id, size uint32) bool {
	reg.enter()
	defer reg.exit()
	return reg.configure(id, int(size))
}

//go:wasmexport proxy_on_request_headers
func proxyOnRequestHeaders(id, n, eos uint32) uint32 {
	reg.enter()
	defer reg.exit()
	return uint32(reg.requestHeaders(id, int(n), eos != 0))
}

//go:wasmexport proxy_on_request_body
func proxyOnRequestBody(id, size, eos uint32) uint32 {
	reg.enter()
	defer reg.exit()
	return uint32(reg.requestBody(id, int(size), eos != 0))
}

//go:wasmexport proxy_on_request_trailers
func proxyOnRequestTrailers(id, n uint32) uint32 {
	reg.enter()
	defer reg.exit()
	return uint32(reg.requestTrailers(id, int(n)))
}

//go:wasmexport proxy_on_delete
func proxyOnDelete(id uint32) {
	reg.enter()
	defer reg.exit()
	reg.delete(id)
}
