package main

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/modelmesh/mesh/wasm/internal/proxywasm/types"
)

// fakeHost is an in-memory request for stream's callbacks, plus the host's counters.
type fakeHost struct {
	headers      [][2]string
	body         []byte
	reply        *reply
	routeCleared int
	counters     map[string]uint64
}

type reply struct {
	code       uint32
	headers    [][2]string
	body       string
	grpcStatus int32
}

func (h *fakeHost) RequestHeaders() ([][2]string, error) { return slices.Clone(h.headers), nil }

func (h *fakeHost) ReplaceRequestHeader(name, value string) error {
	h.RemoveRequestHeader(name)
	h.headers = append(h.headers, [2]string{name, value})
	return nil
}

func (h *fakeHost) RemoveRequestHeader(name string) error {
	h.headers = slices.DeleteFunc(h.headers, func(p [2]string) bool { return strings.EqualFold(p[0], name) })
	return nil
}

func (h *fakeHost) RequestBody(size int) ([]byte, error) {
	if size > len(h.body) {
		return nil, fmt.Errorf("asked for %d bytes of %d", size, len(h.body))
	}
	return h.body[:size], nil
}

func (h *fakeHost) SendResponse(code uint32, headers [][2]string, body []byte, grpcStatus int32) error {
	h.reply = &reply{code, headers, string(body), grpcStatus}
	return nil
}

func (h *fakeHost) ClearRouteCache() error { h.routeCleared++; return nil }
func (h *fakeHost) DebugEnabled() bool     { return true }
func (h *fakeHost) Debugf(string, ...any)  {}
func (h *fakeHost) Warnf(string, ...any)   {}
func (h *fakeHost) DefineCounter(name string) (counter, error) {
	if h.counters == nil {
		h.counters = map[string]uint64{}
	}
	if _, ok := h.counters[name]; !ok {
		h.counters[name] = 0
	}
	return fakeCounter{h, name}, nil
}

type fakeCounter struct {
	h    *fakeHost
	name string
}

func (c fakeCounter) Increment(n uint64) { c.h.counters[c.name] += n }

func (h *fakeHost) header(name string) (string, bool) {
	for _, p := range h.headers {
		if p[0] == name {
			return p[1], true
		}
	}
	return "", false
}

