//go:build !wasip1

package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"

	"github.com/modelmesh/mesh/wasm/internal/proxywasm/types"
)

// This file drives the real modelid.wasm through the proxy-wasm ABI in wazero, with a host
// written for the test: it checks the binding (exports, imports, memory handed across) and
// the filter together, as Envoy would call them.

var module struct {
	once     sync.Once
	runtime  wazero.Runtime
	compiled wazero.CompiledModule
	err      error
}

// compiledModule builds the filter for wasip1 once per test binary and compiles it.
func compiledModule(t *testing.T) (wazero.Runtime, wazero.CompiledModule) {
	t.Helper()
	module.once.Do(func() {
		dir, err := os.MkdirTemp("", "modelid-wasm")
		if err != nil {
			module.err = err
			return
		}
		out := filepath.Join(dir, "modelid.wasm")
		goBin, err := exec.LookPath("go")
		if err != nil {
			module.err = fmt.Errorf("the go command builds the module under test: %w", err)
			return
		}
		cmd := exec.Command(goBin, "build", "-buildmode=c-shared", "-o", out, ".")
		cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm")
		if b, err := cmd.CombinedOutput(); err != nil {
			module.err = fmt.Errorf("go build: %v\n%s", err, b)
			return
		}
		code, err := os.ReadFile(out)
		os.RemoveAll(dir)
		if err != nil {
			module.err = err
			return
		}
		ctx := context.Background()
		r := wazero.NewRuntime(ctx)
		wasi_snapshot_preview1.MustInstantiate(ctx, r)
		if err := instantiateHost(ctx, r); err != nil {
			module.err = err
			return
		}
		module.runtime = r
		module.compiled, module.err = r.CompileModule(ctx, code)
	})
	if module.err != nil {
		t.Fatal(module.err)
	}
	return module.runtime, module.compiled
}

// testHost is the proxy's side of one VM: the current request and what the plugin did.
type testHost struct {
	mod         api.Module
	config      []byte
	headers     [][2]string
	body        []byte
	reply       *reply
	routeClears int
	metricIDs   map[string]uint32
	metrics     map[uint32]int64
	logs        []string
	// logLevel is the level the host logs at (proxy_get_log_level); 0, trace, by default.
	logLevel uint32
}

type hostKey struct{}

func hostOf(ctx context.Context) *testHost { return ctx.Value(hostKey{}).(*testHost) }

// ABI status codes and enum values the test host uses.
const (
	okStatus       = 0
	notFoundStatus = 1
	badArgStatus   = 2
)

// hostFuncs implements the env imports the filter uses, by ABI name.
var hostFuncs = map[string]any{
	"proxy_log": func(ctx context.Context, m api.Module, level, ptr, size uint32) uint32 {
		h := hostOf(ctx)
		h.logs = append(h.logs, fmt.Sprintf("%d %s", level, read(m, ptr, size)))
		return okStatus
	},
	"proxy_get_log_level": func(ctx context.Context, m api.Module, retLevel uint32) uint32 {
		if !m.Memory().WriteUint32Le(retLevel, hostOf(ctx).logLevel) {
			return badArgStatus
		}
		return okStatus
	},
	"proxy_get_buffer_bytes": func(ctx context.Context, m api.Module, bt, start, maxSize, retPtr, retSize uint32) uint32 {
		h := hostOf(ctx)
		var buf []byte
		switch bt {
		case 0:
			buf = h.body
		case 7:
			buf = h.config
		default:
			return badArgStatus
		}
		if len(buf) == 0 {
			return notFoundStatus
		}
		if int(start) > len(buf) {
			return badArgStatus
		}
		end := min(uint64(start)+uint64(maxSize), uint64(len(buf)))
		return h.give(ctx, buf[start:end], retPtr, retSize)
	},
	"proxy_get_header_map_pairs": func(ctx context.Context, m api.Module, mt, retPtr, retSize uint32) uint32 {
		h := hostOf(ctx)
		if mt != 0 {
			return badArgStatus
		}
		return h.give(ctx, encodeMapForTest(h.headers), retPtr, retSize)
	},
	"proxy_replace_header_map_value": func(ctx context.Context, m api.Module, mt, kPtr, kSize, vPtr, vSize uint32) uint32 {
		h := hostOf(ctx)
		key, value := string(read(m, kPtr, kSize)), string(read(m, vPtr, vSize))
		h.remove(key)
		h.headers = append(h.headers, [2]string{key, value})
		return okStatus
	},
	"proxy_remove_header_map_value": func(ctx context.Context, m api.Module, mt, kPtr, kSize uint32) uint32 {
		hostOf(ctx).remove(string(read(m, kPtr, kSize)))
		return okStatus
	},
	"proxy_send_local_response": func(ctx context.Context, m api.Module, code, dPtr, dSize, bPtr, bSize, hPtr, hSize, grpcStatus uint32) uint32 {
		h := hostOf(ctx)
		headers := decodeMapForTest(read(m, hPtr, hSize))
		h.reply = &reply{code: code, headers: headers, body: string(read(m, bPtr, bSize)), grpcStatus: int32(grpcStatus)}
		return okStatus
	},
	"proxy_define_metric": func(ctx context.Context, m api.Module, mt, nPtr, nSize, retID uint32) uint32 {
		h := hostOf(ctx)
		name := string(read(m, nPtr, nSize))
		if mt != 0 {
			return badArgStatus
		}
		id, ok := h.metricIDs[name]
		if !ok {
			id = uint32(len(h.metricIDs) + 1)
			h.metricIDs[name] = id
		}
		m.Memory().WriteUint32Le(retID, id)
		return okStatus
	},
	"proxy_increment_metric": func(ctx context.Context, m api.Module, id uint32, offset int64) uint32 {
		hostOf(ctx).metrics[id] += offset
		return okStatus
	},
	"proxy_call_foreign_function": func(ctx context.Context, m api.Module, nPtr, nSize, aPtr, aSize, retPtr, retSize uint32) uint32 {
		h := hostOf(ctx)
		if string(read(m, nPtr, nSize)) != "clear_route_cache" {
			return notFoundStatus
		}
		h.routeClears++
		return okStatus
	},
}

