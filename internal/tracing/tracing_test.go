package tracing

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/modelmesh/mesh/internal/otlptest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// A client's sampled trace context, as a traceparent header carries it.
const (
	clientTrace    = "4bf92f3577b34da6a3ce929d0e0e4736"
	clientSpan     = "00f067aa0ba902b7"
	sampledParent  = "00-" + clientTrace + "-" + clientSpan + "-01"
	unsampledTrace = "00-11111111111111111111111111111111-2222222222222222-00"
)

func TestOffIsInert(t *testing.T) {
	tr, err := New(t.Context(), Config{Service: "mesh-test"}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	_, span := tr.Provider().Tracer("test").Start(remoteParent(t, sampledParent), "op")
	if span.IsRecording() {
		t.Error("a span of the tracing that is off records")
	}
	span.End()
	if tr.GRPCServer() != nil || tr.GRPCClient() != nil {
		t.Error("gRPC instrumentation handed out while off")
	}
	var h http.Handler = http.NewServeMux()
	if tr.HTTP(h) != h {
		t.Error("HTTP handler wrapped while off")
	}
	tr.Close(t.Context())
	// goleak (TestMain): nothing was started.
}

func TestSpansContinueTheCallersTrace(t *testing.T) {
	col := otlptest.Start(t)
	tr, err := New(t.Context(), Config{Endpoint: col.Addr, Service: "mesh-test", Instance: "i1"}, quiet)
	if err != nil {
		t.Fatal(err)
	}

	// gRPC: a client span carries the context in metadata; the server span continues it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(tr.GRPCServer()...)
	healthpb.RegisterHealthServer(gs, health.NewServer())
	served := make(chan struct{})
	go func() { defer close(served); gs.Serve(ln) }()
	defer func() { gs.Stop(); <-served }()
	conn, err := grpc.NewClient(ln.Addr().String(), append(tr.GRPCClient(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, parent := range []string{sampledParent, unsampledTrace, ""} {
		if _, err := healthpb.NewHealthClient(conn).Check(remoteParent(t, parent), &healthpb.HealthCheckRequest{}); err != nil {
			t.Fatal(err)
		}
	}

	// HTTP: the server span continues the traceparent header and is named after the route.
	var recording []bool // whether each request's handler runs in a recording span
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v2/models/{name}/infer", func(w http.ResponseWriter, r *http.Request) {
		recording = append(recording, trace.SpanFromContext(r.Context()).IsRecording())
	})
	hs := httptest.NewServer(tr.HTTP(mux))
	defer hs.Close()
	for _, parent := range []string{sampledParent, unsampledTrace, ""} {
		req, _ := http.NewRequest("POST", hs.URL+"/v2/models/iris/infer", nil)
		if parent != "" {
			req.Header.Set("traceparent", parent)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	if want := []bool{true, false, false}; !slices.Equal(recording, want) {
		t.Errorf("handler spans recording %v, want %v (only the sampled request)", recording, want)
	}

	tr.Close(t.Context()) // sends every span
	spans := col.All()
	if len(spans) != 3 {
		t.Fatalf("want 3 spans (gRPC client, gRPC server, HTTP server, all of the sampled request), got %d: %v", len(spans), spans)
	}
	byName := map[string]otlptest.Span{}
	for _, s := range spans {
		if s.TraceID != clientTrace || s.Service != "mesh-test" {
			t.Errorf("span outside the client's trace or service: %s", s)
		}
		byName[s.Name+"/"+s.Kind.String()] = s
	}
	client, server := byName["grpc.health.v1.Health/Check/SPAN_KIND_CLIENT"], byName["grpc.health.v1.Health/Check/SPAN_KIND_SERVER"]
	if client.ParentID != clientSpan || server.ParentID != client.SpanID || client.SpanID == "" {
		t.Errorf("gRPC spans not chained client span -> client call -> server call:\n%s\n%s", client, server)
	}
	if h := byName["POST /v2/models/{name}/infer/SPAN_KIND_SERVER"]; h.ParentID != clientSpan {
		t.Errorf("HTTP span not a child of the traceparent's span: %v", spans)
	}
}

// remoteParent is a context holding the trace context of traceparent, as a server would
// extract it from a request ("" gives a context without one).
func remoteParent(t *testing.T, traceparent string) context.Context {
	t.Helper()
	carrier := map[string]string{}
	if traceparent != "" {
		carrier["traceparent"] = traceparent
	}
	return Propagator().Extract(t.Context(), propagation.MapCarrier(carrier))
}
