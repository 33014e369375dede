package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/internal/wire"
	"github.com/modelmesh/mesh/wasm/internal/proxywasm/types"
)

// host is what a stream needs from the proxy for its request. The wasip1 build implements
// it over the proxy-wasm binding; tests implement it in memory.
type host interface {
	RequestHeaders() ([][2]string, error)
	ReplaceRequestHeader(name, value string) error
	RemoveRequestHeader(name string) error
	// RequestBody returns the first size bytes of the request body buffered so far.
	RequestBody(size int) ([]byte, error)
	// SendResponse answers locally; grpcStatus -1 for a plain HTTP answer.
	SendResponse(code uint32, headers [][2]string, body []byte, grpcStatus int32) error
	// ClearRouteCache makes the proxy choose the route again with the new headers.
	ClearRouteCache() error
	// DebugEnabled reports whether Debugf would be logged: checked first, so that a
	// request does not pay for formatting a message the proxy drops.
	DebugEnabled() bool
	Debugf(format string, args ...any)
	Warnf(format string, args ...any)
}

// gRPC status codes of the local replies.
const (
	grpcInvalidArgument   = 3
	grpcResourceExhausted = 8
	grpcInternal          = 13
)

// plugin is the state one plugin configuration shares between its streams.
type plugin struct {
	cfg   config
	stats *stats
}

// configure applies a (re)configuration. The counters survive a reconfiguration: their
// stats already exist in the host.
func (p *plugin) configure(data []byte, metrics metricHost, warnf func(string, ...any)) error {
	cfg, err := parseConfig(data)
	if err != nil {
		return err
	}
	if p.stats == nil {
		if p.stats, err = newStats(metrics, cfg.MaxModels, warnf); err != nil {
			return err
		}
	}
	p.stats.maxModels = cfg.MaxModels
	p.cfg = cfg
	return nil
}

// stream handles one HTTP request. Its methods are the request callbacks, called one at a
// time by the host.
type stream struct {
	host   host
	plugin *plugin // nil when the plugin was never configured: every request is refused
	req    request
	res    resolution
	// waiting is set while the headers are held for the first gRPC message.
	waiting bool
	// changed records that the headers were modified, so that the route is chosen again.
	changed bool
}

// onRequestHeaders strips the internal headers, then finds the model in the headers or
// path, or holds the headers until the gRPC body names it.
func (s *stream) onRequestHeaders(endOfStream bool) types.Action {
	headers, err := s.host.RequestHeaders()
	if err != nil {
		return s.fail(fmt.Errorf("read request headers: %w", err))
	}
	if s.plugin == nil {
		return s.fail(errors.New("the model id filter has no valid configuration"))
	}
	// Strip first, whatever happens next: no internal header may pass from a client.
	for _, name := range internalHeaders(headers) {
		if err := s.host.RemoveRequestHeader(name); err != nil {
			return s.fail(fmt.Errorf("remove header %s: %w", name, err))
		}
		s.changed = true
	}
	s.req = newRequest(headers)
	s.res, err = resolve(s.req)
	switch {
	case err != nil:
		return s.reject(err)
	case s.res.model.Name != "":
		return s.apply(s.res.model, s.res.source)
	case s.res.bodyMethod != "" && !endOfStream && s.plugin.cfg.ReadGRPCBody:
		s.waiting = true
		return types.ActionPause
	}
	return s.pass()
}

// onRequestBody reads the buffered body until the first gRPC message is complete.
func (s *stream) onRequestBody(size int, endOfStream bool) types.Action {
	if !s.waiting {
		return types.ActionContinue
	}
	body, err := s.host.RequestBody(size)
	if err != nil {
		return s.fail(fmt.Errorf("read request body: %w", err))
	}
	m, complete, err := firstMessage(body, uint32(s.plugin.cfg.MaxGRPCMessageBytes))
	if err != nil {
		return s.reject(err)
	}
	if !complete {
		if endOfStream {
			return s.pass()
		}
		return types.ActionPause // Envoy buffers this chunk and calls again with more
	}
	if m.name == "" {
		return s.pass()
	}
	model, versionSource := placement.ModelVersion{Name: m.name, Version: s.res.version}, s.res.versionSource
	if model.Version == "" {
		model.Version, versionSource = m.version, sourceBody
	}
	if err := validate(model, sourceBody, versionSource); err != nil {
		return s.reject(err)
	}
	return s.apply(model, sourceBody)
}

