package translate

import (
	"fmt"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tracev3 "github.com/envoyproxy/go-control-plane/envoy/config/trace/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tracingv3 "github.com/envoyproxy/go-control-plane/envoy/type/tracing/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/modelmesh/mesh/internal/wire"
)

// TracingCluster is the OTLP collector the gateway sends its spans to.
const TracingCluster = "tracing"

// GatewayService is the service.name of the gateway's spans.
const GatewayService = "mesh-gateway"

// Tracing turns on the gateway's OpenTelemetry tracing.
type Tracing struct {
	// CollectorAddress is the OTLP/gRPC collector, "host:port".
	CollectorAddress string
	// SamplePercent is the share of requests Envoy traces. A client's traceparent joins
	// the trace to the client's but does not force one: Envoy 1.40 traces a request only
	// when its random sampling picks it and the client's traceparent, if any, is sampled
	// (checked end to end: a sampled traceparent at 0% and an unsampled one at 100% both
	// gave no spans).
	SamplePercent float64
}

// hcmTracing is the connection manager's tracing: Envoy's OpenTelemetry tracer exporting
// to TracingCluster. Envoy starts a server span per request, a client span for the ext_proc
// call (whose gRPC metadata carries its traceparent) and one per upstream try (whose
// request headers carry its traceparent to the worker).
func hcmTracing(t *Tracing) (*hcmv3.HttpConnectionManager_Tracing, error) {
	otel, err := anypb.New(&tracev3.OpenTelemetryConfig{
		GrpcService: &corev3.GrpcService{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
			EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: TracingCluster}}},
		ServiceName: GatewayService,
	})
	if err != nil {
		return nil, err
	}
	tag := func(name, header string) *tracingv3.CustomTag {
		return &tracingv3.CustomTag{Tag: name, Type: &tracingv3.CustomTag_RequestHeader{
			RequestHeader: &tracingv3.CustomTag_Header{Name: header}}}
	}
	return &hcmv3.HttpConnectionManager_Tracing{
		RandomSampling: &typev3.Percent{Value: t.SamplePercent},
		Provider: &tracev3.Tracing_Http{Name: "envoy.tracers.opentelemetry",
			ConfigType: &tracev3.Tracing_Http_TypedConfig{TypedConfig: otel}},
		// The gateway is a hop of its own: a span per upstream try shows retries and the
		// time to the worker's first byte apart from the ext_proc hold.
		SpawnUpstreamSpan: wrapperspb.Bool(true),
		// The headers as the filters and the route left them: the wasm filter's model id,
		// the version the route or ext_proc chose.
		CustomTags: []*tracingv3.CustomTag{tag("mesh.model", wire.HeaderModel), tag("mesh.version", wire.HeaderVersion)},
	}, nil
}

func tracingCluster(addr string) (*clusterv3.Cluster, error) {
	c, err := staticH2Cluster(TracingCluster, addr)
	if err != nil {
		return nil, fmt.Errorf("tracing collector address: %w", err)
	}
	return c, nil
}
