package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/proto/inference"
	"github.com/modelmesh/mesh/runtime-worker/agent"
	"github.com/modelmesh/mesh/runtime-worker/tensor"
)

// After answering 413 net/http lingers 500 ms on the connection before closing it, by design.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("net/http.(*conn).closeWriteAndWait"))
}

// fakeModels serves one model, "double", whose output is its FP32 input doubled; a model
// named "busy" fails with ErrNoCapacity and "broken" with an internal error.
type fakeModels struct{}

var doubleMeta = tensor.Metadata{
	Platform: "fake",
	Inputs:   []tensor.Spec{{Name: "x", Datatype: tensor.FP32, Shape: []int64{-1}}},
	Outputs:  []tensor.Spec{{Name: "y", Datatype: tensor.FP32, Shape: []int64{-1}}},
}

func (fakeModels) Infer(_ context.Context, req *tensor.Request) (*tensor.Response, error) {
	switch req.Model.Name {
	case "busy":
		return nil, fmt.Errorf("load busy: %w", agent.ErrNoCapacity)
	case "broken":
		return nil, errors.New("segfault averted")
	case "double":
	default:
		return nil, fmt.Errorf("%s: %w", req.Model.Name, agent.ErrNotFound)
	}
	if err := doubleMeta.Check(req); err != nil {
		return nil, err
	}
	in := req.Inputs[0].Data.([]float32)
	out := make([]float32, len(in))
	for i, v := range in {
		out[i] = 2 * v
	}
	return &tensor.Response{Model: placement.ModelVersion{Name: "double", Version: "1"}, ID: req.ID,
		Outputs: []tensor.Tensor{{Name: "y", Datatype: tensor.FP32, Shape: req.Inputs[0].Shape, Data: out}}}, nil
}

func (fakeModels) Ready(m placement.ModelVersion) bool { return m.Name == "double" }

func (fakeModels) Metadata(m placement.ModelVersion) (placement.ModelVersion, tensor.Metadata, []string, error) {
	if m.Name != "double" {
		return m, tensor.Metadata{}, nil, agent.ErrNotFound
	}
	return placement.ModelVersion{Name: "double", Version: "1"}, doubleMeta, []string{"1"}, nil
}

// startServer serves the inference API on one loopback port, REST and gRPC together.
func startServer(t *testing.T, maxBody int64) string {
	t.Helper()
	api := NewInference(fakeModels{}, slog.New(slog.NewTextHandler(io.Discard, nil)), NewMetrics(nil, 10), "test", maxBody)
	gs := grpc.NewServer(grpc.MaxRecvMsgSize(int(maxBody)))
	inference.RegisterGRPCInferenceServiceServer(gs, api)
	srv := &http.Server{Handler: api.REST()}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	split := NewSplit(ln)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); split.Run(ctx) }()
	go func() { defer wg.Done(); gs.Serve(split.H2) }()
	go func() { defer wg.Done(); srv.Serve(split.HTTP1) }()
	t.Cleanup(func() {
		cancel()
		srv.Close()
		gs.Stop()
		wg.Wait()
	})
	return ln.Addr().String()
}

func inferenceClient(t *testing.T, addr string) inference.GRPCInferenceServiceClient {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return inference.NewGRPCInferenceServiceClient(cc)
}

