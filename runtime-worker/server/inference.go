// Package server is the worker's protocol edge: the KServe v2 REST and gRPC inference API on
// the data port, and the management API (meshv1) and metrics on the management port.
package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/metadata"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/internal/wire"
	"github.com/modelmesh/mesh/proto/inference"
	"github.com/modelmesh/mesh/runtime-worker/tensor"
)

// Models is what the inference API needs from the worker's agent.
type Models interface {
	Infer(ctx context.Context, req *tensor.Request) (*tensor.Response, error)
	Ready(m placement.ModelVersion) bool
	Metadata(m placement.ModelVersion) (placement.ModelVersion, tensor.Metadata, []string, error)
}

// Inference serves the KServe v2 protocol over REST and gRPC. Safe for concurrent use.
type Inference struct {
	inference.UnimplementedGRPCInferenceServiceServer

	models       Models
	log          *slog.Logger
	metrics      *Metrics
	version      string
	maxBodyBytes int64
}

var _ inference.GRPCInferenceServiceServer = (*Inference)(nil)

// NewInference returns the inference API over models; version is reported by /v2.
func NewInference(models Models, log *slog.Logger, metrics *Metrics, version string, maxBodyBytes int64) *Inference {
	return &Inference{models: models, log: log, metrics: metrics, version: version, maxBodyBytes: maxBodyBytes}
}

// REST returns the KServe v2 REST routes.
func (s *Inference) REST() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/v2", s.get(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"name": "mesh-worker", "version": s.version, "extensions": []string{}})
	}))
	mux.HandleFunc("/v2/health/live", s.get(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]bool{"live": true})
	}))
	mux.HandleFunc("/v2/health/ready", s.get(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]bool{"ready": true})
	}))
	for _, prefix := range []string{"/v2/models/{name}", "/v2/models/{name}/versions/{version}"} {
		mux.HandleFunc(prefix, s.get(s.restMetadata))
		mux.HandleFunc(prefix+"/ready", s.get(s.restReady))
		mux.HandleFunc(prefix+"/infer", s.restInfer)
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no route for %s %s", r.Method, r.URL.Path))
	})
	return mux
}

func (s *Inference) get(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			writeError(w, http.StatusMethodNotAllowed, r.Method+" not allowed on "+r.URL.Path)
			return
		}
		h(w, r)
	}
}

// modelFromPath is the model version the request names: its path's, else wire.HeaderVersion,
// which the gateway sets on routes that chose a version by weight, since a worker may hold
// several versions of a model.
func modelFromPath(r *http.Request) (placement.ModelVersion, error) {
	m := placement.ModelVersion{Name: r.PathValue("name"), Version: r.PathValue("version")}
	if m.Version == "" {
		m.Version = r.Header.Get(wire.HeaderVersion)
	}
	if err := m.Validate(); err != nil {
		return m, err
	}
	return m, nil
}

func (s *Inference) restMetadata(w http.ResponseWriter, r *http.Request) {
	m, err := modelFromPath(r)
	if err != nil {
		s.restError(w, r, err)
		return
	}
	resolved, meta, versions, err := s.models.Metadata(m)
	if err != nil {
		s.restError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"name": resolved.Name, "versions": versions, "platform": meta.Platform,
		"inputs": specsJSON(meta.Inputs), "outputs": specsJSON(meta.Outputs),
	})
}

func specsJSON(specs []tensor.Spec) []map[string]any {
	out := make([]map[string]any, len(specs))
	for i, sp := range specs {
		out[i] = map[string]any{"name": sp.Name, "datatype": string(sp.Datatype), "shape": sp.Shape}
	}
	return out
}

func (s *Inference) restReady(w http.ResponseWriter, r *http.Request) {
	m, err := modelFromPath(r)
	if err != nil {
		s.restError(w, r, err)
		return
	}
	if !s.models.Ready(m) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("model %s is not ready on this worker", m.Name))
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"name": m.Name, "ready": true})
}

