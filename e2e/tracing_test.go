//go:build e2e

package e2e

import (
	"crypto/rand"
	"encoding/hex"
	"slices"
	"strings"
	"testing"
	"time"

	tracev1 "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc/metadata"

	"github.com/modelmesh/mesh/internal/otlptest"
	"github.com/modelmesh/mesh/proto/inference"
)

const (
	serverKind   = tracev1.Span_SPAN_KIND_SERVER
	internalKind = tracev1.Span_SPAN_KIND_INTERNAL
	clientKind   = tracev1.Span_SPAN_KIND_CLIENT
)

// clientTrace is a client's own span: the traceparent it sends, sampled.
type clientTrace struct{ traceID, spanID string }

func newClientTrace(t *testing.T) clientTrace {
	t.Helper()
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return clientTrace{traceID: hex.EncodeToString(b[:16]), spanID: hex.EncodeToString(b[16:])}
}

func (c clientTrace) header() map[string]string {
	return map[string]string{"traceparent": "00-" + c.traceID + "-" + c.spanID + "-01"}
}

// spanTree finds spans of one trace by what they are and checks who their parents are.
type spanTree struct {
	t     *testing.T
	spans []otlptest.Span
}

// all are the spans of service with kind and a name starting with prefix.
func (tr spanTree) all(service string, kind tracev1.Span_SpanKind, prefix string) []otlptest.Span {
	var found []otlptest.Span
	for _, s := range tr.spans {
		if s.Service == service && s.Kind == kind && strings.HasPrefix(s.Name, prefix) {
			found = append(found, s)
		}
	}
	return found
}

// one is the only span of service with kind and a name starting with prefix.
func (tr spanTree) one(service string, kind tracev1.Span_SpanKind, prefix string) otlptest.Span {
	tr.t.Helper()
	found := tr.all(service, kind, prefix)
	if len(found) != 1 {
		tr.t.Fatalf("%d %s spans of %s named %q*, want 1; trace:\n%s", len(found), kind, service, prefix, tr)
	}
	return found[0]
}

// childOf checks that child's parent is parent.
func (tr spanTree) childOf(child, parent otlptest.Span) {
	tr.t.Helper()
	if child.ParentID != parent.SpanID {
		tr.t.Errorf("%s %q: parent %s, want %s %q (%s); trace:\n%s", child.Service, child.Name, child.ParentID, parent.Service, parent.Name, parent.SpanID, tr)
	}
}

func (tr spanTree) String() string {
	var b strings.Builder
	for _, s := range tr.spans {
		b.WriteString("  " + s.String() + "\n")
	}
	return b.String()
}

// has reports whether spans hold a span of service named name.
func has(spans []otlptest.Span, service, name string) bool {
	return slices.ContainsFunc(spans, func(s otlptest.Span) bool { return s.Service == service && s.Name == name })
}

