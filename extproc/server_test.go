package extproc

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/internal/residency"
)

const ort = "onnxruntime"

func hv(k, v string) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: k, RawValue: []byte(v)},
		AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}
}

// routedTo is the answer that sends a request to endpoint through override_host.
func routedTo(endpoint, version string) *extprocv3.ProcessingResponse {
	set := []*corev3.HeaderValueOption{hv("x-gateway-destination-endpoint", endpoint)}
	if version != "" {
		set = append(set, hv("x-model-version", version))
	}
	md, _ := structpb.NewStruct(map[string]any{"envoy.lb": map[string]any{"x-gateway-destination-endpoint": endpoint}})
	return &extprocv3.ProcessingResponse{
		Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{
			Response: &extprocv3.CommonResponse{HeaderMutation: &extprocv3.HeaderMutation{SetHeaders: set}}}},
		DynamicMetadata: md,
	}
}

// refused is an ImmediateResponse for a REST request.
func refused(code typev3.StatusCode, outcome, msg string, retryAfter string) *extprocv3.ProcessingResponse {
	headers := []*corev3.HeaderValueOption{hv("content-type", "application/json")}
	if retryAfter != "" {
		headers = append(headers, hv("retry-after", retryAfter))
	}
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ImmediateResponse{ImmediateResponse: &extprocv3.ImmediateResponse{
		Status: &typev3.HttpStatus{Code: code}, Headers: &extprocv3.HeaderMutation{SetHeaders: headers},
		Body: []byte(`{"error":"` + msg + `"}`), Details: "mesh_extproc_" + outcome,
	}}}
}

func rest(model string) map[string]string {
	return map[string]string{":method": "POST", ":path": "/v2/models/" + model + "/infer", "x-model-id": model, "content-type": "application/json"}
}

func grpcCall(model, method string) map[string]string {
	h := map[string]string{":method": "POST", ":path": "/inference.GRPCInferenceService/" + method, "content-type": "application/grpc"}
	if model != "" {
		h["x-model-id"] = model
	}
	return h
}

func checkAnswer(t *testing.T, want *extprocv3.ProcessingResponse, ex exchange, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("exchange: %v", err)
	}
	if diff := cmp.Diff(want, ex.answer, protocmp.Transform(), protocmp.SortRepeatedFields(&extprocv3.HeaderMutation{}, "set_headers")); diff != "" {
		t.Fatalf("answer (-want +got):\n%s", diff)
	}
}

func TestConcurrentColdRequestsShareOneLoad(t *testing.T) {
	m := newMesh(t, mustRegistry(t, testRegistry))
	w1 := m.addWorker(worker("w1", 1, ort, 1000, 0), nil)
	w2 := m.addWorker(worker("w2", 2, ort, 1000, 0), nil)
	loader := &fakeLoader{workers: map[string]*fakeWorker{"w1": w1, "w2": w2}, delay: 300 * time.Millisecond}
	r := m.startReplica(Config{LoadDeadline: 10 * time.Second}, loader)
	r.waitFor(t, workersLive(2))

	const n = 200
	answers := make([]exchange, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { answers[i], errs[i] = r.send(t.Context(), rest("digits")) })
	}
	wg.Wait()
	calls := loader.Calls()
	if len(calls) != 1 {
		t.Fatalf("%d loads %v for %d concurrent cold requests, want 1", len(calls), calls, n)
	}
	worker, _, _ := strings.Cut(calls[0], "/")
	want := routedTo(map[string]string{"w1": "10.0.0.1:8000", "w2": "10.0.0.2:8000"}[worker], "1")
	extended := 0
	for i := range n {
		checkAnswer(t, want, answers[i], errs[i])
		if answers[i].extended != 0 {
			extended++
			if answers[i].extended != 15*time.Second {
				t.Errorf("override_message_timeout %s, want load deadline + 5s", answers[i].extended)
			}
		}
	}
	if extended == 0 {
		t.Error("no held request asked Envoy for more time")
	}
	if got := count(r.srv.metrics.decisions.WithLabelValues("cold_loaded")); got != n {
		t.Errorf("cold_loaded decisions %v, want %d", got, n)
	}
	if got := count(r.srv.metrics.coalesced); got < 1 {
		t.Errorf("coalesced requests %v, want some", got)
	}
	if got := count(r.srv.metrics.coldStarts.WithLabelValues("digits", "ok")); got != 1 {
		t.Errorf("cold starts of digits %v, want 1 for %d requests", got, n)
	}

	// Once the worker reports it ready, the model is hot: routed with no Load and no hold.
	r.waitFor(t, func(s *residency.Snapshot) bool { return len(s.Ready(mv("digits", "1"))) == 1 })
	ex, err := r.send(t.Context(), rest("digits"))
	checkAnswer(t, want, ex, err)
	if ex.extended != 0 || len(loader.Calls()) != 1 {
		t.Fatalf("hot request held (%s) or loaded again (%v)", ex.extended, loader.Calls())
	}
}

