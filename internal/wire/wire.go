// Package wire is the contract between the mesh's processes on the request path: the headers
// the wasm filter, ext_proc, the gateway's routes and the workers read and write, the dynamic
// metadata ext_proc hands to Envoy's override_host policy, and the names of the gateway's
// per-model clusters. Changing a value here changes what a running Envoy, filter or worker
// of another release understands. Constants and pure functions only; safe concurrently.
package wire

import (
	"strings"

	"github.com/modelmesh/mesh/internal/placement"
)

// Headers of the contract. Envoy hands header names in lower case, whatever the client sent.
const (
	// HeaderModel names the model: the wasm filter sets it from the request (header, KServe
	// v2 path or gRPC body); routes and ext_proc read it.
	HeaderModel = "x-model-id"
	// HeaderVersion names the version: set by the client or the wasm filter when the request
	// names one, by a weighted route or ext_proc when they choose one; the worker reads it
	// when the path does not name a version.
	HeaderVersion = "x-model-version"
	// HeaderVModelID and HeaderMMModelID name the model for ModelMesh clients, after
	// HeaderModel in precedence; the wasm filter reads them.
	HeaderVModelID  = "mm-vmodel-id"
	HeaderMMModelID = "mm-model-id"
	// HeaderDestination is the worker ("ip:port") ext_proc chose for a cold request; the
	// workers cluster's override_host policy sends the request there.
	HeaderDestination = "x-gateway-destination-endpoint"
	// InternalHeaderPrefix begins headers only the mesh may set; the gateway strips them (and
	// HeaderDestination) from client requests before any other filter, and the wasm filter
	// does again wherever it runs.
	InternalHeaderPrefix = "x-mesh-"
)

// IsInternalHeader reports whether a client-sent header is one only the mesh may set:
// HeaderDestination or a name beginning with InternalHeaderPrefix. name is lower case, as
// Envoy passes it.
func IsInternalHeader(name string) bool {
	return name == HeaderDestination || strings.HasPrefix(name, InternalHeaderPrefix)
}

// MetadataNamespace is the dynamic metadata namespace in which ext_proc also sets
// HeaderDestination (key HeaderDestination) for the override_host policy.
const MetadataNamespace = "envoy.lb"

// Cluster names: "model|<name>|<version>" for a version's ready replicas and, for workers
// serving gRPC on a port of their own (Triton), "model|<name>|<version>|grpc". '|' is
// outside the id grammar (placement.ValidateID), so a name parses back unambiguously;
// dashboards and the gateway's stats tags read the same form.
const (
	clusterPrefix = "model|"
	grpcSuffix    = "|grpc"
)

// ClusterName is the stable name of the cluster of m's ready replicas.
func ClusterName(m placement.ModelVersion) string {
	return clusterPrefix + m.Name + "|" + m.Version
}

// GRPCClusterName is the name of the cluster of m's ready replicas at their gRPC addresses.
func GRPCClusterName(m placement.ModelVersion) string { return ClusterName(m) + grpcSuffix }

// ParseClusterName is the inverse of ClusterName and GRPCClusterName: the model version a
// cluster serves and whether it is the gRPC one. ok is false for any other cluster (the
// workers pool, ext_proc) and for names outside the id grammar.
func ParseClusterName(name string) (m placement.ModelVersion, grpc bool, ok bool) {
	rest, ok := strings.CutPrefix(name, clusterPrefix)
	if !ok {
		return placement.ModelVersion{}, false, false
	}
	// Split by field rather than trimming the suffix: "grpc" is a valid version.
	parts := strings.Split(rest, "|")
	switch {
	case len(parts) == 3 && "|"+parts[2] == grpcSuffix:
		grpc = true
	case len(parts) != 2:
		return placement.ModelVersion{}, false, false
	}
	m = placement.ModelVersion{Name: parts[0], Version: parts[1]}
	if m.Version == "" || m.Validate() != nil {
		return placement.ModelVersion{}, false, false
	}
	return m, grpc, true
}
