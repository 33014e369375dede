package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/internal/wire"
)

// Sources of a model id, named in error messages and logs.
const (
	sourcePath = "the KServe v2 path"
	sourceBody = "the gRPC request body"
)

// idHeaders are the headers that name a model, in order of precedence.
var idHeaders = []string{wire.HeaderModel, wire.HeaderVModelID, wire.HeaderMMModelID}

// grpcService is the path prefix of the KServe v2 gRPC service; grpcBodyMethods are its
// methods whose request message names the model in fields 1 (name) and 2 (version).
const grpcService = "/inference.GRPCInferenceService/"

var grpcBodyMethods = map[string]bool{"ModelInfer": true, "ModelMetadata": true, "ModelReady": true}

// errInvalid marks a request the filter answers with 400 (gRPC INVALID_ARGUMENT).
var errInvalid = errors.New("invalid request")

// errTooLarge marks a gRPC request whose first message is too large to buffer for the model
// name; answered with 413 (gRPC RESOURCE_EXHAUSTED).
var errTooLarge = errors.New("request too large")

// request is what the filter reads from the request headers.
type request struct {
	path        string
	contentType string
	// values holds every value of the id and version headers (valueHeaders), in arrival
	// order: no map per request.
	values [len(valueHeaders)][]string
}

// valueHeaders are the headers whose values the filter keeps: the id headers and the
// version.
var valueHeaders = [...]string{wire.HeaderModel, wire.HeaderVModelID, wire.HeaderMMModelID, wire.HeaderVersion}

// valueIndex is name's place in valueHeaders, -1 if it is none of them.
func valueIndex(name string) int {
	for i, h := range valueHeaders {
		if h == name {
			return i
		}
	}
	return -1
}

func newRequest(headers [][2]string) request {
	var r request
	for _, h := range headers {
		// Envoy passes names in lower case; a name with an upper-case letter (a test's host)
		// is lowered, the rest are not copied.
		name := h[0]
		if strings.ToLower(name) != name {
			name = strings.ToLower(name)
		}
		switch name {
		case ":path":
			r.path = h[1]
		case "content-type":
			r.contentType = h[1]
		default:
			if i := valueIndex(name); i >= 0 {
				r.values[i] = append(r.values[i], h[1])
			}
		}
	}
	return r
}

// header returns the header's value and whether it is present. Several different values
// are refused: the filter and the upstream might each pick a different one.
func (r request) header(name string) (string, bool, error) {
	var vs []string
	if i := valueIndex(name); i >= 0 {
		vs = r.values[i]
	}
	if len(vs) == 0 {
		return "", false, nil
	}
	for _, v := range vs[1:] {
		if v != vs[0] {
			return "", false, fmt.Errorf("%w: header %s has %d different values", errInvalid, name, len(vs))
		}
	}
	return vs[0], true, nil
}

// sent reports whether the client sent header name exactly once, with value.
func (r request) sent(name, value string) bool {
	i := valueIndex(name)
	return i >= 0 && len(r.values[i]) == 1 && r.values[i][0] == value
}

// isGRPC reports whether a reply to the request must be a gRPC status: Envoy itself takes
// any content type starting with application/grpc for gRPC.
func (r request) isGRPC() bool { return strings.HasPrefix(r.contentType, "application/grpc") }

// grpcBodyMethod returns the method name when the model name must be read from the body of
// a KServe v2 gRPC call: a method whose request names the model, in a body framed as plain
// gRPC (application/grpc or application/grpc+proto; grpc-web's text form is base64).
func (r request) grpcBodyMethod() (string, bool) {
	ct, _, _ := strings.Cut(r.contentType, ";")
	ct = strings.TrimSpace(ct)
	if ct != "application/grpc" && ct != "application/grpc+proto" {
		return "", false
	}
	method, ok := strings.CutPrefix(r.path, grpcService)
	if !ok || !grpcBodyMethods[method] {
		return "", false
	}
	return method, true
}

// resolution is what the headers say about the model.
type resolution struct {
	// model is the validated model, empty Name when none was found.
	model placement.ModelVersion
	// source names where the name came from.
	source string
	// bodyMethod is set when the name must come from the gRPC body of this method.
	bodyMethod string
	// version is the version from the headers or path, to pair with a name from the body.
	version, versionSource string
}