func TestHotModelIsRoutedWithoutLoad(t *testing.T) {
	m := newMesh(t, mustRegistry(t, testRegistry))
	w1 := m.addWorker(worker("w1", 1, ort, 1000, 900), map[string]string{"iris:1": "ready", "iris:2": "ready"})
	w2 := m.addWorker(worker("w2", 2, ort, 1000, 100), map[string]string{"iris:1": "ready"})
	loader := &fakeLoader{workers: map[string]*fakeWorker{"w1": w1, "w2": w2}}
	r := m.startReplica(Config{}, loader)
	r.waitFor(t, workersLive(2))

	h := rest("iris")
	h["x-model-version"] = "1"
	ex, err := r.send(t.Context(), h)
	checkAnswer(t, routedTo("10.0.0.2:8000", "1"), ex, err) // the emptier worker
	if ex.extended != 0 {
		t.Errorf("a hot request confirmed at once asked Envoy for more time (%s)", ex.extended)
	}
	h["x-model-version"] = "2"
	ex, err = r.send(t.Context(), h)
	checkAnswer(t, routedTo("10.0.0.1:8000", "2"), ex, err)
	if calls := loader.Calls(); len(calls) != 0 {
		t.Fatalf("loads %v for a hot model", calls)
	}
	if loader.confirms != 2 {
		t.Fatalf("%d residency confirmations, want one per request", loader.confirms)
	}
}

// TestColdAnswerDoesNotWaitForTheRecord: the requests a load held are answered as soon as
// the load ends; writing the load's record (and releasing the load lock) comes after, off
// the cold start's path.
func TestColdAnswerDoesNotWaitForTheRecord(t *testing.T) {
	m := newMesh(t, mustRegistry(t, testRegistry))
	w1 := m.addWorker(worker("w1", 1, ort, 1000, 0), nil)
	recording, release := make(chan struct{}), make(chan struct{})
	unblock := sync.OnceFunc(func() { close(release) })
	defer unblock() // a failure below must not leave the flight blocked
	var records atomic.Int32
	cfg := Config{RecordLoad: func(ctx context.Context, _ placement.ModelVersion, failure *residency.Failure) error {
		records.Add(1)
		close(recording)
		<-release
		return nil
	}}
	r := m.startReplica(cfg, &fakeLoader{workers: map[string]*fakeWorker{"w1": w1}})
	r.waitFor(t, workersLive(1))
	answered := make(chan error, 1)
	go func() {
		ex, err := r.send(t.Context(), rest("digits"))
		if err == nil && ex.answer.GetRequestHeaders() == nil {
			err = fmt.Errorf("answer %v, want the request routed", ex.answer)
		}
		answered <- err
	}()
	select {
	case err := <-answered:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the cold request waited for the load's record to be written")
	}
	<-recording // written all the same
	unblock()
	if records.Load() != 1 {
		t.Fatalf("%d records of one load", records.Load())
	}
}