// onRequestTrailers ends a wait for a body that never completed its first message.
func (s *stream) onRequestTrailers() types.Action {
	if !s.waiting {
		return types.ActionContinue
	}
	return s.pass()
}

// apply sets the canonical headers for a valid model and lets the request go on. A header
// the client already sent as the filter would set it is left alone: then the route chosen
// before the filter ran stands, and the route cache is not cleared.
func (s *stream) apply(m placement.ModelVersion, source string) types.Action {
	s.waiting = false
	if !s.req.sent(wire.HeaderModel, m.Name) {
		if err := s.host.ReplaceRequestHeader(wire.HeaderModel, m.Name); err != nil {
			return s.fail(fmt.Errorf("set %s: %w", wire.HeaderModel, err))
		}
		s.changed = true
	}
	_, hasVersion, _ := s.req.header(wire.HeaderVersion)
	switch {
	case m.Version != "" && !s.req.sent(wire.HeaderVersion, m.Version):
		if err := s.host.ReplaceRequestHeader(wire.HeaderVersion, m.Version); err != nil {
			return s.fail(fmt.Errorf("set %s: %w", wire.HeaderVersion, err))
		}
		s.changed = true
	case m.Version == "" && hasVersion:
		// An empty version from the client means none; do not pass it on as if it were one.
		if err := s.host.RemoveRequestHeader(wire.HeaderVersion); err != nil {
			return s.fail(fmt.Errorf("remove %s: %w", wire.HeaderVersion, err))
		}
		s.changed = true
	}
	s.plugin.stats.countModel(m.Name)
	if s.host.DebugEnabled() {
		s.host.Debugf("modelid: model %s version %q from %s", m.Name, m.Version, source)
	}
	return s.pass()
}

// pass lets the request go on, with the route chosen again if the headers changed.
func (s *stream) pass() types.Action {
	s.waiting = false
	if s.changed {
		if err := s.host.ClearRouteCache(); err != nil {
			// Without it the route chosen before the filter ran stays; nothing safer
			// is left to do than to say so.
			s.host.Warnf("modelid: clear the route cache: %v", err)
		}
	}
	return types.ActionContinue
}

// reject answers a request the filter refuses: 400 (gRPC INVALID_ARGUMENT) for bad input,
// 413 (gRPC RESOURCE_EXHAUSTED) for a first gRPC message too large to buffer.
func (s *stream) reject(err error) types.Action {
	s.plugin.stats.countInvalid()
	code, grpcStatus := uint32(400), int32(grpcInvalidArgument)
	if errors.Is(err, errTooLarge) {
		code, grpcStatus = 413, grpcResourceExhausted
	}
	if s.host.DebugEnabled() {
		s.host.Debugf("modelid: refused %s: %v", s.req.path, err)
	}
	return s.respond(code, grpcStatus, message(err))
}

// fail answers 500 when the proxy itself failed the filter; the request must not go on
// with headers the filter could not check.
func (s *stream) fail(err error) types.Action {
	s.host.Warnf("modelid: %v", err)
	return s.respond(500, grpcInternal, "model id filter: "+err.Error())
}

func (s *stream) respond(code uint32, grpcStatus int32, msg string) types.Action {
	s.waiting = false
	var err error
	if s.req.isGRPC() {
		// Envoy turns a local reply to a gRPC request into a trailers-only response with
		// grpc-status and the body as grpc-message.
		err = s.host.SendResponse(code, nil, []byte(msg), grpcStatus)
	} else {
		body, _ := json.Marshal(map[string]string{"error": msg}) // a map of strings always marshals
		err = s.host.SendResponse(code, [][2]string{{"content-type", "application/json"}}, body, -1)
	}
	if err != nil {
		s.host.Warnf("modelid: send local reply %d: %v", code, err)
	}
	return types.ActionPause
}

// message is the client-facing text of a refusal: the error without its class prefix.
func message(err error) string {
	msg := err.Error()
	for _, class := range []error{errInvalid, errTooLarge} {
		if rest, ok := strings.CutPrefix(msg, class.Error()+": "); ok {
			return rest
		}
	}
	return msg
}

// internalHeaders lists, once each, the names of the headers a client may not send.
func internalHeaders(headers [][2]string) []string {
	var names []string
	for _, h := range headers {
		if wire.IsInternalHeader(strings.ToLower(h[0])) && !slices.Contains(names, h[0]) {
			names = append(names, h[0])
		}
	}
	return names
}