func instantiateHost(ctx context.Context, r wazero.Runtime) error {
	b := r.NewHostModuleBuilder("env")
	for name, fn := range hostFuncs {
		b.NewFunctionBuilder().WithFunc(fn).Export(name)
	}
	_, err := b.Instantiate(ctx)
	return err
}

func read(m api.Module, ptr, size uint32) []byte {
	b, ok := m.Memory().Read(ptr, size)
	if !ok {
		panic(fmt.Sprintf("read %d bytes at %#x out of memory", size, ptr))
	}
	return bytes.Clone(b)
}

// give hands data to the plugin the ABI's way: memory from proxy_on_memory_allocate,
// its address and size written where the plugin asked.
func (h *testHost) give(ctx context.Context, data []byte, retPtr, retSize uint32) uint32 {
	res, err := h.mod.ExportedFunction("proxy_on_memory_allocate").Call(ctx, uint64(len(data)))
	if err != nil {
		panic(err)
	}
	ptr := uint32(res[0])
	mem := h.mod.Memory()
	if !mem.Write(ptr, data) || !mem.WriteUint32Le(retPtr, ptr) || !mem.WriteUint32Le(retSize, uint32(len(data))) {
		panic("write out of memory")
	}
	return okStatus
}

func (h *testHost) remove(key string) {
	h.headers = slices.DeleteFunc(h.headers, func(p [2]string) bool { return strings.EqualFold(p[0], key) })
}

func (h *testHost) header(name string) (string, bool) {
	for _, p := range h.headers {
		if p[0] == name {
			return p[1], true
		}
	}
	return "", false
}

func (h *testHost) counter(name string) int64 {
	id, ok := h.metricIDs[name]
	if !ok {
		return -1
	}
	return h.metrics[id]
}

// encodeMapForTest and decodeMapForTest are the host's side of the ABI's header map
// layout, written independently of the binding's.
func encodeMapForTest(pairs [][2]string) []byte {
	var sizes, data []byte
	sizes = binary.LittleEndian.AppendUint32(sizes, uint32(len(pairs)))
	for _, p := range pairs {
		sizes = binary.LittleEndian.AppendUint32(sizes, uint32(len(p[0])))
		sizes = binary.LittleEndian.AppendUint32(sizes, uint32(len(p[1])))
		data = append(append(append(append(data, p[0]...), 0), p[1]...), 0)
	}
	return append(sizes, data...)
}