// TestSlowConfirmationAsksForMoreTime: when the worker of a ready replica takes long to
// confirm it (it waits out a drain and loads the model again), Envoy is asked for more time
// before its message timeout, once, and the request is routed.
func TestSlowConfirmationAsksForMoreTime(t *testing.T) {
	m := newMesh(t, mustRegistry(t, testRegistry))
	w1 := m.addWorker(worker("w1", 1, ort, 1000, 0), map[string]string{"iris:1": "ready"})
	loader := &fakeLoader{workers: map[string]*fakeWorker{"w1": w1}, confirmDelay: 400 * time.Millisecond}
	r := m.startReplica(Config{LoadDeadline: 10 * time.Second, ExtendAfter: 50 * time.Millisecond}, loader)
	r.waitFor(t, workersLive(1))
	h := rest("iris")
	h["x-model-version"] = "1"
	ex, err := r.send(t.Context(), h)
	checkAnswer(t, routedTo("10.0.0.1:8000", "1"), ex, err)
	if ex.extended != 15*time.Second {
		t.Fatalf("override_message_timeout %s, want the load deadline + 5s asked before the slow confirmation ended", ex.extended)
	}
}

func TestRefusals(t *testing.T) {
	m := newMesh(t, mustRegistry(t, testRegistry))
	m.addWorker(worker("w1", 1, ort, 1000, 0), nil)
	r := m.startReplica(Config{}, &fakeLoader{})
	r.waitFor(t, workersLive(1))

	ex, err := r.send(t.Context(), rest("nope"))
	checkAnswer(t, refused(typev3.StatusCode_NotFound, "not_found", "model nope is not registered", ""), ex, err)

	ex, err = r.send(t.Context(), map[string]string{":path": "/v2/models", ":method": "GET"})
	checkAnswer(t, refused(typev3.StatusCode_NotFound, "not_found", "no model named in the request (x-model-id, or a /v2/models/{name}/... path)", ""), ex, err)

	ex, err = r.send(t.Context(), grpcCall("nope", "ModelInfer"))
	checkAnswer(t, &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ImmediateResponse{ImmediateResponse: &extprocv3.ImmediateResponse{
		Status: &typev3.HttpStatus{Code: typev3.StatusCode_NotFound}, GrpcStatus: &extprocv3.GrpcStatus{Status: 5},
		Body: []byte("model nope is not registered"), Details: "mesh_extproc_not_found",
	}}}, ex, err)

	// Server-level calls need no model: they go to a live worker.
	ex, err = r.send(t.Context(), grpcCall("", "ServerLive"))
	checkAnswer(t, routedTo("10.0.0.1:8000", ""), ex, err)
	ex, err = r.send(t.Context(), map[string]string{":path": "/v2/health/ready?x=1", ":method": "GET"})
	checkAnswer(t, routedTo("10.0.0.1:8000", ""), ex, err)

	// A model of a runtime no worker has.
	ex, err = r.send(t.Context(), rest("llm"))
	checkAnswer(t, refused(typev3.StatusCode_ServiceUnavailable, "no_worker", "no live worker with runtime triton (format triton) and capacity for model llm:7 (10 bytes declared)", "1"), ex, err)
	// A model of a format no live worker reads: 503, as for a runtime none runs. The request
	// and the registry are right; the fleet lacks the runtime, which a worker coming up (or
	// coming back) provides, so the client may retry.
	ex, err = r.send(t.Context(), rest("wine"))
	checkAnswer(t, refused(typev3.StatusCode_ServiceUnavailable, "no_worker", "no live worker that reads format sklearn for model wine:1", "1"), ex, err)
}

func TestServerLevelWithoutWorkers(t *testing.T) {
	m := newMesh(t, mustRegistry(t, testRegistry))
	r := m.startReplica(Config{}, &fakeLoader{})
	r.waitFor(t, workersLive(0))
	ex, err := r.send(t.Context(), grpcCall("", "ServerReady"))
	checkAnswer(t, &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ImmediateResponse{ImmediateResponse: &extprocv3.ImmediateResponse{
		Status: &typev3.HttpStatus{Code: typev3.StatusCode_ServiceUnavailable}, GrpcStatus: &extprocv3.GrpcStatus{Status: 14},
		Headers: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{hv("retry-after", "1")}},
		Body:    []byte("no live worker"), Details: "mesh_extproc_no_worker",
	}}}, ex, err)
}

