// Package onnx is the worker's embedded ONNX Runtime backend: models run in-process through
// the ONNX Runtime C API (github.com/yalue/onnxruntime_go, cgo) on the CPU.
package onnx

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sync"

	"github.com/prometheus/procfs"
	ort "github.com/yalue/onnxruntime_go"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/runtime-worker/agent"
	"github.com/modelmesh/mesh/runtime-worker/storage"
	"github.com/modelmesh/mesh/runtime-worker/tensor"
)

var _ agent.Backend = (*Backend)(nil)

// Config configures the runtime.
type Config struct {
	// Library is the path of libonnxruntime.so (C API version 24 or newer).
	Library string
	// IntraOpThreads per session; 1 suits many small models sharing few cores.
	IntraOpThreads int
}

// Backend runs ONNX models in-process. The ONNX Runtime environment is per process, so a
// process holds at most one Backend; Close releases it.
type Backend struct {
	cfg Config
	// create serialises session creation so that the resident-memory growth measured around
	// it belongs to that one model.
	create sync.Mutex

	mu       sync.RWMutex
	sessions map[placement.ModelVersion]*session
}

type session struct {
	s       *ort.DynamicAdvancedSession
	meta    tensor.Metadata
	outputs []string
}

// New initialises ONNX Runtime from cfg.Library.
func New(cfg Config) (*Backend, error) {
	if cfg.Library == "" {
		return nil, errors.New("onnx: path of libonnxruntime.so not set")
	}
	if _, err := os.Stat(cfg.Library); err != nil {
		return nil, fmt.Errorf("onnx: runtime library: %w", err)
	}
	if cfg.IntraOpThreads < 1 {
		cfg.IntraOpThreads = 1
	}
	ort.SetSharedLibraryPath(cfg.Library)
	if err := ort.InitializeEnvironment(ort.WithLogLevelError()); err != nil {
		return nil, fmt.Errorf("onnx: initialise runtime %s: %w", cfg.Library, err)
	}
	return &Backend{cfg: cfg, sessions: make(map[placement.ModelVersion]*session)}, nil
}

// Version is the ONNX Runtime library's version.
func (b *Backend) Version() string { return ort.GetVersion() }

// Runtime names the backend in the worker's records.
func (b *Backend) Runtime() string { return "onnxruntime" }

// Capabilities: ONNX models, any number of versions of one model side by side.
func (b *Backend) Capabilities() placement.Capabilities {
	return placement.Capabilities{Formats: []string{"onnx"}}
}

// Close releases every session and the runtime environment.
func (b *Backend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	for m, s := range b.sessions {
		s.s.Destroy()
		delete(b.sessions, m)
	}
	return ort.DestroyEnvironment()
}

// Load creates a session for the model file at f.Path on the CPU (f.GPU is ignored: this
// backend runs ONNX Runtime's CPU execution provider). The returned Memory is the growth of
// the process's resident memory while the session was created.
func (b *Backend) Load(ctx context.Context, m placement.ModelVersion, f agent.Files) (agent.Loaded, error) {
	if err := ctx.Err(); err != nil {
		return agent.Loaded{}, err
	}
	path := f.Path
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		path = filepath.Join(path, storage.ModelFile) // a directory holding the model
	}
	ins, outs, err := ort.GetInputOutputInfo(path)
	if err != nil {
		return agent.Loaded{}, fmt.Errorf("read model: %w", err)
	}
	meta := tensor.Metadata{Platform: "onnxruntime_onnx"}
	for _, in := range ins {
		spec, err := specOf(in)
		if err != nil {
			return agent.Loaded{}, fmt.Errorf("input %w", err)
		}
		meta.Inputs = append(meta.Inputs, spec)
	}
	for _, out := range outs {
		spec, err := specOf(out)
		if err != nil {
			return agent.Loaded{}, fmt.Errorf("output %w", err)
		}
		meta.Outputs = append(meta.Outputs, spec)
	}
	opts, err := ort.NewSessionOptions()
	if err != nil {
		return agent.Loaded{}, err
	}
	defer opts.Destroy()
	if err := opts.SetIntraOpNumThreads(b.cfg.IntraOpThreads); err != nil {
		return agent.Loaded{}, err
	}
	if err := opts.SetInterOpNumThreads(1); err != nil {
		return agent.Loaded{}, err
	}

	b.create.Lock()
	before := residentBytes()
	s, err := ort.NewDynamicAdvancedSession(path, names(meta.Inputs), names(meta.Outputs), opts)
	grown := residentBytes() - before
	b.create.Unlock()
	if err != nil {
		return agent.Loaded{}, fmt.Errorf("create session: %w", err)
	}
	b.mu.Lock()
	b.sessions[m] = &session{s: s, meta: meta, outputs: names(meta.Outputs)}
	b.mu.Unlock()
	return agent.Loaded{Metadata: meta, Memory: placement.HostMemory(max(grown, 0))}, nil
}

// Unload destroys the model's session.
func (b *Backend) Unload(_ context.Context, m placement.ModelVersion) error {
	b.mu.Lock()
	s := b.sessions[m]
	delete(b.sessions, m)
	b.mu.Unlock()
	if s == nil {
		return fmt.Errorf("unload %s: no session", m)
	}
	return s.s.Destroy()
}