func decodeMapForTest(b []byte) [][2]string {
	if len(b) == 0 {
		return nil
	}
	n := int(binary.LittleEndian.Uint32(b))
	var pairs [][2]string
	data := b[4+8*n:]
	for i := range n {
		k := int(binary.LittleEndian.Uint32(b[4+8*i:]))
		v := int(binary.LittleEndian.Uint32(b[8+8*i:]))
		pairs = append(pairs, [2]string{string(data[:k]), string(data[k+1 : k+1+v])})
		data = data[k+v+2:]
	}
	return pairs
}

// vm is one instance of the module with its root context configured.
type vm struct {
	t      *testing.T
	ctx    context.Context
	host   *testHost
	nextID uint64
}

const rootID = 1

// startVM instantiates the module and runs the start sequence Envoy runs: _initialize,
// the root context, proxy_on_vm_start, proxy_on_configure. It returns the vm and what
// proxy_on_configure answered.
func startVM(t *testing.T, config string) (*vm, bool) {
	t.Helper()
	r, compiled := compiledModule(t)
	h := &testHost{config: []byte(config), metricIDs: map[string]uint32{}, metrics: map[uint32]int64{}}
	ctx := context.WithValue(context.Background(), hostKey{}, h)
	var stderr bytes.Buffer
	mod, err := r.InstantiateModule(ctx, compiled, wazero.NewModuleConfig().WithName("").
		WithStartFunctions().WithStderr(&stderr).WithStdout(&stderr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		mod.Close(context.Background())
		if t.Failed() {
			t.Logf("plugin logs:\n%s\nstderr:\n%s", strings.Join(h.logs, "\n"), stderr.String())
		}
	})
	h.mod = mod
	v := &vm{t: t, ctx: ctx, host: h, nextID: rootID + 1}
	v.call("_initialize")
	v.call("proxy_on_context_create", rootID, 0)
	if v.call("proxy_on_vm_start", rootID, 0)[0] != 1 {
		t.Fatal("proxy_on_vm_start refused")
	}
	return v, v.call("proxy_on_configure", rootID, uint64(len(config)))[0] == 1
}

func (v *vm) call(name string, args ...uint64) []uint64 {
	v.t.Helper()
	fn := v.host.mod.ExportedFunction(name)
	if fn == nil {
		v.t.Fatalf("module does not export %s", name)
	}
	res, err := fn.Call(v.ctx, args...)
	if err != nil {
		v.t.Fatalf("%s: %v", name, err)
	}
	return res
}

// request runs one HTTP request through the plugin: headers, then the body in chunks
// (each chunk size is the body buffered so far), stopping at a local reply or Continue.
func (v *vm) request(headers [][2]string, body []byte, chunks []int) []types.Action {
	h := v.host
	h.headers, h.body, h.reply, h.routeClears = headers, nil, nil, 0
	id := v.nextID
	v.nextID++
	v.call("proxy_on_context_create", id, rootID)
	eos := uint64(0)
	if len(chunks) == 0 {
		eos = 1
	}
	actions := []types.Action{types.Action(v.call("proxy_on_request_headers", id, uint64(len(headers)), eos)[0])}
	for i, size := range chunks {
		if actions[len(actions)-1] == types.ActionContinue || h.reply != nil {
			break
		}
		h.body = body[:size]
		eos := uint64(0)
		if i == len(chunks)-1 {
			eos = 1
		}
		actions = append(actions, types.Action(v.call("proxy_on_request_body", id, uint64(size), eos)[0]))
	}
	v.call("proxy_on_delete", id)
	return actions
}

func TestModuleImports(t *testing.T) {
	_, compiled := compiledModule(t)
	var env []string
	for _, f := range compiled.ImportedFunctions() {
		if mod, name, _ := f.Import(); mod == "env" {
			env = append(env, name)
		}
	}
	var implemented []string
	for name := range hostFuncs {
		implemented = append(implemented, name)
	}
	slices.Sort(env)
	slices.Sort(implemented)
	if diff := cmp.Diff(implemented, env); diff != "" {
		t.Errorf("env imports of the module (-host +module):\n%s", diff)
	}
	exports := compiled.ExportedFunctions()
	for _, name := range []string{"_initialize", "proxy_abi_version_0_2_1", "proxy_on_memory_allocate",
		"proxy_on_context_create", "proxy_on_vm_start", "proxy_on_configure", "proxy_on_request_headers",
		"proxy_on_request_body", "proxy_on_request_trailers", "proxy_on_delete"} {
		if _, ok := exports[name]; !ok {
			t.Errorf("module does not export %s", name)
		}
	}
	// What the filter does not use is not exported: the host then skips the call, which
	// would cost a crossing into the Go runtime on every request.
	for _, name := range []string{"proxy_on_response_headers", "proxy_on_response_body", "proxy_on_response_trailers",
		"proxy_on_log", "proxy_on_done"} {
		if _, ok := exports[name]; ok {
			t.Errorf("module exports %s, which the filter does not use", name)
		}
	}
}