func TestLoadFailureIs503AndNoRoomTriesTheNextWorker(t *testing.T) {
	m := newMesh(t, mustRegistry(t, testRegistry))
	// b is preferred (emptier and room for iris's 100 declared bytes).
	a := m.addWorker(worker("a", 1, ort, 1000, 950), nil)
	b := m.addWorker(worker("b", 2, ort, 1000, 0), nil)
	loader := &fakeLoader{workers: map[string]*fakeWorker{"a": a, "b": b},
		fail: map[string]error{"b": fmt.Errorf("%w: worker b: does not fit", ErrNoRoom)}}
	r := m.startReplica(Config{RetryAfter: 3 * time.Second}, loader)
	r.waitFor(t, workersLive(2))

	h := rest("iris")
	h["x-model-version"] = "1"
	ex, err := r.send(t.Context(), h)
	checkAnswer(t, routedTo("10.0.0.1:8000", "1"), ex, err)
	if diff := cmp.Diff([]string{"b/iris:1", "a/iris:1"}, loader.Calls()); diff != "" {
		t.Fatalf("loads (-want +got):\n%s", diff)
	}

	// Any other failure is final: 503 with Retry-After, and only one worker is tried.
	loader.fail = map[string]error{"b": fmt.Errorf("worker b: model file missing")}
	h["x-model-version"] = "2"
	ex, err = r.send(t.Context(), h)
	checkAnswer(t, refused(typev3.StatusCode_ServiceUnavailable, "load_failed", "load model iris:2: worker b: model file missing", "3"), ex, err)
	if calls := loader.Calls(); len(calls) != 3 {
		t.Fatalf("loads %v, want one more", calls)
	}
	// The failure is not remembered: the next request tries again.
	ex, err = r.send(t.Context(), h)
	checkAnswer(t, refused(typev3.StatusCode_ServiceUnavailable, "load_failed", "load model iris:2: worker b: model file missing", "3"), ex, err)
	if calls := loader.Calls(); len(calls) != 4 {
		t.Fatalf("loads %v, want one more", calls)
	}
	// Files the store refuses for good: 502 without Retry-After, no other worker tried.
	loader.fail = map[string]error{"b": fmt.Errorf("%w: worker b: storage access denied: s3://models/iris/2: AccessDenied", ErrModelFiles)}
	ex, err = r.send(t.Context(), h)
	checkAnswer(t, refused(typev3.StatusCode_BadGateway, "model_files", "load model iris:2: model files cannot be fetched: worker b: storage access denied: s3://models/iris/2: AccessDenied", ""), ex, err)
	if calls := loader.Calls(); len(calls) != 5 {
		t.Fatalf("loads %v, want one more", calls)
	}
}

func TestDeadlineIs503(t *testing.T) {
	m := newMesh(t, mustRegistry(t, testRegistry))
	m.addWorker(worker("w1", 1, ort, 1000, 0), nil)
	loader := &fakeLoader{block: true}
	r := m.startReplica(Config{LoadDeadline: 300 * time.Millisecond}, loader)
	r.waitFor(t, workersLive(1))
	ex, err := r.send(t.Context(), grpcCall("digits", "ModelInfer"))
	if err != nil {
		t.Fatal(err)
	}
	imm := ex.answer.GetImmediateResponse()
	if imm.GetStatus().GetCode() != 503 || imm.GetGrpcStatus().GetStatus() != 14 || !strings.Contains(string(imm.Body), "not ready within 300ms") {
		t.Fatalf("answer %v, want 503 UNAVAILABLE naming the deadline", imm)
	}
	if ex.extended != 5300*time.Millisecond {
		t.Fatalf("override_message_timeout %s, want 5.3s", ex.extended)
	}
}

func TestWaitingRequestsAreBounded(t *testing.T) {
	m := newMesh(t, mustRegistry(t, testRegistry))
	m.addWorker(worker("w1", 1, ort, 1000, 0), nil)
	r := m.startReplica(Config{MaxWaiting: 3, LoadDeadline: 5 * time.Second}, &fakeLoader{block: true})
	r.waitFor(t, workersLive(1))

	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() { r.send(ctx, rest("digits")) })
	}
	defer func() {
		cancel()
		wg.Wait()
		// The server notices the clients leaving a moment after they left.
		for deadline := time.Now().Add(5 * time.Second); gauge(r.srv.metrics.held) != 0 && time.Now().Before(deadline); {
			time.Sleep(5 * time.Millisecond)
		}
		if got := gauge(r.srv.metrics.held); got != 0 {
			t.Errorf("held requests %v after every client left, want 0", got)
		}
	}()
	deadline := time.Now().Add(5 * time.Second)
	for count(r.srv.metrics.coalesced) < 2 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond) // until all three are held
	}
	if got := gauge(r.srv.metrics.held); got != 3 {
		t.Errorf("held requests %v, want 3", got)
	}
	ex, err := r.send(t.Context(), rest("digits"))
	checkAnswer(t, refused(typev3.StatusCode_TooManyRequests, "queue_full", "3 requests already wait for model digits:1", "1"), ex, err)
	// Another model version has its own bound.
	ex, err = r.send(t.Context(), grpcCall("nope", "ModelInfer"))
	if err != nil || ex.answer.GetImmediateResponse().GetStatus().GetCode() != 404 {
		t.Fatalf("unrelated request: %v, %v", ex.answer, err)
	}
}

