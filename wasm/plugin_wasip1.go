//go:build wasip1

package main

import (
	"errors"
	"fmt"

	"github.com/modelmesh/mesh/wasm/internal/proxywasm"
	"github.com/modelmesh/mesh/wasm/internal/proxywasm/types"
)

func init() { proxywasm.SetVMContext(&vmContext{}) }

// vmContext, pluginContext and httpContext connect the ABI's contexts to plugin and
// stream; they hold no logic of their own.
type vmContext struct{ types.DefaultVMContext }

func (*vmContext) NewPluginContext(uint32) types.PluginContext { return &pluginContext{} }

type pluginContext struct {
	types.DefaultPluginContext
	plugin *plugin // nil until a configuration was accepted
}

func (p *pluginContext) OnPluginStart(int) types.OnPluginStartStatus {
	data, err := proxywasm.GetPluginConfiguration()
	if err != nil && !errors.Is(err, types.ErrorStatusNotFound) {
		proxywasm.LogErrorf("modelid: read the plugin configuration: %v", err)
		return types.OnPluginStartStatusFailed
	}
	next := &plugin{}
	if p.plugin != nil {
		*next = *p.plugin
	}
	if err := next.configure(data, abiHost{}, proxywasm.LogWarnf); err != nil {
		proxywasm.LogErrorf("modelid: configuration rejected: %v", err)
		return types.OnPluginStartStatusFailed
	}
	p.plugin = next
	proxywasm.LogInfof("modelid: configured: max_models=%d max_grpc_message_bytes=%d",
		next.cfg.MaxModels, next.cfg.MaxGRPCMessageBytes)
	return types.OnPluginStartStatusOK
}

func (p *pluginContext) NewHttpContext(uint32) types.HttpContext {
	return &httpContext{s: stream{host: abiHost{}, plugin: p.plugin}}
}

type httpContext struct {
	types.DefaultHttpContext
	s stream
}

func (h *httpContext) OnHttpRequestHeaders(_ int, endOfStream bool) types.Action {
	return h.s.onRequestHeaders(endOfStream)
}

func (h *httpContext) OnHttpRequestBody(size int, endOfStream bool) types.Action {
	return h.s.onRequestBody(size, endOfStream)
}

func (h *httpContext) OnHttpRequestTrailers(int) types.Action { return h.s.onRequestTrailers() }

// abiHost implements host and metricHost with the binding's calls, which act on the
// stream the host is currently calling back for.
type abiHost struct{}

func (abiHost) RequestHeaders() ([][2]string, error) { return proxywasm.GetHttpRequestHeaders() }

func (abiHost) ReplaceRequestHeader(name, value string) error {
	return proxywasm.ReplaceHttpRequestHeader(name, value)
}

func (abiHost) RemoveRequestHeader(name string) error {
	return proxywasm.RemoveHttpRequestHeader(name)
}

func (abiHost) RequestBody(size int) ([]byte, error) { return proxywasm.GetHttpRequestBody(0, size) }

func (abiHost) SendResponse(code uint32, headers [][2]string, body []byte, grpcStatus int32) error {
	return proxywasm.SendHttpResponse(code, headers, body, grpcStatus)
}

// ClearRouteCache calls Envoy's clear_route_cache foreign function: since Envoy 1.33 a
// filter's header changes no longer clear the route cache by themselves.
func (abiHost) ClearRouteCache() error {
	_, err := proxywasm.CallForeignFunction("clear_route_cache", nil)
	return err
}

func (abiHost) DebugEnabled() bool { return proxywasm.DebugEnabled() }

func (abiHost) Debugf(format string, args ...any) { proxywasm.LogDebugf(format, args...) }

func (abiHost) Warnf(format string, args ...any) { proxywasm.LogWarnf(format, args...) }

// DefineCounter turns the SDK-shaped binding's panic on a host refusal into an error.
func (abiHost) DefineCounter(name string) (c counter, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%v", r)
		}
	}()
	return abiCounter(proxywasm.DefineCounterMetric(name)), nil
}

// abiCounter logs a host refusal to count rather than trapping the VM for a stat.
type abiCounter proxywasm.MetricCounter

func (c abiCounter) Increment(offset uint64) {
	defer func() {
		if r := recover(); r != nil {
			proxywasm.LogWarnf("modelid: %v", r)
		}
	}()
	proxywasm.MetricCounter(c).Increment(offset)
}