// TestTracingColdThenHot: with tracing on in every part, one cold request sent with a
// client's traceparent is one trace: the gateway's server span under the client's span, and
// under it the gateway's ext_proc call and its upstream try; ext_proc's decision under its
// call, the cold wait under the decision, ext_proc's Load call under the wait, the worker's
// Load under that with fetch, reservation and backend load under it; the worker's inference
// under the gateway's upstream try. A hot request, REST or gRPC, is the gateway's spans and
// the worker's inference only.
func TestTracingColdThenHot(t *testing.T) {
	col := otlptest.Start(t)
	m := startMesh(t, meshOptions{
		ControlPlaneArgs: []string{"--tracing-otlp-addr", col.Addr, "--tracing-sample-percent", "100"},
		ExtProcArgs:      []string{"--otlp-endpoint", col.Addr},
		WorkerArgs:       []string{"--otlp-endpoint", col.Addr},
	})
	const gateway, extproc, worker = "mesh-gateway", "mesh-extproc", "mesh-worker"
	const inferSpan = "POST /v2/models/{name}/infer"

	cold := newClientTrace(t)
	if code, out := inferREST(t, m.Gateway, "iris", irisSetosa, cold.header()); code != 200 || label(t, out) != 0 {
		t.Fatalf("cold iris request: %d %v", code, out)
	}
	// Each part exports in batches, every few seconds.
	spans := col.Await(t, cold.traceID, 30*time.Second, func(spans []otlptest.Span) bool {
		return has(spans, extproc, "extproc.decide") && has(spans, worker, "worker.backend_load") && has(spans, worker, inferSpan) &&
			slices.ContainsFunc(spans, func(s otlptest.Span) bool { return s.Service == gateway && s.Kind == serverKind })
	})
	tr := spanTree{t: t, spans: spans}
	ingress := tr.one(gateway, serverKind, "")
	if ingress.ParentID != cold.spanID {
		t.Errorf("the gateway's span does not continue the client's traceparent: %s", ingress)
	}
	// Envoy's call to ext_proc carries its traceparent in the gRPC metadata; the upstream
	// try carries its own in the request's headers.
	extprocCall := tr.one(gateway, clientKind, "async envoy.service.ext_proc.v3.ExternalProcessor")
	upstream := tr.one(gateway, clientKind, "router")
	tr.childOf(extprocCall, ingress)
	tr.childOf(upstream, ingress)

	decide := tr.one(extproc, serverKind, "extproc.decide")
	tr.childOf(decide, extprocCall)
	for k, v := range map[string]string{"mesh.model": "iris", "mesh.version": "1", "mesh.outcome": "cold_loaded"} {
		if decide.Attrs[k] != v {
			t.Errorf("extproc.decide %s = %q, want %q", k, decide.Attrs[k], v)
		}
	}
	wait := tr.one(extproc, internalKind, "extproc.cold_wait")
	tr.childOf(wait, decide)
	loadCall := tr.one(extproc, clientKind, "mesh.v1.WorkerService/Load")
	tr.childOf(loadCall, wait)

	load := tr.one(worker, serverKind, "mesh.v1.WorkerService/Load")
	tr.childOf(load, loadCall)
	if load.Attrs["mesh.loaded"] != "true" {
		t.Errorf("the worker's Load span does not say it loaded: %s", load)
	}
	tr.childOf(tr.one(worker, internalKind, "worker.fetch"), load)
	tr.childOf(tr.one(worker, internalKind, "worker.backend_load"), load)
	// The reservation before the load, and one more when the model measured larger than
	// the file-size estimate.
	reserves := tr.all(worker, internalKind, "worker.reserve")
	if len(reserves) == 0 {
		t.Errorf("no worker.reserve span; trace:\n%s", tr)
	}
	for _, r := range reserves {
		tr.childOf(r, load)
	}
	infer := tr.one(worker, serverKind, inferSpan)
	tr.childOf(infer, upstream)
	if infer.Attrs["mesh.model"] != "iris" {
		t.Errorf("inference span attributes %v", infer.Attrs)
	}

	m.waitHot(t, "iris", "1")
	hotREST, hotGRPC := newClientTrace(t), newClientTrace(t)
	if code, out := inferREST(t, m.Gateway, "iris", irisSetosa, hotREST.header()); code != 200 || label(t, out) != 0 {
		t.Fatalf("hot iris request: %d %v", code, out)
	}
	ctx := metadata.NewOutgoingContext(t.Context(), metadata.New(hotGRPC.header()))
	if _, err := m.Infer.ModelInfer(ctx, &inference.ModelInferRequest{ModelName: "iris",
		Inputs: []*inference.ModelInferRequest_InferInputTensor{{Name: "input", Datatype: "FP32", Shape: []int64{1, 4}}}, RawInputContents: [][]byte{make([]byte, 16)}}); err != nil {
		t.Fatalf("hot iris gRPC request: %v", err)
	}
	hot := map[clientTrace]string{hotREST: inferSpan, hotGRPC: "inference.GRPCInferenceService/ModelInfer"}
	for c, name := range hot {
		col.Await(t, c.traceID, 30*time.Second, func(spans []otlptest.Span) bool { return has(spans, worker, name) && len(spans) >= 3 })
	}
	// Stopping ext_proc and the worker flushes every span they still hold, so that what
	// the traces lack is known to be absent.
	m.extproc.Stop(t)
	m.workers[0].Stop(t)
	for c, name := range hot {
		tr := spanTree{t: t, spans: col.Trace(c.traceID)}
		ingress := tr.one(gateway, serverKind, "")
		upstream := tr.one(gateway, clientKind, "")
		if ingress.ParentID != c.spanID {
			t.Errorf("the gateway's span does not continue the client's traceparent: %s", ingress)
		}
		tr.childOf(upstream, ingress)
		tr.childOf(tr.one(worker, serverKind, name), upstream)
		if len(tr.spans) != 3 {
			t.Errorf("a hot request made %d spans, want the gateway's two and the worker's %s:\n%s", len(tr.spans), name, tr)
		}
	}
}