func TestTwoReplicasLoadOnce(t *testing.T) {
	m := newMesh(t, mustRegistry(t, testRegistry))
	w1 := m.addWorker(worker("w1", 1, ort, 1000, 0), nil)
	w2 := m.addWorker(worker("w2", 2, ort, 1000, 0), nil)
	loader := &fakeLoader{workers: map[string]*fakeWorker{"w1": w1, "w2": w2}, delay: 500 * time.Millisecond}
	replicas := []*replica{m.startReplica(Config{LoadDeadline: 10 * time.Second}, loader), m.startReplica(Config{LoadDeadline: 10 * time.Second}, loader)}
	for _, r := range replicas {
		r.waitFor(t, workersLive(2))
	}
	var mu sync.Mutex
	endpoints := map[string]int{}
	var wg sync.WaitGroup
	for i := range 100 {
		r := replicas[i%2]
		wg.Go(func() {
			ex, err := r.send(t.Context(), rest("digits"))
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				endpoints["error: "+err.Error()]++
				return
			}
			for _, h := range ex.answer.GetRequestHeaders().GetResponse().GetHeaderMutation().GetSetHeaders() {
				if h.Header.Key == "x-gateway-destination-endpoint" {
					endpoints[string(h.Header.RawValue)]++
				}
			}
		})
	}
	wg.Wait()
	if calls := loader.Calls(); len(calls) != 1 {
		t.Fatalf("%d loads %v from two replicas, want 1", len(calls), calls)
	}
	if len(endpoints) != 1 || slices.Collect(mapValues(endpoints))[0] != 100 {
		t.Fatalf("answers %v, want all 100 routed to one endpoint", endpoints)
	}
	waited := count(replicas[0].srv.metrics.lockWaits) + count(replicas[1].srv.metrics.lockWaits)
	if waited != 1 {
		t.Fatalf("lock waits %v, want 1: one replica loads, the other waits for it", waited)
	}
}

func mapValues(m map[string]int) func(func(int) bool) {
	return func(yield func(int) bool) {
		for _, v := range m {
			if !yield(v) {
				return
			}
		}
	}
}

// count reads a counter's value.
func gauge(g prometheus.Gauge) float64 {
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		panic(err)
	}
	return m.GetGauge().GetValue()
}

func count(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}

func TestRequestOfJoinsRepeatedHeaders(t *testing.T) {
	h := &extprocv3.HttpHeaders{Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
		{Key: ":path", RawValue: []byte("/v2/models/iris/infer?debug=1")},
		{Key: "X-User", RawValue: []byte("alice")},
		{Key: "x-user", RawValue: []byte("beta-7")},
		{Key: "content-type", RawValue: []byte("application/grpc+proto")},
	}}}
	req, grpc := requestOf(h)
	if got, _ := req.Header("x-user"); got != "alice,beta-7" {
		t.Errorf("repeated x-user read as %q, want the values joined as Envoy's matchers see them", got)
	}
	if req.Path != "/v2/models/iris/infer" || !grpc {
		t.Errorf("path %q, grpc %v", req.Path, grpc)
	}
}

