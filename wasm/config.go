package main

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// config is the plugin configuration (Envoy's
// envoy.extensions.filters.http.wasm.v3.Wasm config.configuration), as JSON. An empty
// configuration takes the defaults.
type config struct {
	// MaxModels bounds the per-model counters this VM defines; requests for models beyond
	// it are counted in modelmesh.model_requests_overflow. 0 counts every model there.
	MaxModels int `json:"max_models"`
	// MaxGRPCMessageBytes bounds the first gRPC message the filter buffers to read the
	// model name from; a larger one is refused with RESOURCE_EXHAUSTED. Keep it below
	// Envoy's per_connection_buffer_limit_bytes (1 MiB by default) minus 5.
	MaxGRPCMessageBytes int `json:"max_grpc_message_bytes"`
	// ReadGRPCBody lets a gRPC request that names its model only in the body wait for its
	// first message. Envoy can hand the body over only with the Wasm filter's
	// allow_on_headers_stop_iteration; where that cannot be set (Istio's WasmPlugin), false
	// lets such requests pass on without a model id instead of stalling.
	ReadGRPCBody bool `json:"read_grpc_body"`
}

const (
	defaultMaxModels           = 1000
	defaultMaxGRPCMessageBytes = 1<<20 - grpcPrefixSize
	limitMaxModels             = 1_000_000
	limitMaxGRPCMessageBytes   = 64 << 20
)

// parseConfig reads the plugin configuration. Unknown fields are refused, so that a typo
// does not silently leave a default in place.
func parseConfig(data []byte) (config, error) {
	c := config{MaxModels: defaultMaxModels, MaxGRPCMessageBytes: defaultMaxGRPCMessageBytes, ReadGRPCBody: true}
	if len(bytes.TrimSpace(data)) == 0 {
		return c, nil
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return c, fmt.Errorf("plugin configuration: %w", err)
	}
	if dec.More() {
		return c, fmt.Errorf("plugin configuration: data after the JSON object")
	}
	if c.MaxModels < 0 || c.MaxModels > limitMaxModels {
		return c, fmt.Errorf("plugin configuration: max_models %d outside 0..%d", c.MaxModels, limitMaxModels)
	}
	if c.MaxGRPCMessageBytes < 1 || c.MaxGRPCMessageBytes > limitMaxGRPCMessageBytes {
		return c, fmt.Errorf("plugin configuration: max_grpc_message_bytes %d outside 1..%d",
			c.MaxGRPCMessageBytes, limitMaxGRPCMessageBytes)
	}
	return c, nil
}