// Infer runs the model. Inputs must already match the model's metadata (the agent checks).
func (b *Backend) Infer(ctx context.Context, m placement.ModelVersion, req *tensor.Request) (*tensor.Response, error) {
	b.mu.RLock()
	s := b.sessions[m]
	b.mu.RUnlock()
	if s == nil {
		return nil, fmt.Errorf("no session for %s", m)
	}
	inputs := make([]ort.Value, len(s.meta.Inputs))
	defer destroy(inputs)
	for i, spec := range s.meta.Inputs {
		for _, t := range req.Inputs {
			if t.Name == spec.Name {
				v, err := toValue(t)
				if err != nil {
					return nil, err
				}
				inputs[i] = v
			}
		}
	}
	outputs := make([]ort.Value, len(s.outputs))
	defer destroy(outputs)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := s.s.Run(inputs, outputs); err != nil {
		// Shapes and types were checked against the metadata, so what remains is mostly
		// data the model's operators reject (for example a wrong feature count).
		return nil, fmt.Errorf("%w: runtime: %v", tensor.ErrInvalid, err)
	}
	want := req.Outputs
	if len(want) == 0 {
		want = s.outputs
	}
	resp := &tensor.Response{}
	for _, name := range want {
		for i, o := range s.outputs {
			if o != name {
				continue
			}
			t, err := fromValue(name, outputs[i])
			if err != nil {
				return nil, err
			}
			resp.Outputs = append(resp.Outputs, t)
		}
	}
	return resp, nil
}

// destroy releases the values a run made. A failed Run may leave a typed nil (a nil
// *ort.Tensor in the interface) where it could not make an output: those are skipped.
func destroy(values []ort.Value) {
	for _, v := range values {
		if v != nil && !reflect.ValueOf(v).IsNil() {
			v.Destroy()
		}
	}
}

func toValue(t tensor.Tensor) (ort.Value, error) {
	shape := ort.NewShape(t.Shape...)
	switch d := t.Data.(type) {
	case []float32:
		return ort.NewTensor(shape, d)
	case []float64:
		return ort.NewTensor(shape, d)
	case []int32:
		return ort.NewTensor(shape, d)
	case []int64:
		return ort.NewTensor(shape, d)
	case []bool:
		return ort.NewTensor(shape, d)
	case [][]byte:
		st, err := ort.NewStringTensor(shape)
		if err != nil {
			return nil, err
		}
		s := make([]string, len(d))
		for i, b := range d {
			s[i] = string(b)
		}
		if err := st.SetContents(s); err != nil {
			st.Destroy()
			return nil, err
		}
		return st, nil
	}
	return nil, fmt.Errorf("%w: tensor %q: data of type %T", tensor.ErrInvalid, t.Name, t.Data)
}

func fromValue(name string, v ort.Value) (tensor.Tensor, error) {
	t := tensor.Tensor{Name: name, Shape: []int64(v.GetShape().Clone())}
	switch o := v.(type) {
	case *ort.Tensor[float32]:
		t.Datatype, t.Data = tensor.FP32, o.GetData()
	case *ort.Tensor[float64]:
		t.Datatype, t.Data = tensor.FP64, o.GetData()
	case *ort.Tensor[int32]:
		t.Datatype, t.Data = tensor.INT32, o.GetData()
	case *ort.Tensor[int64]:
		t.Datatype, t.Data = tensor.INT64, o.GetData()
	case *ort.Tensor[bool]:
		t.Datatype, t.Data = tensor.BOOL, o.GetData()
	case *ort.StringTensor:
		s, err := o.GetContents()
		if err != nil {
			return tensor.Tensor{}, err
		}
		b := make([][]byte, len(s))
		for i := range s {
			b[i] = []byte(s[i])
		}
		t.Datatype, t.Data = tensor.BYTES, b
	default:
		return tensor.Tensor{}, fmt.Errorf("output %q: ONNX value of type %T is not served", name, v)
	}
	return t, nil
}

// specOf maps an ONNX input or output to the protocol's datatypes; other ONNX types (maps,
// sequences, 8- and 16-bit integers) make the model unservable, with a reason.
func specOf(info ort.InputOutputInfo) (tensor.Spec, error) {
	if info.OrtValueType != ort.ONNXTypeTensor {
		hint := ""
		if info.OrtValueType == ort.ONNXTypeSequence {
			hint = " (scikit-learn classifiers: export with skl2onnx option zipmap=False)"
		}
		return tensor.Spec{}, fmt.Errorf("%q is an ONNX %s, only tensors are served%s", info.Name, info.OrtValueType, hint)
	}
	var dt tensor.Datatype
	switch info.DataType {
	case ort.TensorElementDataTypeFloat:
		dt = tensor.FP32
	case ort.TensorElementDataTypeDouble:
		dt = tensor.FP64
	case ort.TensorElementDataTypeInt32:
		dt = tensor.INT32
	case ort.TensorElementDataTypeInt64:
		dt = tensor.INT64
	case ort.TensorElementDataTypeBool:
		dt = tensor.BOOL
	case ort.TensorElementDataTypeString:
		dt = tensor.BYTES
	default:
		return tensor.Spec{}, fmt.Errorf("%q has element type %s, which is not served", info.Name, info.DataType)
	}
	if len(info.Dimensions) == 0 {
		// The Go binding of ONNX Runtime makes no tensor of rank 0: such a model would load
		// and then fail every request.
		return tensor.Spec{}, fmt.Errorf("%q is a scalar (rank 0), which this runtime cannot pass; export it with shape [1]", info.Name)
	}
	return tensor.Spec{Name: info.Name, Datatype: dt, Shape: []int64(info.Dimensions.Clone())}, nil
}

func names(specs []tensor.Spec) []string {
	out := make([]string, len(specs))
	for i, s := range specs {
		out[i] = s.Name
	}
	return out
}

// residentBytes is the process's resident set size (/proc/self/statm); 0 if unknown.
func residentBytes() int64 {
	p, err := procfs.Self()
	if err != nil {
		return 0
	}
	statm, err := p.Statm()
	if err != nil {
		return 0
	}
	return int64(statm.ResidentBytes())
}