// TestUnreachableWorkerIsLeftOutAndItsLeaseEnded: the best candidate's management port
// refuses connections (its process died, its lease has not run out): the load goes to the
// next worker at once, the dead one's lease is ended and announced, so that the control
// plane stops routing to it without waiting for the lease, and later decisions here leave
// it out.
func TestUnreachableWorkerIsLeftOutAndItsLeaseEnded(t *testing.T) {
	m := newMesh(t, mustRegistry(t, testRegistry))
	dead := m.addWorker(worker("w1", 1, ort, 1000, 0), nil)
	live := m.addWorker(worker("w2", 2, ort, 1000, 500), nil) // fuller: ranked after w1
	loader := &fakeLoader{workers: map[string]*fakeWorker{"w1": dead, "w2": live},
		fail: map[string]error{"w1": fmt.Errorf("%w: worker w1: its management port refuses connections", ErrWorkerGone)}}
	r := m.startReplica(Config{LoadDeadline: 5 * time.Second}, loader)
	r.waitFor(t, workersLive(2))
	sub := m.rdb.Subscribe(t.Context(), m.keys.Events())
	defer sub.Close()
	if _, err := sub.Receive(t.Context()); err != nil {
		t.Fatal(err)
	}

	ex, err := r.send(t.Context(), rest("digits"))
	checkAnswer(t, routedTo("10.0.0.2:8000", "1"), ex, err)
	if calls := loader.Calls(); !slices.Equal(calls, []string{"w1/digits:1", "w2/digits:1"}) {
		t.Fatalf("loads %v, want the dead worker first, then the next one", calls)
	}
	if got := count(r.srv.metrics.unreachable); got != 1 {
		t.Errorf("unreachable workers counted %v, want 1", got)
	}
	timeout := time.After(5 * time.Second)
	for ended := false; !ended; {
		select {
		case msg := <-sub.Channel():
			var e residency.Event
			if err := json.Unmarshal([]byte(msg.Payload), &e); err != nil {
				t.Fatal(err)
			}
			ended = e.Worker == "w1" && e.State == "unreachable"
		case <-timeout:
			t.Fatal("the dead worker's lease end was not announced")
		}
	}
	// Suspected here for SuspectFor: the next cold model skips it without asking it.
	ex, err = r.send(t.Context(), rest("big"))
	checkAnswer(t, routedTo("10.0.0.2:8000", "1"), ex, err)
	if calls := loader.Calls(); len(calls) != 3 || calls[2] != "w2/big:1" {
		t.Fatalf("loads %v: the suspected worker was asked again", calls)
	}
}

// TestNoWorkerRereadsTheState: a request no worker in the view can take (here: of a format
// none reads) makes the state be read again before it is refused: a worker whose model
// server just came up may be in Redis already.
func TestNoWorkerRereadsTheState(t *testing.T) {
	m := newMesh(t, mustRegistry(t, testRegistry))
	m.addWorker(worker("w1", 1, ort, 1000, 0), nil)
	var reads atomic.Int32
	r := m.startReplica(Config{Refresh: func(context.Context) error { reads.Add(1); return nil }}, &fakeLoader{})
	r.waitFor(t, workersLive(1))
	ex, err := r.send(t.Context(), rest("wine"))
	checkAnswer(t, refused(typev3.StatusCode_ServiceUnavailable, "no_worker", "no live worker that reads format sklearn for model wine:1", "1"), ex, err)
	if reads.Load() != 1 {
		t.Fatalf("%d reads of the state before refusing, want 1", reads.Load())
	}
}

// TestUnknownModelRereadsTheState: a request for a model the view does not know makes the
// state be read again before it is refused, at most once per 100 ms however many arrive.
func TestUnknownModelRereadsTheState(t *testing.T) {
	m := newMesh(t, mustRegistry(t, testRegistry))
	m.addWorker(worker("w1", 1, ort, 1000, 0), nil)
	var reads atomic.Int32
	r := m.startReplica(Config{Refresh: func(context.Context) error { reads.Add(1); return nil }}, &fakeLoader{})
	r.waitFor(t, workersLive(1))
	start := time.Now()
	for range 3 {
		ex, err := r.send(t.Context(), rest("nope"))
		checkAnswer(t, refused(typev3.StatusCode_NotFound, "not_found", "model nope is not registered", ""), ex, err)
	}
	if n := reads.Load(); n != 1 && time.Since(start) < minRefresh {
		t.Fatalf("%d reads for three refusals within %v, want 1", n, minRefresh)
	}
	if reads.Load() == 0 {
		t.Fatal("an unknown model was refused without reading the state again")
	}
}
