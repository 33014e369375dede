package proxywasm

import (
	"testing"

	"github.com/modelmesh/mesh/wasm/internal/proxywasm/types"
)

type recordingPlugin struct {
	types.DefaultPluginContext
	configured int
	streams    map[uint32]*recordingStream
	decline    bool
}

func (p *recordingPlugin) OnPluginStart(size int) types.OnPluginStartStatus {
	p.configured = size
	return size != 13 // an arbitrary size the test rejects
}

func (p *recordingPlugin) NewHttpContext(id uint32) types.HttpContext {
	if p.decline {
		return nil
	}
	s := &recordingStream{}
	p.streams[id] = s
	return s
}

type recordingStream struct {
	types.DefaultHttpContext
	calls []string
}

func (s *recordingStream) OnHttpRequestHeaders(int, bool) types.Action {
	s.calls = append(s.calls, "headers")
	return types.ActionPause
}

func (s *recordingStream) OnHttpRequestBody(int, bool) types.Action {
	s.calls = append(s.calls, "body")
	return types.ActionContinue
}

type recordingVM struct {
	types.DefaultVMContext
	plugin *recordingPlugin
}

func (v *recordingVM) NewPluginContext(uint32) types.PluginContext { return v.plugin }

func TestRegistryDispatch(t *testing.T) {
	t.Parallel()
	r := newRegistry()
	p := &recordingPlugin{streams: map[uint32]*recordingStream{}}
	r.vm = &recordingVM{plugin: p}
	r.contextCreate(1, 0)
	if !r.vmStart(0) || !r.configure(1, 7) || p.configured != 7 || r.configure(1, 13) {
		t.Fatal("VM start or configuration not dispatched")
	}
	r.contextCreate(2, 1)
	if got := r.requestHeaders(2, 3, false); got != types.ActionPause {
		t.Errorf("headers action %v", got)
	}
	if got := r.requestBody(2, 10, true); got != types.ActionContinue {
		t.Errorf("body action %v", got)
	}
	r.delete(2)
	if got := p.streams[2].calls; len(got) != 2 || got[1] != "body" {
		t.Errorf("calls %v", got)
	}
	if _, ok := r.streams[2]; ok {
		t.Error("stream not deleted")
	}
	p.decline = true
	r.contextCreate(3, 1)
	if got := r.requestHeaders(3, 1, true); got != types.ActionContinue {
		t.Errorf("declined stream action %v, want continue", got)
	}
}

func TestRegistryUnknownContextTraps(t *testing.T) {
	t.Parallel()
	r := newRegistry()
	for name, call := range map[string]func(){
		"stream":    func() { r.requestHeaders(9, 0, true) },
		"configure": func() { r.configure(9, 0) },
		"parent":    func() { r.contextCreate(10, 9) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: no panic for an unknown context", name)
				}
			}()
			call()
		}()
	}
}

func TestRegistryPinsAllocations(t *testing.T) {
	t.Parallel()
	r := newRegistry()
	r.enter()
	addr := r.allocate(4)
	copy(r.pinned[addr], "abcd")
	other := r.allocate(0)
	if len(r.pinned) != 2 || other == addr {
		t.Fatalf("pinned %d buffers", len(r.pinned))
	}
	b, err := r.take(addr, 3)
	if err != nil || string(b) != "abc" {
		t.Fatalf("take: %q, %v", b, err)
	}
	if _, err := r.take(addr, 3); err == nil {
		t.Error("took the same buffer twice")
	}
	if _, err := r.take(other, 2); err == nil {
		t.Error("took more than allocated")
	}
	if b, err := r.take(0, 0); b != nil || err != nil {
		t.Errorf("take(0, 0) = %v, %v", b, err)
	}
	// A nested callback does not release what the outer one may still need.
	r.allocate(8)
	r.enter()
	r.exit()
	if len(r.pinned) != 1 {
		t.Fatalf("nested exit released pinned memory: %d left", len(r.pinned))
	}
	r.exit()
	if len(r.pinned) != 0 {
		t.Fatalf("%d buffers still pinned after the outermost callback", len(r.pinned))
	}
}