func newTestPlugin(t *testing.T, h *fakeHost, cfg string) *plugin {
	t.Helper()
	p := &plugin{}
	if err := p.configure([]byte(cfg), h, t.Logf); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestStream(t *testing.T) {
	t.Parallel()
	grpc := func(method string, extra ...[2]string) [][2]string {
		return append([][2]string{{":method", "POST"}, {":path", "/inference.GRPCInferenceService/" + method},
			{"content-type", "application/grpc"}}, extra...)
	}
	infer := frame(str(1, "iris"), str(2, "4"), str(6, strings.Repeat("t", 40)))
	tests := []struct {
		name    string
		headers [][2]string
		body    []byte
		chunks  []int  // body sizes buffered at each body callback; the last is end of stream
		config  string // the plugin configuration; "" takes the defaults
		// want: the headers the upstream sees (nil when refused), the reply, counters.
		wantHeaders  map[string]string
		wantAbsent   []string
		wantReply    *reply
		wantActions  []types.Action
		wantCounters map[string]uint64
		// routeKept: the client sent the headers the filter would set, so the route chosen
		// before it ran stands and the cache is not cleared.
		routeKept bool
	}{
		{
			name:         "REST path",
			headers:      [][2]string{{":path", "/v2/models/iris/versions/1/infer"}, {"content-type", "application/json"}},
			wantHeaders:  map[string]string{"x-model-id": "iris", "x-model-version": "1"},
			wantActions:  []types.Action{types.ActionContinue},
			wantCounters: map[string]uint64{"modelmesh.model_requests.iris": 1},
		},
		{
			name: "spoofed internal headers are removed",
			headers: [][2]string{{":path", "/v2/models/iris/infer"}, {"x-gateway-destination-endpoint", "10.0.0.1:80"},
				{"x-mesh-foo", "1"}, {"x-mesh-foo", "2"}, {"x-mesh-bar", "3"}},
			wantHeaders:  map[string]string{"x-model-id": "iris"},
			wantAbsent:   []string{"x-gateway-destination-endpoint", "x-mesh-foo", "x-mesh-bar", "x-model-version"},
			wantActions:  []types.Action{types.ActionContinue},
			wantCounters: map[string]uint64{"modelmesh.model_requests.iris": 1},
		},
		{
			name:         "mm-vmodel-id and an empty version header",
			headers:      [][2]string{{":path", "/v2/models/digits/infer"}, {"mm-vmodel-id", "digits"}, {"x-model-version", ""}},
			wantHeaders:  map[string]string{"x-model-id": "digits", "mm-vmodel-id": "digits"},
			wantAbsent:   []string{"x-model-version"},
			wantActions:  []types.Action{types.ActionContinue},
			wantCounters: map[string]uint64{"modelmesh.model_requests.digits": 1},
		},
		{
			name:        "no model passes untouched but for internal headers",
			headers:     [][2]string{{":path", "/v2/health/ready"}, {"x-mesh-role", "admin"}, {"x-model-version", "5"}},
			wantHeaders: map[string]string{":path": "/v2/health/ready", "x-model-version": "5"},
			wantAbsent:  []string{"x-model-id", "x-mesh-role"},
			wantActions: []types.Action{types.ActionContinue},
		},
		{
			name:         "invalid REST id",
			headers:      [][2]string{{":path", "/v2/models/a%2Fb/infer"}},
			wantReply:    &reply{400, [][2]string{{"content-type", "application/json"}}, `{"error":"model name from the KServe v2 path: invalid model id: \"a%2Fb\": character '%' at offset 1 not allowed"}`, -1},
			wantActions:  []types.Action{types.ActionPause},
			wantCounters: map[string]uint64{statInvalid: 1},
		},
		{
			name:         "gRPC body in one chunk",
			headers:      grpc("ModelInfer", [2]string{"x-mesh-x", "1"}),
			body:         infer,
			chunks:       []int{len(infer)},
			wantHeaders:  map[string]string{"x-model-id": "iris", "x-model-version": "4"},
			wantAbsent:   []string{"x-mesh-x"},
			wantActions:  []types.Action{types.ActionPause, types.ActionContinue},
			wantCounters: map[string]uint64{"modelmesh.model_requests.iris": 1},
		},
		{
			name:         "gRPC body in three chunks, split inside the prefix and the name",
			headers:      grpc("ModelInfer", [2]string{"x-model-version", "9"}),
			body:         infer,
			chunks:       []int{3, 8, len(infer)},
			wantHeaders:  map[string]string{"x-model-id": "iris", "x-model-version": "9"},
			wantActions:  []types.Action{types.ActionPause, types.ActionPause, types.ActionPause, types.ActionContinue},
			wantCounters: map[string]uint64{"modelmesh.model_requests.iris": 1},
		},
		{
			name:        "gRPC body ends before the message does",
			headers:     grpc("ModelReady"),
			body:        infer[:10],
			chunks:      []int{10},
			wantAbsent:  []string{"x-model-id"},
			wantActions: []types.Action{types.ActionPause, types.ActionContinue},
		},
		{
			name:        "gRPC compressed message",
			headers:     grpc("ModelMetadata"),
			body:        []byte{1, 0, 0, 0, 1, 0},
			chunks:      []int{6},
			wantAbsent:  []string{"x-model-id"},
			wantActions: []types.Action{types.ActionPause, types.ActionContinue},
		},
		{
			name:         "invalid gRPC id",
			headers:      grpc("ModelInfer"),
			body:         frame(str(1, "../etc")),
			chunks:       []int{len(frame(str(1, "../etc")))},
			wantReply:    &reply{400, nil, `model name from the gRPC request body: invalid model id: "../etc" contains ".."`, 3},
			wantActions:  []types.Action{types.ActionPause, types.ActionPause},
			wantCounters: map[string]uint64{statInvalid: 1},
		},
		{
			name:         "malformed gRPC body",
			headers:      grpc("ModelInfer"),
			body:         frame([]byte{1<<3 | 2, 50}),
			chunks:       []int{7},
			wantReply:    &reply{400, nil, "malformed gRPC request message: field 1: length 50 beyond the 0 bytes left", 3},
			wantActions:  []types.Action{types.ActionPause, types.ActionPause},
			wantCounters: map[string]uint64{statInvalid: 1},
		},
		{
			name:         "gRPC message too large",
			headers:      grpc("ModelInfer"),
			body:         []byte{0, 0, 0x20, 0, 0},
			chunks:       []int{5},
			wantReply:    &reply{413, nil, "the first gRPC message is 2097152 bytes, more than the 1048571 this gateway buffers to find the model name; send the x-model-id header", 8},
			wantActions:  []types.Action{types.ActionPause, types.ActionPause},
			wantCounters: map[string]uint64{statInvalid: 1},
		},
		{
			name:        "gRPC without a model header passes on when the body may not be read",
			headers:     grpc("ModelInfer"),
			config:      `{"read_grpc_body": false}`,
			body:        infer,
			chunks:      []int{len(infer)},
			wantAbsent:  []string{"x-model-id", "x-model-version"},
			wantActions: []types.Action{types.ActionContinue},
		},
		{
			name:         "gRPC header still read when the body may not be",
			headers:      grpc("ModelInfer", [2]string{"x-model-id", "digits"}),
			config:       `{"read_grpc_body": false}`,
			wantHeaders:  map[string]string{"x-model-id": "digits"},
			routeKept:    true,
			wantActions:  []types.Action{types.ActionContinue},
			wantCounters: map[string]uint64{"modelmesh.model_requests.digits": 1},
		},
		{
			name:         "invalid gRPC header id",
			headers:      grpc("ModelInfer", [2]string{"x-model-id", "bad id"}),
			wantReply:    &reply{400, nil, `model name from header x-model-id: invalid model id: "bad id": character ' ' at offset 3 not allowed`, 3},
			wantActions:  []types.Action{types.ActionPause},
			wantCounters: map[string]uint64{statInvalid: 1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := &fakeHost{headers: tt.headers, body: tt.body}
			p := newTestPlugin(t, h, tt.config)
			s := &stream{host: h, plugin: p}
			actions := []types.Action{s.onRequestHeaders(len(tt.chunks) == 0)}
			for i, size := range tt.chunks {
				if actions[len(actions)-1] == types.ActionContinue || h.reply != nil {
					break
				}
				actions = append(actions, s.onRequestBody(size, i == len(tt.chunks)-1))
			}
			if diff := cmp.Diff(tt.wantActions, actions); diff != "" {
				t.Errorf("actions (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantReply, h.reply, cmp.AllowUnexported(reply{})); diff != "" {
				t.Errorf("reply (-want +got):\n%s", diff)
			}
			for name, want := range tt.wantHeaders {
				if got, ok := h.header(name); !ok || got != want {
					t.Errorf("header %s = %q (present %v), want %q", name, got, ok, want)
				}
			}
			for _, name := range tt.wantAbsent {
				if got, ok := h.header(name); ok {
					t.Errorf("header %s = %q, want it absent", name, got)
				}
			}
			if _, set := tt.wantHeaders["x-model-id"]; set && !tt.routeKept && h.routeCleared != 1 {
				t.Errorf("route cache cleared %d times, want once", h.routeCleared)
			}
			if tt.routeKept && h.routeCleared != 0 {
				t.Errorf("route cache cleared %d times, want none: the headers are the client's", h.routeCleared)
			}
			want := map[string]uint64{statInvalid: 0, statOverflow: 0}
			for k, v := range tt.wantCounters {
				want[k] = v
			}
			if diff := cmp.Diff(want, h.counters); diff != "" {
				t.Errorf("counters (-want +got):\n%s", diff)
			}
		})
	}
}

// TestStreamUnconfigured checks that a stream of a plugin without a valid configuration
// fails closed.
func TestStreamUnconfigured(t *testing.T) {
	t.Parallel()
	h := &fakeHost{headers: [][2]string{{":path", "/v2/models/iris/infer"}}}
	s := &stream{host: h}
	if got := s.onRequestHeaders(true); got != types.ActionPause || h.reply == nil || h.reply.code != 500 {
		t.Fatalf("action %v reply %+v, want a 500", got, h.reply)
	}
}

func TestStatsBound(t *testing.T) {
	t.Parallel()
	h := &fakeHost{}
	p := newTestPlugin(t, h, `{"max_models": 2}`)
	for _, m := range []string{"a", "b", "a", "c", "d", "b", "c"} {
		p.stats.countModel(m)
	}
	want := map[string]uint64{
		"modelmesh.model_requests.a": 2, "modelmesh.model_requests.b": 2,
		statOverflow: 3, statInvalid: 0,
	}
	if diff := cmp.Diff(want, h.counters); diff != "" {
		t.Errorf("counters (-want +got):\n%s", diff)
	}
	// A reconfiguration keeps the counters and applies the new bound.
	if err := p.configure([]byte(`{"max_models": 3}`), h, t.Logf); err != nil {
		t.Fatal(err)
	}
	p.stats.countModel("c")
	p.stats.countModel("d")
	want["modelmesh.model_requests.c"] = 1
	want[statOverflow] = 4
	if diff := cmp.Diff(want, h.counters); diff != "" {
		t.Errorf("after reconfiguration (-want +got):\n%s", diff)
	}
}

func TestStatsZeroBound(t *testing.T) {
	t.Parallel()
	h := &fakeHost{}
	p := newTestPlugin(t, h, `{"max_models": 0}`)
	p.stats.countModel("a")
	if diff := cmp.Diff(map[string]uint64{statOverflow: 1, statInvalid: 0}, h.counters); diff != "" {
		t.Errorf("counters (-want +got):\n%s", diff)
	}
}

func TestParseConfig(t *testing.T) {
	t.Parallel()
	tests := []struct {
		give    string
		want    config
		wantErr string
	}{
		{give: "", want: config{1000, 1<<20 - 5, true}},
		{give: "  \n", want: config{1000, 1<<20 - 5, true}},
		{give: "{}", want: config{1000, 1<<20 - 5, true}},
		{give: `{"max_models": 5}`, want: config{5, 1<<20 - 5, true}},
		{give: `{"max_models": 0, "max_grpc_message_bytes": 100}`, want: config{0, 100, true}},
		{give: `{"read_grpc_body": false}`, want: config{1000, 1<<20 - 5, false}},
		{give: `{"max_model": 5}`, wantErr: "unknown field"},
		{give: `{"max_models": -1}`, wantErr: "outside"},
		{give: `{"max_models": 1000001}`, wantErr: "outside"},
		{give: `{"max_models": "5"}`, wantErr: "cannot unmarshal"},
		{give: `{"max_grpc_message_bytes": 0}`, wantErr: "outside"},
		{give: `{"max_grpc_message_bytes": 67108865}`, wantErr: "outside"},
		{give: `{"max_models": 5} {}`, wantErr: "after"},
		{give: `not json`, wantErr: "invalid character"},
	}
	for _, tt := range tests {
		t.Run(tt.give, func(t *testing.T) {
			t.Parallel()
			got, err := parseConfig([]byte(tt.give))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

// FuzzParseConfig: any plugin configuration is accepted within its limits or refused with
// an error; none panics.
func FuzzParseConfig(f *testing.F) {
	for _, seed := range []string{"", "{}", `{"max_models": 5}`, `{"read_grpc_body": false, "max_grpc_message_bytes": 100}`, `{"max_models": -1}`, `[1]`} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := parseConfig(data)
		if err != nil {
			return
		}
		if c.MaxModels < 0 || c.MaxModels > limitMaxModels || c.MaxGRPCMessageBytes < 1 || c.MaxGRPCMessageBytes > limitMaxGRPCMessageBytes {
			t.Fatalf("accepted %q as %+v, outside the limits", data, c)
		}
	})
}
