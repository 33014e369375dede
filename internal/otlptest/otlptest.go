// Package otlptest runs a real OTLP/gRPC trace receiver (the collector's TraceService) in
// the test process, on a loopback port of its own, and records every span it is sent.
package otlptest

import (
	"context"
	"encoding/hex"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	collectortracev1 "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonv1 "go.opentelemetry.io/proto/otlp/common/v1"
	tracev1 "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
)

// Span is one received span, flattened. Ids are lower-case hex; ParentID is empty for a
// root span.
type Span struct {
	Service  string
	Name     string
	Kind     tracev1.Span_SpanKind
	TraceID  string
	SpanID   string
	ParentID string
	// Attrs holds the span's attributes with their values printed (strings as they are).
	Attrs map[string]string
	// Error is true when the span's status is an error.
	Error bool
}

func (s Span) String() string {
	return fmt.Sprintf("%s %q kind=%s trace=%s span=%s parent=%s attrs=%v", s.Service, s.Name, s.Kind, s.TraceID, s.SpanID, s.ParentID, s.Attrs)
}

// Collector is the receiver. Safe for concurrent use.
type Collector struct {
	collectortracev1.UnimplementedTraceServiceServer
	// Addr is where it listens, host:port.
	Addr string

	mu    sync.Mutex
	spans []Span
}

// Start serves a collector until the test ends.
func Start(t testing.TB) *Collector {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &Collector{Addr: ln.Addr().String()}
	gs := grpc.NewServer()
	collectortracev1.RegisterTraceServiceServer(gs, c)
	done := make(chan struct{})
	go func() {
		defer close(done)
		gs.Serve(ln)
	}()
	t.Cleanup(func() {
		gs.Stop()
		<-done
	})
	return c
}

// Export records the request's spans.
func (c *Collector) Export(_ context.Context, req *collectortracev1.ExportTraceServiceRequest) (*collectortracev1.ExportTraceServiceResponse, error) {
	var got []Span
	for _, rs := range req.GetResourceSpans() {
		service := attrs(rs.GetResource().GetAttributes())["service.name"]
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				got = append(got, Span{
					Service: service, Name: s.GetName(), Kind: s.GetKind(),
					TraceID: hex.EncodeToString(s.GetTraceId()), SpanID: hex.EncodeToString(s.GetSpanId()),
					ParentID: hex.EncodeToString(s.GetParentSpanId()), Attrs: attrs(s.GetAttributes()),
					Error: s.GetStatus().GetCode() == tracev1.Status_STATUS_CODE_ERROR,
				})
			}
		}
	}
	c.mu.Lock()
	c.spans = append(c.spans, got...)
	c.mu.Unlock()
	return &collectortracev1.ExportTraceServiceResponse{}, nil
}

func attrs(kvs []*commonv1.KeyValue) map[string]string {
	out := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		switch v := kv.GetValue().GetValue().(type) {
		case *commonv1.AnyValue_StringValue:
			out[kv.GetKey()] = v.StringValue
		case *commonv1.AnyValue_IntValue:
			out[kv.GetKey()] = strconv.FormatInt(v.IntValue, 10)
		case *commonv1.AnyValue_BoolValue:
			out[kv.GetKey()] = strconv.FormatBool(v.BoolValue)
		case *commonv1.AnyValue_DoubleValue:
			out[kv.GetKey()] = strconv.FormatFloat(v.DoubleValue, 'g', -1, 64)
		default:
			out[kv.GetKey()] = kv.GetValue().String()
		}
	}
	return out
}

// Trace returns the spans received so far with trace id id.
func (c *Collector) Trace(id string) []Span {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []Span
	for _, s := range c.spans {
		if s.TraceID == id {
			out = append(out, s)
		}
	}
	return out
}

// All returns every span received so far.
func (c *Collector) All() []Span {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Span(nil), c.spans...)
}

// Await waits up to timeout until done accepts the spans of trace id, and returns them;
// it fails the test, listing what arrived, if done never does. Exporters send in batches,
// every few seconds.
func (c *Collector) Await(t testing.TB, id string, timeout time.Duration, done func([]Span) bool) []Span {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		spans := c.Trace(id)
		if done(spans) {
			return spans
		}
		if time.Now().After(deadline) {
			var b strings.Builder
			for _, s := range c.All() {
				fmt.Fprintf(&b, "\n  %s", s)
			}
			t.Fatalf("trace %s incomplete after %s; received:%s", id, timeout, b.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
