// Package types holds the values and context interfaces of the proxy-wasm binding in
// ../proxywasm. Names and shapes follow github.com/tetratelabs/proxy-wasm-go-sdk's
// proxywasm/types package, reduced to what the model id filter uses, so that moving the
// filter to that SDK is a change of import paths.
package types

import "errors"

// Action tells the host whether to continue with the stream after a callback returns.
type Action uint32

const (
	// ActionContinue lets the host pass the headers or body on to the next filter.
	ActionContinue Action = 0
	// ActionPause makes the host hold the stream: at the headers it stops iteration, at the
	// body it buffers the data seen so far. The plugin resumes the stream by returning
	// ActionContinue from a later callback, or ends it with a local response.
	ActionPause Action = 1
)

// OnVMStartStatus is what VMContext.OnVMStart returns; false makes the host fail the VM.
type OnVMStartStatus bool

const (
	// OnVMStartStatusOK accepts the VM start.
	OnVMStartStatusOK OnVMStartStatus = true
	// OnVMStartStatusFailed rejects the VM start.
	OnVMStartStatusFailed OnVMStartStatus = false
)

// OnPluginStartStatus is what PluginContext.OnPluginStart returns; false makes the host
// reject the plugin configuration.
type OnPluginStartStatus bool

const (
	// OnPluginStartStatusOK accepts the plugin configuration.
	OnPluginStartStatusOK OnPluginStartStatus = true
	// OnPluginStartStatusFailed rejects the plugin configuration.
	OnPluginStartStatusFailed OnPluginStartStatus = false
)

// Errors returned by host calls, one per status code of the ABI that a call can return.
var (
	// ErrorStatusNotFound: the key, buffer or function asked for does not exist.
	ErrorStatusNotFound = errors.New("error status returned by host: not found")
	// ErrorStatusBadArgument: the host refused an argument, or the call is not allowed in
	// the current callback.
	ErrorStatusBadArgument = errors.New("error status returned by host: bad argument")
	// ErrorStatusEmpty: a queue had nothing to return.
	ErrorStatusEmpty = errors.New("error status returned by host: empty")
	// ErrorStatusCasMismatch: a compare-and-swap on shared data lost the race.
	ErrorStatusCasMismatch = errors.New("error status returned by host: cas mismatch")
	// ErrorInternalFailure: the host failed for a reason of its own.
	ErrorInternalFailure = errors.New("error status returned by host: internal failure")
	// ErrorUnimplemented: the host does not implement the call.
	ErrorUnimplemented = errors.New("error status returned by host: unimplemented")
)

// VMContext is the plugin's per-VM state. The binding calls it once per VM.
type VMContext interface {
	// OnVMStart runs once, after the VM is created; vm_config.configuration is readable
	// through proxywasm.GetVMConfiguration during the call.
	OnVMStart(vmConfigurationSize int) OnVMStartStatus
	// NewPluginContext makes the state of one plugin configuration (a root context).
	NewPluginContext(contextID uint32) PluginContext
}

// PluginContext is the state of one plugin configuration; it outlives the HTTP streams it
// creates.
type PluginContext interface {
	// OnPluginStart runs at each (re)configuration; the configuration is readable through
	// proxywasm.GetPluginConfiguration during the call. Returning
	// OnPluginStartStatusFailed rejects it.
	OnPluginStart(pluginConfigurationSize int) OnPluginStartStatus
	// NewHttpContext makes the state of one HTTP stream.
	NewHttpContext(contextID uint32) HttpContext
}

// HttpContext is the state of one HTTP stream. Its callbacks run one at a time, on the
// host's thread for the stream.
type HttpContext interface {
	// OnHttpRequestHeaders runs when the request headers arrive.
	OnHttpRequestHeaders(numHeaders int, endOfStream bool) Action
	// OnHttpRequestBody runs for each request body chunk. bodySize is the size of the
	// body buffered so far when earlier chunks were paused, else of this chunk.
	OnHttpRequestBody(bodySize int, endOfStream bool) Action
	// OnHttpRequestTrailers runs when request trailers arrive.
	OnHttpRequestTrailers(numTrailers int) Action
}

// DefaultVMContext implements VMContext with no-ops; embed it and override what you need.
type DefaultVMContext struct{}

// DefaultPluginContext implements PluginContext with no-ops; embed it and override what
// you need.
type DefaultPluginContext struct{}

// DefaultHttpContext implements HttpContext by continuing every stream; embed it and
// override what you need.
type DefaultHttpContext struct{}

var (
	_ VMContext     = &DefaultVMContext{}
	_ PluginContext = &DefaultPluginContext{}
	_ HttpContext   = &DefaultHttpContext{}
)

// OnVMStart accepts the VM.
func (*DefaultVMContext) OnVMStart(int) OnVMStartStatus { return OnVMStartStatusOK }

// NewPluginContext returns a DefaultPluginContext.
func (*DefaultVMContext) NewPluginContext(uint32) PluginContext { return &DefaultPluginContext{} }

// OnPluginStart accepts any configuration.
func (*DefaultPluginContext) OnPluginStart(int) OnPluginStartStatus {
	return OnPluginStartStatusOK
}

// NewHttpContext returns nil: the plugin does not handle HTTP streams.
func (*DefaultPluginContext) NewHttpContext(uint32) HttpContext { return nil }

// OnHttpRequestHeaders continues.
func (*DefaultHttpContext) OnHttpRequestHeaders(int, bool) Action { return ActionContinue }

// OnHttpRequestBody continues.
func (*DefaultHttpContext) OnHttpRequestBody(int, bool) Action { return ActionContinue }

// OnHttpRequestTrailers continues.
func (*DefaultHttpContext) OnHttpRequestTrailers(int) Action { return ActionContinue }