func (s *Inference) restInfer(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	m, err := modelFromPath(r)
	code := http.StatusOK
	defer func() { s.metrics.observe(m, "rest", strconv.Itoa(code), time.Since(start).Seconds()) }()
	if err != nil {
		code = s.restError(w, r, err)
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		code = http.StatusMethodNotAllowed
		writeError(w, code, r.Method+" not allowed on "+r.URL.Path)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.maxBodyBytes))
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		code = s.restError(w, r, fmt.Errorf("%w: over %d bytes", errTooLarge, s.maxBodyBytes))
		return
	}
	if err != nil {
		code = s.restError(w, r, fmt.Errorf("%w: reading body: %v", tensor.ErrInvalid, err))
		return
	}
	jsonLen := -1
	if h := r.Header.Get("Inference-Header-Content-Length"); h != "" {
		if jsonLen, err = strconv.Atoi(h); err != nil || jsonLen < 0 {
			code = s.restError(w, r, fmt.Errorf("%w: Inference-Header-Content-Length %q is not a length", tensor.ErrInvalid, h))
			return
		}
	}
	modelAttributes(r.Context(), m)
	req, err := DecodeRESTRequest(m, body, jsonLen)
	if err != nil {
		code = s.restError(w, r, err)
		return
	}
	resp, err := s.models.Infer(r.Context(), req)
	if err != nil {
		code = s.restError(w, r, err)
		return
	}
	out, err := EncodeRESTResponse(resp)
	if err != nil {
		code = s.restError(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(out)
}

// modelAttributes names the model version asked for on the request's span, if it records.
func modelAttributes(ctx context.Context, m placement.ModelVersion) {
	if span := trace.SpanFromContext(ctx); span.IsRecording() {
		span.SetAttributes(attribute.String("mesh.model", m.Name), attribute.String("mesh.version", m.Version))
	}
}

// restError answers with {"error": ...} and the status of err, and returns that status.
func (s *Inference) restError(w http.ResponseWriter, r *http.Request, err error) int {
	code, _ := statusOf(err)
	if code >= 500 {
		s.log.ErrorContext(r.Context(), "inference request failed", "path", r.URL.Path, "error", err)
	}
	writeError(w, code, err.Error())
	return code
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// ServerLive implements the gRPC API.
func (s *Inference) ServerLive(context.Context, *inference.ServerLiveRequest) (*inference.ServerLiveResponse, error) {
	return &inference.ServerLiveResponse{Live: true}, nil
}

// ServerReady implements the gRPC API.
func (s *Inference) ServerReady(context.Context, *inference.ServerReadyRequest) (*inference.ServerReadyResponse, error) {
	return &inference.ServerReadyResponse{Ready: true}, nil
}

// ServerMetadata implements the gRPC API.
func (s *Inference) ServerMetadata(context.Context, *inference.ServerMetadataRequest) (*inference.ServerMetadataResponse, error) {
	return &inference.ServerMetadataResponse{Name: "mesh-worker", Version: s.version}, nil
}

// ModelReady implements the gRPC API; an unknown model is simply not ready.
func (s *Inference) ModelReady(ctx context.Context, r *inference.ModelReadyRequest) (*inference.ModelReadyResponse, error) {
	m := placement.ModelVersion{Name: r.GetName(), Version: r.GetVersion()}
	if m.Version == "" {
		m.Version = versionFromMetadata(ctx)
	}
	if err := m.Validate(); err != nil {
		return nil, grpcError(err)
	}
	return &inference.ModelReadyResponse{Ready: s.models.Ready(m)}, nil
}

// versionFromMetadata is the gRPC form of wire.HeaderVersion.
func versionFromMetadata(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(wire.HeaderVersion); len(v) > 0 {
		return v[0]
	}
	return ""
}

// ModelMetadata implements the gRPC API.
func (s *Inference) ModelMetadata(ctx context.Context, r *inference.ModelMetadataRequest) (*inference.ModelMetadataResponse, error) {
	m := placement.ModelVersion{Name: r.GetName(), Version: r.GetVersion()}
	if m.Version == "" {
		m.Version = versionFromMetadata(ctx)
	}
	if err := m.Validate(); err != nil {
		return nil, grpcError(err)
	}
	resolved, meta, versions, err := s.models.Metadata(m)
	if err != nil {
		return nil, grpcError(err)
	}
	out := &inference.ModelMetadataResponse{Name: resolved.Name, Versions: versions, Platform: meta.Platform}
	for _, sp := range meta.Inputs {
		out.Inputs = append(out.Inputs, &inference.ModelMetadataResponse_TensorMetadata{Name: sp.Name, Datatype: string(sp.Datatype), Shape: sp.Shape})
	}
	for _, sp := range meta.Outputs {
		out.Outputs = append(out.Outputs, &inference.ModelMetadataResponse_TensorMetadata{Name: sp.Name, Datatype: string(sp.Datatype), Shape: sp.Shape})
	}
	return out, nil
}

// ModelInfer implements the gRPC API.
func (s *Inference) ModelInfer(ctx context.Context, r *inference.ModelInferRequest) (_ *inference.ModelInferResponse, err error) {
	start := time.Now()
	m := placement.ModelVersion{Name: r.GetModelName(), Version: r.GetModelVersion()}
	defer func() {
		_, code := statusOf(err)
		if err == nil {
			code = 0
		}
		s.metrics.observe(m, "grpc", code.String(), time.Since(start).Seconds())
	}()
	if r.GetModelVersion() == "" {
		r.ModelVersion = versionFromMetadata(ctx)
		m.Version = r.ModelVersion
	}
	modelAttributes(ctx, m)
	req, raw, err := decodeGRPCRequest(r)
	if err != nil {
		return nil, grpcError(err)
	}
	resp, err := s.models.Infer(ctx, req)
	if err != nil {
		return nil, grpcError(err)
	}
	out, err := encodeGRPCResponse(resp, raw)
	if err != nil {
		return nil, grpcError(err)
	}
	return out, nil
}
