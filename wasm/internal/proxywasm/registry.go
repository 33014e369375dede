package proxywasm

import (
	"fmt"
	"unsafe"

	"github.com/modelmesh/mesh/wasm/internal/proxywasm/types"
)

// registry owns every context of this VM: the plugin's VM context, its root (plugin)
// contexts and its HTTP stream contexts, each keyed by the context id the host gives it,
// and the memory handed to the host through proxy_on_memory_allocate.
//
// The ABI forces one package-level instance (reg, below): the host enters the module only
// through exported functions, which are plain functions without a receiver or a closure,
// and the only thing they are given is a context id. Everything else in the binding and
// the filter is reached from here.
type registry struct {
	vm      types.VMContext
	plugins map[uint32]types.PluginContext
	// streams maps a stream's context id to its context; nil when the plugin declined
	// the stream (NewHttpContext returned nil), so the callbacks pass it through.
	streams map[uint32]types.HttpContext

	// pinned keeps every buffer the host asked for, keyed by its address in linear
	// memory, until the host call that asked for it has returned and the binding has
	// taken it. Without a reference here Go's collector could free the buffer while the
	// host still writes into it, or before the binding reads it.
	pinned map[uint32][]byte
	// depth counts the callbacks in progress; pinned buffers nobody took are dropped
	// when the outermost one returns (by then no host call can still refer to them).
	depth int
}

var reg = newRegistry()

func newRegistry() *registry {
	return &registry{
		vm:      &types.DefaultVMContext{},
		plugins: map[uint32]types.PluginContext{},
		streams: map[uint32]types.HttpContext{},
		pinned:  map[uint32][]byte{},
	}
}

// SetVMContext installs the plugin. Call it from an init function: the host calls the
// callbacks only after _initialize, which runs the package initialisers.
func SetVMContext(vm types.VMContext) { reg.vm = vm }

// enter and exit bracket every callback from the host.
func (r *registry) enter() { r.depth++ }

func (r *registry) exit() {
	r.depth--
	if r.depth == 0 && len(r.pinned) > 0 {
		clear(r.pinned)
	}
}

// allocate serves proxy_on_memory_allocate: it returns the address of a new buffer of size
// bytes and pins the buffer until take.
func (r *registry) allocate(size uint32) uint32 {
	// A zero-sized request still needs a distinct, valid address.
	buf := make([]byte, max(size, 1))
	addr := address(buf)
	r.pinned[addr] = buf
	return addr
}

// take unpins the buffer the host returned at addr and gives back its first size bytes.
// An address the binding did not allocate (the host returns 0 for nothing) yields nil.
func (r *registry) take(addr, size uint32) ([]byte, error) {
	if addr == 0 && size == 0 {
		return nil, nil
	}
	buf, ok := r.pinned[addr]
	if !ok {
		return nil, fmt.Errorf("host returned memory at %#x that the plugin did not allocate", addr)
	}
	delete(r.pinned, addr)
	if uint64(size) > uint64(len(buf)) {
		return nil, fmt.Errorf("host returned %d bytes in a buffer of %d", size, len(buf))
	}
	return buf[:size], nil
}

// address is the position of b in linear memory; wasm32 addresses fit in 32 bits.
func address(b []byte) uint32 { return uint32(uintptr(unsafe.Pointer(unsafe.SliceData(b)))) }

func (r *registry) contextCreate(id, parent uint32) {
	if parent == 0 {
		r.plugins[id] = r.vm.NewPluginContext(id)
		return
	}
	p, ok := r.plugins[parent]
	if !ok {
		panic(fmt.Sprintf("proxy_on_context_create: %d names unknown root context %d", id, parent))
	}
	r.streams[id] = p.NewHttpContext(id)
}

func (r *registry) plugin(id uint32, callback string) types.PluginContext {
	p, ok := r.plugins[id]
	if !ok {
		panic(fmt.Sprintf("%s: unknown root context %d", callback, id))
	}
	return p
}

// stream returns the stream's context, nil when the plugin declined it. An id the host
// never created is a host bug; trapping then is safer than guessing.
func (r *registry) stream(id uint32, callback string) types.HttpContext {
	s, ok := r.streams[id]
	if !ok {
		panic(fmt.Sprintf("%s: unknown stream context %d", callback, id))
	}
	return s
}

func (r *registry) vmStart(size int) bool { return bool(r.vm.OnVMStart(size)) }

func (r *registry) configure(id uint32, size int) bool {
	return bool(r.plugin(id, "proxy_on_configure").OnPluginStart(size))
}

func (r *registry) requestHeaders(id uint32, n int, eos bool) types.Action {
	if s := r.stream(id, "proxy_on_request_headers"); s != nil {
		return s.OnHttpRequestHeaders(n, eos)
	}
	return types.ActionContinue
}

func (r *registry) requestBody(id uint32, size int, eos bool) types.Action {
	if s := r.stream(id, "proxy_on_request_body"); s != nil {
		return s.OnHttpRequestBody(size, eos)
	}
	return types.ActionContinue
}

func (r *registry) requestTrailers(id uint32, n int) types.Action {
	if s := r.stream(id, "proxy_on_request_trailers"); s != nil {
		return s.OnHttpRequestTrailers(n)
	}
	return types.ActionContinue
}

func (r *registry) delete(id uint32) {
	delete(r.streams, id)
	delete(r.plugins, id)
}
