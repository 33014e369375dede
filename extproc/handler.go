package extproc

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/modelmesh/mesh/internal/registry"
	"github.com/modelmesh/mesh/internal/wire"
)

var _ extprocv3.ExternalProcessorServer = (*Server)(nil)

// Process is the ext_proc stream: one per HTTP request. Only request headers are expected
// (processing mode request_header_mode SEND, everything else SKIP); any other message is
// let through unchanged. It returns when Envoy closes the stream.
func (s *Server) Process(stream extprocv3.ExternalProcessor_ProcessServer) error {
	ctx := stream.Context()
	for {
		req, err := stream.Recv()
		if err == io.EOF || status.Code(err) == codes.Canceled {
			return nil
		}
		if err != nil {
			return err
		}
		var resp *extprocv3.ProcessingResponse
		switch r := req.Request.(type) {
		case *extprocv3.ProcessingRequest_RequestHeaders:
			if resp, err = s.onRequestHeaders(ctx, stream, r.RequestHeaders); err != nil {
				return err
			}
		default:
			resp = passThrough(req)
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

// onRequestHeaders answers one request's headers; it returns an error only when the
// stream is gone. The decision is the span extproc.decide, in the request's trace.
func (s *Server) onRequestHeaders(ctx context.Context, stream extprocv3.ExternalProcessor_ProcessServer, h *extprocv3.HttpHeaders) (*extprocv3.ProcessingResponse, error) {
	start := time.Now()
	req, grpc := requestOf(h)
	if s.tracing {
		ctx = traceContext(ctx, req)
	}
	ctx, span := s.tracer.Start(ctx, "extproc.decide", trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(attribute.String("mesh.model", req.Model)))
	defer span.End()
	extended := false
	extend := func() error {
		if extended {
			return nil // Envoy takes one override of a message's timeout
		}
		extended = true
		return stream.Send(extendResponse(s.overrideTimeout()))
	}
	a, err := s.Handle(ctx, req, extend)
	var resp *extprocv3.ProcessingResponse
	outcome := a.Outcome
	switch {
	case err == nil:
		resp = routeResponse(a)
	case ctx.Err() != nil:
		s.metrics.decisions.WithLabelValues("canceled").Inc()
		span.SetAttributes(attribute.String("mesh.outcome", "canceled"))
		return nil, ctx.Err()
	case !errors.As(err, new(*Error)):
		return nil, err // the stream failed while extending the timeout
	default:
		resp, outcome = errorResponse(err, grpc, s.cfg.RetryAfter)
	}
	s.metrics.decisions.WithLabelValues(outcome).Inc()
	s.metrics.decisionSeconds.WithLabelValues(outcome).Observe(time.Since(start).Seconds())
	if span.IsRecording() {
		version := a.Model.Version
		if version == "" {
			version = req.Version
		}
		span.SetAttributes(attribute.String("mesh.version", version), attribute.String("mesh.outcome", outcome))
		if a.Endpoint != "" {
			span.SetAttributes(attribute.String("mesh.endpoint", a.Endpoint))
		}
		if err != nil && statusOf(err).http >= 500 {
			span.SetStatus(otelcodes.Error, err.Error())
		}
	}
	if s.log.Enabled(ctx, slog.LevelDebug) {
		s.log.DebugContext(ctx, "decided", "model", req.Model, "version", a.Model.Version, "path", req.Path,
			"outcome", outcome, "endpoint", a.Endpoint, "error", err)
	}
	return resp, nil
}

// overrideTimeout is the message timeout asked of Envoy before holding a request: the
// load deadline plus a margin for the answer, within Envoy's max_message_timeout.
func (s *Server) overrideTimeout() time.Duration {
	return min(s.cfg.LoadDeadline+5*time.Second, s.cfg.MaxMessageTimeout)
}

// requestOf extracts the decision's input from Envoy's headers, and whether the request
// is gRPC.
func requestOf(h *extprocv3.HttpHeaders) (Request, bool) {
	headers := map[string]string{}
	for _, hv := range h.GetHeaders().GetHeaders() {
		v := hv.GetValue()
		if len(hv.GetRawValue()) > 0 {
			v = string(hv.GetRawValue())
		}
		k := strings.ToLower(hv.GetKey())
		if prev, ok := headers[k]; ok {
			// A repeated header is matched as its values joined by commas, as Envoy's route
			// header matchers see it, so both paths pick the same rule.
			v = prev + "," + v
		}
		headers[k] = v
	}
	path, _, _ := strings.Cut(headers[":path"], "?")
	grpc := strings.HasPrefix(headers["content-type"], "application/grpc")
	req := Request{
		Path:    path,
		Model:   headers[wire.HeaderModel],
		Version: headers[wire.HeaderVersion],
		Header:  registry.MapLookup(headers),
		GRPC:    grpc,
	}
	return req, grpc
}

// traceContext is ctx with the request's trace context: Envoy's, from the ext_proc stream's
// gRPC metadata (the span of its call to ext_proc), else the client's, from the request's
// headers. Envoy puts its own traceparent in the request's headers only when it routes the
// request, after ext_proc; the headers ext_proc sees carry at most the client's.
func traceContext(ctx context.Context, req Request) context.Context {
	tc := propagation.TraceContext{}
	md, _ := metadata.FromIncomingContext(ctx)
	fromEnvoy := tc.Extract(ctx, readCarrier(func(k string) string {
		if v := md.Get(k); len(v) > 0 {
			return v[0]
		}
		return ""
	}))
	if trace.SpanContextFromContext(fromEnvoy).IsValid() {
		return fromEnvoy
	}
	return tc.Extract(ctx, readCarrier(func(k string) string {
		v, _ := req.Header(k)
		return v
	}))
}

// readCarrier reads trace context fields from a lookup function. The W3C propagator only
// gets the fields it knows, so Keys need not list them.
type readCarrier func(key string) string

func (c readCarrier) Get(key string) string { return c(key) }
func (readCarrier) Set(string, string)      {}
func (readCarrier) Keys() []string          { return nil }

// passThrough lets a message the server has no business with continue unchanged.
func passThrough(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
	switch req.Request.(type) {
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{}}}
	case *extprocv3.ProcessingRequest_RequestBody:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{}}}
	case *extprocv3.ProcessingRequest_ResponseBody:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{}}}
	case *extprocv3.ProcessingRequest_RequestTrailers:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestTrailers{RequestTrailers: &extprocv3.TrailersResponse{}}}
	default:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseTrailers{ResponseTrailers: &extprocv3.TrailersResponse{}}}
	}
}
