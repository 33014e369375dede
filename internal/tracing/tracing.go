// Package tracing sets up OpenTelemetry tracing for a mesh binary: spans exported over
// OTLP/gRPC when a collector is configured, a no-op provider otherwise, and the gRPC and
// HTTP instrumentation that continues a request's W3C trace context (traceparent,
// tracestate) from one part of the mesh to the next.
//
// Sampling is the gateway's decision: a span is recorded only when the request carries a
// sampled trace context. Requests without one (health checks, meshctl, direct calls) start
// no trace, so every part records the same requests.
package tracing

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc"
)

// Config says where a binary's spans go.
type Config struct {
	// Endpoint is the OTLP/gRPC collector, host:port (plaintext). Empty turns tracing off.
	Endpoint string
	// Service is the service.name of every span: mesh-extproc, mesh-worker.
	Service string
	// Instance, when set, is the service.instance.id (a worker's id).
	Instance string
}

// Validate checks the endpoint's form; flag is the flag that set it, for the message.
func (c Config) Validate(flag string) error {
	if c.Endpoint == "" {
		return nil
	}
	if _, _, err := net.SplitHostPort(c.Endpoint); err != nil {
		return fmt.Errorf("--%s: %w", flag, err)
	}
	return nil
}

// Tracing is one binary's tracing. Off (no endpoint), its provider is a no-op, no exporter
// or goroutine runs, and the instrumentation it hands out is empty. Safe for concurrent
// use; the binary's main owns it and calls Shutdown last.
type Tracing struct {
	provider trace.TracerProvider
	sdk      *sdktrace.TracerProvider // nil when off
	log      *slog.Logger
}

// New returns the binary's tracing. On, spans are batched and sent to cfg.Endpoint; export
// failures are logged to log. The connection to the collector is made lazily: a collector
// that is down loses spans, never requests.
func New(ctx context.Context, cfg Config, log *slog.Logger) (*Tracing, error) {
	if cfg.Endpoint == "" {
		return &Tracing{provider: tracenoop.NewTracerProvider(), log: log}, nil
	}
	exp, err := otlptracegrpc.New(ctx, otlptracegrpc.WithEndpoint(cfg.Endpoint), otlptracegrpc.WithInsecure())
	if err != nil {
		return nil, fmt.Errorf("otlp exporter for %s: %w", cfg.Endpoint, err)
	}
	attrs := []attribute.KeyValue{semconv.ServiceName(cfg.Service)}
	if cfg.Instance != "" {
		attrs = append(attrs, semconv.ServiceInstanceID(cfg.Instance))
	}
	sdk := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp),
		sdktrace.WithResource(resource.NewWithAttributes(semconv.SchemaURL, attrs...)),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.NeverSample())),
	)
	// The SDK reports failed exports only to otel's process-wide error handler; without one
	// they would go to the standard logger as plain text, outside the binary's JSON log.
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		log.Warn("trace export failed", "otlp_endpoint", cfg.Endpoint, "error", err)
	}))
	return &Tracing{provider: sdk, sdk: sdk, log: log}, nil
}

// Provider is the tracer provider to pass to the parts of the binary that make spans.
func (t *Tracing) Provider() trace.TracerProvider { return t.provider }

// Propagator reads and writes W3C traceparent and tracestate, as Envoy's OpenTelemetry
// tracer does.
func Propagator() propagation.TextMapPropagator { return propagation.TraceContext{} }

// GRPCServer gives the options of a gRPC server whose calls continue the caller's trace,
// each as a server span named after the method; none when off.
func (t *Tracing) GRPCServer() []grpc.ServerOption {
	if t.sdk == nil {
		return nil
	}
	return []grpc.ServerOption{grpc.StatsHandler(otelgrpc.NewServerHandler(t.grpcOptions()...))}
}

// GRPCClient gives the dial options of a gRPC client whose calls are client spans carrying
// the trace context in their metadata; none when off.
func (t *Tracing) GRPCClient() []grpc.DialOption {
	if t.sdk == nil {
		return nil
	}
	return []grpc.DialOption{grpc.WithStatsHandler(otelgrpc.NewClientHandler(t.grpcOptions()...))}
}

func (t *Tracing) grpcOptions() []otelgrpc.Option {
	// The mesh's metrics are Prometheus; the instrumentation's own OpenTelemetry metrics
	// would go nowhere.
	return []otelgrpc.Option{otelgrpc.WithTracerProvider(t.sdk), otelgrpc.WithPropagators(Propagator()),
		otelgrpc.WithMeterProvider(metricnoop.NewMeterProvider())}
}

// HTTP wraps h so that each request continues the caller's trace as a server span named
// after the method and the route pattern that served it; h itself when off.
func (t *Tracing) HTTP(h http.Handler) http.Handler {
	if t.sdk == nil {
		return h
	}
	return otelhttp.NewHandler(h, "", otelhttp.WithTracerProvider(t.sdk), otelhttp.WithPropagators(Propagator()),
		otelhttp.WithMeterProvider(metricnoop.NewMeterProvider()))
}

// Close sends the spans still buffered and stops the exporter, within ctx and at most 5 s;
// a failure is logged. Call it once, when nothing makes spans any more.
func (t *Tracing) Close(ctx context.Context) {
	if t.sdk == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := t.sdk.Shutdown(ctx); err != nil {
		t.log.WarnContext(ctx, "send the last spans", "error", err)
	}
}