// resolve finds the model in the headers, then the path, in the contract's order, and
// validates what it found. An error wraps errInvalid.
func resolve(r request) (resolution, error) {
	var res resolution
	version, hasVersion, err := r.header(wire.HeaderVersion)
	if err != nil {
		return res, err
	}
	if hasVersion && version != "" {
		res.version, res.versionSource = version, "header "+wire.HeaderVersion
	}
	for _, h := range idHeaders {
		name, ok, err := r.header(h)
		if err != nil {
			return res, err
		}
		if ok {
			res.model.Name, res.source = name, "header "+h
			break
		}
	}
	if res.source != "" {
		// A header and the path that name different models (or versions) would route by one
		// and be served as the other: refuse the contradiction.
		if name, pathVersion, ok, err := parsePath(r.path); err == nil && ok {
			if name != res.model.Name {
				return res, fmt.Errorf("%w: %s names model %q but the path names %q", errInvalid, res.source, res.model.Name, name)
			}
			if pathVersion != "" && res.version != "" && pathVersion != res.version {
				return res, fmt.Errorf("%w: %s names version %q but the path names %q", errInvalid, res.versionSource, res.version, pathVersion)
			}
			if res.version == "" && pathVersion != "" {
				res.version, res.versionSource = pathVersion, sourcePath
			}
		}
	}
	if res.source == "" {
		name, pathVersion, ok, err := parsePath(r.path)
		if err != nil {
			return res, err
		}
		if ok {
			res.model.Name, res.source = name, sourcePath
			if pathVersion != "" && res.version != "" && pathVersion != res.version {
				return res, fmt.Errorf("%w: %s names version %q but the path names %q", errInvalid, res.versionSource, res.version, pathVersion)
			}
			if res.version == "" && pathVersion != "" {
				res.version, res.versionSource = pathVersion, sourcePath
			}
		}
	}
	if res.source == "" {
		if m, ok := r.grpcBodyMethod(); ok {
			res.bodyMethod = m
		}
		return res, nil
	}
	res.model.Version = res.version
	return res, validate(res.model, res.source, res.versionSource)
}

// validate checks a model against the id grammar, naming the sources in the error.
func validate(m placement.ModelVersion, source, versionSource string) error {
	if err := placement.ValidateID(m.Name); err != nil {
		return fmt.Errorf("%w: model name from %s: %w", errInvalid, source, err)
	}
	if m.Version == "" {
		return nil
	}
	if err := placement.ValidateID(m.Version); err != nil {
		return fmt.Errorf("%w: model version from %s: %w", errInvalid, versionSource, err)
	}
	return nil
}

// parsePath reads the model name and version from a KServe v2 path,
// /v2/models/{name}[/versions/{version}][/...], ignoring any query string. ok is false
// for paths that name no model (/v2/health/ready, /v2, /v2/models).
//
// Segments are taken as they are, never percent-decoded: an escaped character (%2F, %2E)
// stays in the segment and fails the id grammar, so an id can neither hide a separator
// nor differ between this filter and a server that decodes. Empty segments ("//") and
// dot segments ("..") fail the grammar the same way. An error wraps errInvalid.
func parsePath(path string) (name, version string, ok bool, err error) {
	path, _, _ = strings.Cut(path, "?")
	rest, found := strings.CutPrefix(path, "/v2/models/")
	if !found {
		return "", "", false, nil
	}
	name, rest, _ = strings.Cut(rest, "/")
	if err := placement.ValidateID(name); err != nil {
		return "", "", false, fmt.Errorf("%w: model name from %s: %w", errInvalid, sourcePath, err)
	}
	if after, isVersion := strings.CutPrefix(rest, "versions"); isVersion && (after == "" || after[0] == '/') {
		version, _, _ = strings.Cut(strings.TrimPrefix(after, "/"), "/")
		if err := placement.ValidateID(version); err != nil {
			return "", "", false, fmt.Errorf("%w: model version from %s: %w", errInvalid, sourcePath, err)
		}
	}
	return name, version, true, nil
}
