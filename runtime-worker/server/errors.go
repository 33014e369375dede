package server

import (
	"context"
	"errors"
	"net/http"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/proto/meshv1"
	"github.com/modelmesh/mesh/runtime-worker/agent"
	"github.com/modelmesh/mesh/runtime-worker/storage"
	"github.com/modelmesh/mesh/runtime-worker/tensor"
)

// errTooLarge reports a request body over the configured limit.
var errTooLarge = errors.New("request body too large")

// statusOf is the one place where worker errors become wire statuses, for REST and gRPC.
func statusOf(err error) (int, codes.Code) {
	switch {
	case errors.Is(err, tensor.ErrInvalid), errors.Is(err, placement.ErrInvalidID), errors.Is(err, storage.ErrBadURI),
		errors.Is(err, storage.ErrArchive):
		return http.StatusBadRequest, codes.InvalidArgument
	case errors.Is(err, agent.ErrNotFound), errors.Is(err, storage.ErrNotFound):
		return http.StatusNotFound, codes.NotFound
	case errors.Is(err, storage.ErrDenied):
		return http.StatusForbidden, codes.PermissionDenied
	case errors.Is(err, storage.ErrChecksum):
		return http.StatusBadGateway, codes.DataLoss
	case errors.Is(err, storage.ErrTLS):
		return http.StatusBadGateway, codes.FailedPrecondition
	case errors.Is(err, storage.ErrUnavailable):
		return http.StatusBadGateway, codes.Unavailable
	case errors.Is(err, storage.ErrDiskFull):
		return http.StatusInsufficientStorage, codes.ResourceExhausted
	case errors.Is(err, errTooLarge):
		return http.StatusRequestEntityTooLarge, codes.ResourceExhausted
	case errors.Is(err, agent.ErrNoCapacity):
		return http.StatusInsufficientStorage, codes.ResourceExhausted
	case errors.Is(err, agent.ErrLoadFailed), errors.Is(err, agent.ErrFormat):
		return http.StatusUnprocessableEntity, codes.FailedPrecondition
	case errors.Is(err, agent.ErrDraining), errors.Is(err, agent.ErrClosed), errors.Is(err, agent.ErrRuntimeDown):
		return http.StatusServiceUnavailable, codes.Unavailable
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout, codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		return 499, codes.Canceled
	}
	return http.StatusInternalServerError, codes.Internal
}

// grpcError is err as a gRPC status; a failed fetch of model files also carries its reason
// as an ErrorInfo of meshv1.ErrorDomainStorage, so ext_proc can tell a store that refused
// for good from one that may answer next time.
func grpcError(err error) error {
	_, code := statusOf(err)
	st := status.New(code, err.Error())
	if reason := storage.Reason(err); isStorage(err) {
		if withInfo, derr := st.WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: meshv1.ErrorDomainStorage}); derr == nil {
			st = withInfo
		}
	}
	return st.Err()
}

func isStorage(err error) bool {
	for _, kind := range []error{storage.ErrBadURI, storage.ErrArchive, storage.ErrNotFound, storage.ErrDenied,
		storage.ErrTLS, storage.ErrChecksum, storage.ErrDiskFull, storage.ErrUnavailable} {
		if errors.Is(err, kind) {
			return true
		}
	}
	return false
}
