package extproc

import (
	"errors"
	"fmt"
)

// Kinds of failure. Every error the server answers with wraps one of them; the wire status
// for each kind is chosen once, in statusOf (response.go).
var (
	// ErrNoState: no residency snapshot has been read from Redis since the start.
	ErrNoState = errors.New("mesh state not read from redis yet")
	// ErrNoModel: a request that is not a server-level call names no model.
	ErrNoModel = errors.New("request names no model")
	// ErrNotRegistered: the model, or the requested version, is not in the registry.
	ErrNotRegistered = errors.New("model is not registered")
	// ErrNoWorker: no live worker can take the request (none at all, none with the model's
	// runtime, none large enough for the model).
	ErrNoWorker = errors.New("no worker can serve the request")
	// ErrLoadFailed: the worker's Load failed.
	ErrLoadFailed = errors.New("load failed")
	// ErrModelFiles: the worker could not fetch the model's files and no retry would help:
	// the store has no such object or bucket, refused the credentials or the TLS
	// handshake, or the files failed their checksum.
	ErrModelFiles = errors.New("model files cannot be fetched")
	// ErrDeadline: the model did not become ready within the load deadline.
	ErrDeadline = errors.New("model not ready before the deadline")
	// ErrQueueFull: too many requests already wait for the model version.
	ErrQueueFull = errors.New("too many requests waiting for the model")
	// ErrNoRoom is returned by a Loader when the worker cannot make room for the model
	// (the worker's RESOURCE_EXHAUSTED); the next candidate worker is then tried once.
	ErrNoRoom = errors.New("worker has no room for the model")
	// ErrWorkerGone is returned by a Loader when the worker's management port refuses
	// connections: the process is dead. The server ends its lease and tries the next
	// candidate.
	ErrWorkerGone = errors.New("worker unreachable")
)

// Error is a failure of one kind with the message the client sees.
type Error struct {
	Kind error
	Msg  string
}

func (e *Error) Error() string { return e.Msg }
func (e *Error) Unwrap() error { return e.Kind }

func errorf(kind error, format string, args ...any) error {
	return &Error{Kind: kind, Msg: fmt.Sprintf(format, args...)}
}