func TestREST(t *testing.T) {
	t.Parallel()
	addr := startServer(t, 1024)
	big := `{"inputs":[{"name":"x","shape":[1000],"datatype":"FP32","data":[` + strings.Repeat("1,", 999) + `1]}]}`
	tests := []struct {
		name     string
		method   string
		path     string
		body     string
		wantCode int
		wantBody string // exact JSON, or for errors a fragment of the message
	}{
		{"infer", "POST", "/v2/models/double/infer", `{"id":"7","inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[1.5,-2]}]}`, 200,
			`{"model_name":"double","model_version":"1","id":"7","outputs":[{"name":"y","datatype":"FP32","shape":[2],"data":[3,-4]}]}`},
		{"infer with version", "POST", "/v2/models/double/versions/1/infer", `{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}]}`, 200,
			`{"model_name":"double","model_version":"1","outputs":[{"name":"y","datatype":"FP32","shape":[1],"data":[2]}]}`},
		{"metadata", "GET", "/v2/models/double", "", 200,
			`{"inputs":[{"datatype":"FP32","name":"x","shape":[-1]}],"name":"double","outputs":[{"datatype":"FP32","name":"y","shape":[-1]}],"platform":"fake","versions":["1"]}`},
		{"ready", "GET", "/v2/models/double/versions/1/ready", "", 200, `{"name":"double","ready":true}`},
		{"live", "GET", "/v2/health/live", "", 200, `{"live":true}`},
		{"server ready", "GET", "/v2/health/ready", "", 200, `{"ready":true}`},
		{"server metadata", "GET", "/v2", "", 200, `{"extensions":[],"name":"mesh-worker","version":"test"}`},
		{"malformed JSON", "POST", "/v2/models/double/infer", `{"inputs":[`, 400, "not a valid inference request"},
		{"wrong shape", "POST", "/v2/models/double/infer", `{"inputs":[{"name":"x","shape":[2,1],"datatype":"FP32","data":[1,2]}]}`, 400, "model expects [-1]"},
		{"wrong datatype", "POST", "/v2/models/double/infer", `{"inputs":[{"name":"x","shape":[1],"datatype":"INT64","data":[1]}]}`, 400, "model expects FP32"},
		{"bad model id", "POST", "/v2/models/bad..id/infer", `{}`, 400, "invalid model id"},
		{"unknown model", "POST", "/v2/models/nope/infer", `{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}]}`, 404, "not loaded"},
		{"unknown model metadata", "GET", "/v2/models/nope", "", 404, "not loaded"},
		{"model not ready", "GET", "/v2/models/nope/ready", "", 404, "not ready"},
		{"body over the limit", "POST", "/v2/models/double/infer", big, 413, "too large"},
		{"no room to load", "POST", "/v2/models/busy/infer", `{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}]}`, 507, "not enough memory"},
		{"internal error", "POST", "/v2/models/broken/infer", `{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}]}`, 500, "segfault averted"},
		{"GET on infer", "GET", "/v2/models/double/infer", "", 405, "not allowed"},
		{"POST on metadata", "POST", "/v2/models/double", "", 405, "not allowed"},
		{"unknown route", "GET", "/v1/models/double", "", 404, "no route"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			req, _ := http.NewRequest(tt.method, "http://"+addr+tt.path, strings.NewReader(tt.body))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.wantCode {
				t.Fatalf("status %d, want %d; body %s", resp.StatusCode, tt.wantCode, body)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Fatalf("content type %q", ct)
			}
			if tt.wantCode != 200 {
				var e struct{ Error string }
				if err := json.Unmarshal(body, &e); err != nil || !strings.Contains(e.Error, tt.wantBody) {
					t.Fatalf("body %s, want {\"error\": ...%s...}", body, tt.wantBody)
				}
				return
			}
			if diff := cmp.Diff(tt.wantBody, strings.TrimSpace(string(body))); diff != "" {
				t.Fatalf("body (-want +got):\n%s", diff)
			}
		})
	}
}

