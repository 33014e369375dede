package agent

import (
	"context"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// TestLoadStepsAreSpansOfTheCallersTrace: a load in a sampled trace records its fetch, its
// reservation (with an eviction under it) and the backend load as children of the caller's
// span; loads outside a trace record nothing.
func TestLoadStepsAreSpansOfTheCallersTrace(t *testing.T) {
	t.Parallel()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec), sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.NeverSample())))
	defer tp.Shutdown(context.Background())
	fx := newFixture(t, 2500)
	fx.agent.tracer = tp.Tracer("test")

	for _, n := range []string{"a", "b"} {
		if _, err := fx.agent.Load(context.Background(), fx.spec(n, 1000)); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(rec.Ended()); n != 0 {
		t.Fatalf("%d spans of loads outside any trace", n)
	}
	fx.infer(t, "a") // b goes
	caller := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{1}, SpanID: trace.SpanID{2},
		TraceFlags: trace.FlagsSampled, Remote: true})
	if _, err := fx.agent.Load(trace.ContextWithRemoteSpanContext(context.Background(), caller), fx.spec("c", 1000)); err != nil {
		t.Fatal(err)
	}

	spans := map[string]sdktrace.ReadOnlySpan{}
	for _, s := range rec.Ended() {
		spans[s.Name()] = s
	}
	for _, name := range []string{"worker.fetch", "worker.reserve", "worker.backend_load"} {
		s := spans[name]
		if s == nil {
			t.Fatalf("no span %s among %v", name, spans)
		}
		if s.Parent().SpanID() != caller.SpanID() || s.SpanContext().TraceID() != caller.TraceID() {
			t.Errorf("%s is not a child of the caller's span", name)
		}
	}
	evict := spans["worker.evict"]
	if evict == nil || evict.Parent().SpanID() != spans["worker.reserve"].SpanContext().SpanID() {
		t.Fatalf("no eviction span under worker.reserve: %v", spans)
	}
	for _, kv := range evict.Attributes() {
		if kv.Key == "mesh.model" && kv.Value.AsString() != "b" {
			t.Errorf("eviction of %s, want b", kv.Value.AsString())
		}
	}
	if len(spans) != 4 {
		t.Errorf("spans %v, want fetch, reserve, evict, backend_load", spans)
	}
}
