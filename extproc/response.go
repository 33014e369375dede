package extproc

import (
	"encoding/json"
	"errors"
	"math"
	"strconv"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/modelmesh/mesh/internal/wire"
)

// wireStatus is how one kind of failure is answered.
type wireStatus struct {
	http       typev3.StatusCode
	grpc       codes.Code
	outcome    string
	retryAfter bool
}

// statusOf is the one place domain errors become wire statuses and outcome labels.
func statusOf(err error) wireStatus {
	switch {
	case errors.Is(err, ErrNoModel), errors.Is(err, ErrNotRegistered):
		return wireStatus{typev3.StatusCode_NotFound, codes.NotFound, "not_found", false}
	case errors.Is(err, ErrQueueFull):
		return wireStatus{typev3.StatusCode_TooManyRequests, codes.ResourceExhausted, "queue_full", true}
	case errors.Is(err, ErrNoWorker), errors.Is(err, ErrNoState):
		return wireStatus{typev3.StatusCode_ServiceUnavailable, codes.Unavailable, "no_worker", true}
	case errors.Is(err, ErrModelFiles):
		// The store or the files are wrong until someone fixes them: a gateway error that
		// asks for no retry, FAILED_PRECONDITION to gRPC clients.
		return wireStatus{typev3.StatusCode_BadGateway, codes.FailedPrecondition, "model_files", false}
	case errors.Is(err, ErrDeadline):
		return wireStatus{typev3.StatusCode_ServiceUnavailable, codes.Unavailable, "deadline", true}
	default: // ErrLoadFailed and anything unforeseen
		return wireStatus{typev3.StatusCode_ServiceUnavailable, codes.Unavailable, "load_failed", true}
	}
}

// errorResponse renders err as an ImmediateResponse: KServe v2 JSON {"error": ...} for
// REST, grpc_status with the message (Envoy sends the body as grpc-message) for gRPC.
func errorResponse(err error, grpc bool, retryAfter time.Duration) (*extprocv3.ProcessingResponse, string) {
	st := statusOf(err)
	msg := err.Error()
	var headers []*corev3.HeaderValueOption
	imm := &extprocv3.ImmediateResponse{
		Status:  &typev3.HttpStatus{Code: st.http},
		Details: "mesh_extproc_" + st.outcome,
	}
	if grpc {
		imm.GrpcStatus = &extprocv3.GrpcStatus{Status: uint32(st.grpc)}
		imm.Body = []byte(msg)
	} else {
		body, _ := json.Marshal(map[string]string{"error": msg}) // a string map always marshals
		imm.Body = body
		headers = append(headers, setHeader("content-type", "application/json"))
	}
	if st.retryAfter {
		secs := int64(math.Ceil(retryAfter.Seconds()))
		headers = append(headers, setHeader("retry-after", strconv.FormatInt(max(secs, 1), 10)))
	}
	if len(headers) > 0 {
		imm.Headers = &extprocv3.HeaderMutation{SetHeaders: headers}
	}
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ImmediateResponse{ImmediateResponse: imm}}, st.outcome
}

// routeResponse continues the request to a.Endpoint through the "workers" cluster's
// override_host policy: the destination header and the same key in envoy.lb metadata,
// plus the chosen version. The route cache is left alone: the catch-all route stays.
func routeResponse(a Answer) *extprocv3.ProcessingResponse {
	set := []*corev3.HeaderValueOption{setHeader(wire.HeaderDestination, a.Endpoint)}
	if a.Model.Version != "" {
		set = append(set, setHeader(wire.HeaderVersion, a.Model.Version))
	}
	return &extprocv3.ProcessingResponse{
		Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{
			Response: &extprocv3.CommonResponse{HeaderMutation: &extprocv3.HeaderMutation{SetHeaders: set}},
		}},
		DynamicMetadata: &structpb.Struct{Fields: map[string]*structpb.Value{
			wire.MetadataNamespace: structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{
				wire.HeaderDestination: structpb.NewStringValue(a.Endpoint),
			}}),
		}},
	}
}

// extendResponse asks Envoy to wait up to d for the real answer to the current message.
func extendResponse(d time.Duration) *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{OverrideMessageTimeout: durationpb.New(d)}
}

func setHeader(k, v string) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{
		Header:       &corev3.HeaderValue{Key: k, RawValue: []byte(v)},
		AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
	}
}