func TestModuleRequests(t *testing.T) {
	v, ok := startVM(t, `{"max_models": 2}`)
	if !ok {
		t.Fatal("configuration refused")
	}
	grpc := func(method string, extra ...[2]string) [][2]string {
		return append([][2]string{{":method", "POST"}, {":path", "/inference.GRPCInferenceService/" + method},
			{"content-type", "application/grpc"}, {"te", "trailers"}}, extra...)
	}
	infer := frame(str(1, "digits"), str(2, "2"), str(6, strings.Repeat("z", 100)))
	tests := []struct {
		name         string
		headers      [][2]string
		body         []byte
		chunks       []int
		wantActions  []types.Action
		wantHeaders  map[string]string
		wantAbsent   []string
		wantReply    *reply
		wantCounters map[string]int64 // increments by this request
		wantClears   int
	}{
		{
			name:         "REST path",
			headers:      [][2]string{{":method", "POST"}, {":path", "/v2/models/iris/versions/1/infer?x=1"}, {"content-type", "application/json"}},
			wantActions:  []types.Action{types.ActionContinue},
			wantHeaders:  map[string]string{"x-model-id": "iris", "x-model-version": "1"},
			wantCounters: map[string]int64{"modelmesh.model_requests.iris": 1},
			wantClears:   1,
		},
		{
			name: "header precedence and spoofed internal headers",
			headers: [][2]string{{":path", "/v2/models/iris/infer"}, {"mm-model-id", "mm"}, {"mm-vmodel-id", "iris"},
				{"x-gateway-destination-endpoint", "10.1.2.3:8000"}, {"x-mesh-foo", "a"}, {"x-mesh-bar", "b"}},
			wantActions:  []types.Action{types.ActionContinue},
			wantHeaders:  map[string]string{"x-model-id": "iris", "mm-model-id": "mm"},
			wantAbsent:   []string{"x-gateway-destination-endpoint", "x-mesh-foo", "x-mesh-bar", "x-model-version"},
			wantCounters: map[string]int64{"modelmesh.model_requests.iris": 1},
			wantClears:   1,
		},
		{
			name:        "no model: only internal headers go",
			headers:     [][2]string{{":path", "/v2/health/ready"}, {"x-mesh-foo", "a"}},
			wantActions: []types.Action{types.ActionContinue},
			wantHeaders: map[string]string{":path": "/v2/health/ready"},
			wantAbsent:  []string{"x-mesh-foo", "x-model-id"},
			wantClears:  1,
		},
		{
			name:        "no model, nothing changed",
			headers:     [][2]string{{":path", "/v2"}},
			wantActions: []types.Action{types.ActionContinue},
			wantAbsent:  []string{"x-model-id"},
		},
		{
			name:         "invalid REST id",
			headers:      [][2]string{{":path", "/v2/models/bad..id/infer"}},
			wantActions:  []types.Action{types.ActionPause},
			wantReply:    &reply{400, [][2]string{{"content-type", "application/json"}}, `{"error":"model name from the KServe v2 path: invalid model id: \"bad..id\" contains \"..\""}`, -1},
			wantCounters: map[string]int64{statInvalid: 1},
		},
		{
			name:         "gRPC body in one chunk",
			headers:      grpc("ModelInfer"),
			body:         infer,
			chunks:       []int{len(infer)},
			wantActions:  []types.Action{types.ActionPause, types.ActionContinue},
			wantHeaders:  map[string]string{"x-model-id": "digits", "x-model-version": "2"},
			wantCounters: map[string]int64{"modelmesh.model_requests.digits": 1},
			wantClears:   1,
		},
		{
			name:         "gRPC body in two chunks",
			headers:      grpc("ModelInfer", [2]string{"x-mesh-foo", "x"}),
			body:         infer,
			chunks:       []int{9, len(infer)},
			wantActions:  []types.Action{types.ActionPause, types.ActionPause, types.ActionContinue},
			wantHeaders:  map[string]string{"x-model-id": "digits", "x-model-version": "2"},
			wantAbsent:   []string{"x-mesh-foo"},
			wantCounters: map[string]int64{"modelmesh.model_requests.digits": 1},
			wantClears:   1,
		},
		{
			name:         "third model overflows the bound",
			headers:      [][2]string{{"x-model-id", "wine"}},
			wantActions:  []types.Action{types.ActionContinue},
			wantHeaders:  map[string]string{"x-model-id": "wine"},
			wantCounters: map[string]int64{statOverflow: 1},
			// The client's own x-model-id, as the filter would set it: the route chosen on it
			// stands.
			wantClears: 0,
		},
		{
			name:         "invalid gRPC id",
			headers:      grpc("ModelReady"),
			body:         frame(str(1, "bad/id")),
			chunks:       []int{len(frame(str(1, "bad/id")))},
			wantActions:  []types.Action{types.ActionPause, types.ActionPause},
			wantReply:    &reply{400, nil, `model name from the gRPC request body: invalid model id: "bad/id": character '/' at offset 3 not allowed`, 3},
			wantCounters: map[string]int64{statInvalid: 1},
		},
		{
			name:        "gRPC ServerLive passes",
			headers:     grpc("ServerLive"),
			body:        frame(),
			chunks:      []int{5},
			wantActions: []types.Action{types.ActionContinue},
			wantAbsent:  []string{"x-model-id"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := map[string]int64{}
			for name := range v.host.metricIDs {
				before[name] = v.host.counter(name)
			}
			v.t = t
			actions := v.request(tt.headers, tt.body, tt.chunks)
			h := v.host
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
			if h.routeClears != tt.wantClears {
				t.Errorf("route cache cleared %d times, want %d", h.routeClears, tt.wantClears)
			}
			got := map[string]int64{}
			for name := range h.metricIDs {
				if d := h.counter(name) - before[name]; d != 0 {
					got[name] = d
				}
			}
			want := tt.wantCounters
			if want == nil {
				want = map[string]int64{}
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("counter increments (-want +got):\n%s", diff)
			}
		})
	}
}

