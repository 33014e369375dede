package extproc

import (
	"context"
	"sync"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/metadata"

	"github.com/modelmesh/mesh/internal/residency"
)

// contextLoader records the span context each Load runs in.
type contextLoader struct {
	Loader
	mu    sync.Mutex
	spans []trace.SpanContext
}

func (l *contextLoader) Load(ctx context.Context, w residency.Worker, t Target) error {
	l.mu.Lock()
	l.spans = append(l.spans, trace.SpanContextFromContext(ctx))
	l.mu.Unlock()
	return l.Loader.Load(ctx, w, t)
}

// TestColdRequestSpans: a cold request's decision and wait are spans of the request's trace.
// Envoy's own context comes in the ext_proc stream's gRPC metadata (the span of its call to
// ext_proc); the request's headers carry at most the client's, used only without Envoy's.
// The worker's Load runs in the wait's span. Unsampled requests record nothing.
func TestColdRequestSpans(t *testing.T) {
	const (
		trace1     = "4bf92f3577b34da6a3ce929d0e0e4736"
		envoySpan  = "00f067aa0ba902b7"
		clientSpan = "1111111111111111"
	)
	tests := []struct {
		name       string
		metadata   string // traceparent in the stream's gRPC metadata
		header     string // traceparent among the request's headers
		wantParent string // "": no spans
	}{
		{"envoy's context wins", "00-" + trace1 + "-" + envoySpan + "-01", "00-" + trace1 + "-" + clientSpan + "-01", envoySpan},
		{"the client's without envoy's", "", "00-" + trace1 + "-" + clientSpan + "-01", clientSpan},
		{"unsampled", "00-" + trace1 + "-" + envoySpan + "-00", "", ""},
		{"no context", "", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := tracetest.NewSpanRecorder()
			tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec), sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.NeverSample())))
			defer tp.Shutdown(context.Background())
			m := newMesh(t, mustRegistry(t, testRegistry))
			w1 := m.addWorker(worker("w1", 1, ort, 1000, 0), nil)
			loader := &contextLoader{Loader: &fakeLoader{workers: map[string]*fakeWorker{"w1": w1}, delay: 50 * time.Millisecond}}
			r := m.startReplica(Config{LoadDeadline: 10 * time.Second, TracerProvider: tp}, loader)
			r.waitFor(t, workersLive(1))

			ctx := t.Context()
			if tt.metadata != "" {
				ctx = metadata.AppendToOutgoingContext(ctx, "traceparent", tt.metadata)
			}
			headers := rest("digits")
			if tt.header != "" {
				headers["traceparent"] = tt.header
			}
			ex, err := r.send(ctx, headers)
			checkAnswer(t, routedTo("10.0.0.1:8000", "1"), ex, err)

			spans := map[string]sdktrace.ReadOnlySpan{}
			for _, s := range rec.Ended() {
				spans[s.Name()] = s
			}
			if tt.wantParent == "" {
				if len(spans) != 0 {
					t.Fatalf("spans recorded for an unsampled request: %v", spans)
				}
				return
			}
			decide, wait := spans["extproc.decide"], spans["extproc.cold_wait"]
			if decide == nil || wait == nil || len(spans) != 2 {
				t.Fatalf("spans %v, want extproc.decide and extproc.cold_wait", spans)
			}
			if got := decide.Parent().SpanID().String(); got != tt.wantParent || decide.SpanContext().TraceID().String() != trace1 {
				t.Errorf("decide's parent %s in trace %s, want %s in %s", got, decide.SpanContext().TraceID(), tt.wantParent, trace1)
			}
			if decide.SpanKind() != trace.SpanKindServer {
				t.Errorf("decide is a %s span, want server", decide.SpanKind())
			}
			if wait.Parent().SpanID() != decide.SpanContext().SpanID() {
				t.Error("cold_wait is not a child of decide")
			}
			attrs := map[string]string{}
			for _, kv := range decide.Attributes() {
				attrs[string(kv.Key)] = kv.Value.String()
			}
			for k, v := range map[string]string{"mesh.model": "digits", "mesh.version": "1", "mesh.outcome": "cold_loaded", "mesh.endpoint": "10.0.0.1:8000"} {
				if attrs[k] != v {
					t.Errorf("decide attribute %s = %q, want %q (all: %v)", k, attrs[k], v, attrs)
				}
			}
			loader.mu.Lock()
			defer loader.mu.Unlock()
			if len(loader.spans) == 0 || loader.spans[0].SpanID() != wait.SpanContext().SpanID() {
				t.Errorf("the Load ran in span %v, want cold_wait's %s", loader.spans, wait.SpanContext().SpanID())
			}
		})
	}
}