func TestGRPCOnTheSamePort(t *testing.T) {
	t.Parallel()
	c := inferenceClient(t, startServer(t, 1024))
	ctx := context.Background()

	raw, _ := tensor.EncodeRaw(tensor.Tensor{Datatype: tensor.FP32, Shape: []int64{2}, Data: []float32{1, 2.5}})
	got, err := c.ModelInfer(ctx, &inference.ModelInferRequest{ModelName: "double", Id: "r",
		Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: "x", Datatype: "FP32", Shape: []int64{2}}},
		RawInputContents: [][]byte{raw}})
	if err != nil {
		t.Fatal(err)
	}
	wantRaw, _ := tensor.EncodeRaw(tensor.Tensor{Datatype: tensor.FP32, Shape: []int64{2}, Data: []float32{2, 5}})
	want := &inference.ModelInferResponse{ModelName: "double", ModelVersion: "1", Id: "r",
		Outputs:           []*inference.ModelInferResponse_InferOutputTensor{{Name: "y", Datatype: "FP32", Shape: []int64{2}}},
		RawOutputContents: [][]byte{wantRaw}}
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Fatalf("raw infer (-want +got):\n%s", diff)
	}

	got, err = c.ModelInfer(ctx, &inference.ModelInferRequest{ModelName: "double",
		Inputs: []*inference.ModelInferRequest_InferInputTensor{{Name: "x", Datatype: "FP32", Shape: []int64{1},
			Contents: &inference.InferTensorContents{Fp32Contents: []float32{4}}}}})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]float32{8}, got.GetOutputs()[0].GetContents().GetFp32Contents()); diff != "" {
		t.Fatalf("typed contents answered with (-want +got):\n%s", diff)
	}

	ready, err := c.ModelReady(ctx, &inference.ModelReadyRequest{Name: "double"})
	if err != nil || !ready.GetReady() {
		t.Fatalf("ModelReady = %v, %v", ready, err)
	}
	meta, err := c.ModelMetadata(ctx, &inference.ModelMetadataRequest{Name: "double"})
	if err != nil || meta.GetInputs()[0].GetName() != "x" {
		t.Fatalf("ModelMetadata = %v, %v", meta, err)
	}
	live, err := c.ServerLive(ctx, &inference.ServerLiveRequest{})
	if err != nil || !live.GetLive() {
		t.Fatalf("ServerLive = %v, %v", live, err)
	}
}

func TestGRPCErrors(t *testing.T) {
	t.Parallel()
	c := inferenceClient(t, startServer(t, 1024))
	input := func(dt string, shape ...int64) []*inference.ModelInferRequest_InferInputTensor {
		return []*inference.ModelInferRequest_InferInputTensor{{Name: "x", Datatype: dt, Shape: shape}}
	}
	tests := []struct {
		name string
		give *inference.ModelInferRequest
		want codes.Code
	}{
		{"no inputs", &inference.ModelInferRequest{ModelName: "double"}, codes.InvalidArgument},
		{"bad id", &inference.ModelInferRequest{ModelName: "../etc", Inputs: input("FP32", 1)}, codes.InvalidArgument},
		{"raw count mismatch", &inference.ModelInferRequest{ModelName: "double", Inputs: input("FP32", 1), RawInputContents: [][]byte{{0, 0, 0, 0}, {}}}, codes.InvalidArgument},
		{"raw size mismatch", &inference.ModelInferRequest{ModelName: "double", Inputs: input("FP32", 2), RawInputContents: [][]byte{{0, 0, 0, 0}}}, codes.InvalidArgument},
		{"wrong datatype", &inference.ModelInferRequest{ModelName: "double", Inputs: input("INT64", 1), RawInputContents: [][]byte{make([]byte, 8)}}, codes.InvalidArgument},
		{"contents missing", &inference.ModelInferRequest{ModelName: "double", Inputs: input("FP32", 3)}, codes.InvalidArgument},
		{"unknown model", &inference.ModelInferRequest{ModelName: "nope", Inputs: input("FP32", 1), RawInputContents: [][]byte{make([]byte, 4)}}, codes.NotFound},
		{"message over the limit", &inference.ModelInferRequest{ModelName: "double", Inputs: input("FP32", 512), RawInputContents: [][]byte{make([]byte, 2048)}}, codes.ResourceExhausted},
		{"no room", &inference.ModelInferRequest{ModelName: "busy", Inputs: input("FP32", 1), RawInputContents: [][]byte{make([]byte, 4)}}, codes.ResourceExhausted},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := c.ModelInfer(context.Background(), tt.give)
			if got := status.Code(err); got != tt.want {
				t.Fatalf("code %v (%v), want %v", got, err, tt.want)
			}
		})
	}
	// The server still answers after every bad request.
	if _, err := c.ServerReady(context.Background(), &inference.ServerReadyRequest{}); err != nil {
		t.Fatal(err)
	}
}
