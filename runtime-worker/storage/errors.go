package storage

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"syscall"
)

// Errors a fetch ends with. Each names what the user can fix; the worker's edge maps them to
// gRPC codes once (runtime-worker/server/errors.go), and Reason names them in metrics.
var (
	// ErrBadURI reports a storage location the worker cannot use: wrong scheme, relative
	// path, traversal, a path outside every root, an unknown storage key.
	ErrBadURI = errors.New("invalid storage uri")
	// ErrNotFound reports a location with no model behind it: no such object, prefix or
	// bucket.
	ErrNotFound = errors.New("model files not found")
	// ErrDenied reports credentials the store refused (403, unknown access key, bad
	// signature).
	ErrDenied = errors.New("storage access denied")
	// ErrTLS reports a TLS handshake that failed: an unknown authority (give the store's CA
	// in the storage-config entry's certificate), a name mismatch, an expired certificate.
	ErrTLS = errors.New("storage TLS failure")
	// ErrUnavailable reports a store that did not answer in time, refused the connection,
	// or failed with a server error, after the retries.
	ErrUnavailable = errors.New("storage unavailable")
	// ErrChecksum reports files whose size or digest differs from what the store or the
	// registry declared. Nothing of them is kept.
	ErrChecksum = errors.New("model files failed their checksum")
	// ErrDiskFull reports a model that does not fit in the disk tier even after evicting
	// every model not in use, or a disk that ran out of space.
	ErrDiskFull = errors.New("disk tier full")
)

// Reason names err's kind for metrics and logs: a small fixed set.
func Reason(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, ErrBadURI), errors.Is(err, ErrArchive):
		return "bad_uri"
	case errors.Is(err, ErrNotFound):
		return "not_found"
	case errors.Is(err, ErrDenied):
		return "denied"
	case errors.Is(err, ErrTLS):
		return "tls"
	case errors.Is(err, ErrChecksum):
		return "checksum"
	case errors.Is(err, ErrDiskFull):
		return "disk_full"
	case errors.Is(err, ErrUnavailable):
		return "unavailable"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	}
	return "error"
}

// Failed reports whether err is one of the fetch failures above, as opposed to a runtime's
// or the caller's error around it.
func Failed(err error) bool {
	for _, kind := range []error{ErrBadURI, ErrArchive, ErrNotFound, ErrDenied, ErrTLS, ErrUnavailable, ErrChecksum, ErrDiskFull} {
		if errors.Is(err, kind) {
			return true
		}
	}
	return false
}

// permanent reports errors that the same request would meet again: they are not retried.
func permanent(err error) bool {
	return errors.Is(err, ErrBadURI) || errors.Is(err, ErrArchive) || errors.Is(err, ErrNotFound) ||
		errors.Is(err, ErrDenied) || errors.Is(err, ErrTLS) || errors.Is(err, ErrChecksum) ||
		errors.Is(err, ErrDiskFull) || errors.Is(err, context.Canceled)
}

// transport classifies an error from a store's client that carries no store answer: TLS
// failures, timeouts, refused connections, a full disk while writing.
func transport(err error) error {
	var unknown x509.UnknownAuthorityError
	var hostname x509.HostnameError
	var invalid x509.CertificateInvalidError
	var verify *tls.CertificateVerificationError
	var record tls.RecordHeaderError
	switch {
	case errors.As(err, &unknown), errors.As(err, &hostname), errors.As(err, &invalid),
		errors.As(err, &verify), errors.As(err, &record):
		return wrap(ErrTLS, err)
	case errors.Is(err, syscall.ENOSPC):
		return wrap(ErrDiskFull, err)
	case errors.Is(err, context.Canceled):
		return err
	}
	var netErr net.Error
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ECONNRESET) || (errors.As(err, &netErr) && netErr.Timeout()) {
		return wrap(ErrUnavailable, err)
	}
	return err
}

// wrap makes err match kind as well as its own chain.
func wrap(kind, err error) error {
	if errors.Is(err, kind) {
		return err
	}
	return &kindError{kind: kind, err: err}
}

type kindError struct{ kind, err error }

func (e *kindError) Error() string   { return e.kind.Error() + ": " + e.err.Error() }
func (e *kindError) Unwrap() []error { return []error{e.kind, e.err} }
