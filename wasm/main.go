// Command modelid is the mesh's proxy-wasm HTTP filter for the gateway Envoy (modelid.wasm):
// it strips internal headers sent by clients, finds the model a request is for (headers,
// KServe v2 path, or the first message of a KServe v2 gRPC call), validates it, sets the
// canonical x-model-id and x-model-version headers for routing, and counts requests per
// model as Envoy stats. docs/wasm.md describes the contract.
//
// Build it as a wasip1 reactor:
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o bin/modelid.wasm ./wasm
//
// The logic (this package without the wasip1 files) is plain Go, tested natively.
package main

// main is not called in a reactor: the host calls _initialize, which runs the package
// initialisers (plugin_wasip1.go installs the plugin there), and then the ABI callbacks.
func main() {}