// TestModuleMemoryUnderGC runs many requests with large headers, so that Go's collector
// runs while the host holds memory it asked the plugin for.
func TestModuleMemoryUnderGC(t *testing.T) {
	v, ok := startVM(t, "")
	if !ok {
		t.Fatal("configuration refused")
	}
	for i := range 300 {
		name := fmt.Sprintf("m%d", i%50)
		headers := [][2]string{{":path", "/v2/models/" + name + "/infer"}, {"cookie", strings.Repeat("c", 64<<10)}}
		v.request(headers, nil, nil)
		if got, _ := v.host.header("x-model-id"); got != name {
			t.Fatalf("request %d: x-model-id %q, want %q", i, got, name)
		}
	}
	if got := v.host.counter("modelmesh.model_requests.m7"); got != 6 {
		t.Errorf("m7 counted %d times, want 6", got)
	}
}

func TestModuleRejectsBadConfiguration(t *testing.T) {
	for _, config := range []string{`{"max_models": -1}`, `{"max_modles": 5}`, `[`} {
		v, ok := startVM(t, config)
		if ok {
			t.Errorf("configuration %s accepted", config)
		}
		if !slices.ContainsFunc(v.host.logs, func(l string) bool { return strings.Contains(l, "configuration rejected") }) {
			t.Errorf("configuration %s: no log line says why; logs %q", config, v.host.logs)
		}
	}
}

// TestModuleLogsDebugOnlyAtDebugLevel: a request's debug line is written when the host logs
// at debug level, and neither formatted nor sent when it logs at warn, as Envoy does by
// default.
func TestModuleLogsDebugOnlyAtDebugLevel(t *testing.T) {
	v, ok := startVM(t, "")
	if !ok {
		t.Fatal("configuration refused")
	}
	debugLines := func() int {
		n := 0
		for _, l := range v.host.logs {
			if strings.HasPrefix(l, "1 modelid: model iris") {
				n++
			}
		}
		return n
	}
	iris := [][2]string{{":path", "/v2/models/iris/infer"}}
	v.host.logLevel = 1 // debug
	v.request(iris, nil, nil)
	if debugLines() != 1 {
		t.Fatalf("at debug level: %d debug lines, want 1: %q", debugLines(), v.host.logs)
	}
	v.host.logLevel = 3 // warn
	v.request(iris, nil, nil)
	if debugLines() != 1 {
		t.Fatalf("at warn level a debug line was sent: %q", v.host.logs)
	}
}
