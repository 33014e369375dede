#!/usr/bin/env bash
# Starts MLServer from .venv-mlserver with model loading left to the worker, in the
# foreground (exec), for the MLServer backend's tests and local runs.
#   scripts/mlserver.sh REPOSITORY HTTP_PORT GRPC_PORT METRICS_PORT [PARALLEL_WORKERS]
# REPOSITORY is the model repository (the worker owns it); its settings.json is written
# here. Loopback only. PARALLEL_WORKERS (default 1) is MLServer's parallel_workers: the
# inference processes, each of which loads every model.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
repo="$1" http="$2" grpc="$3" metrics="$4" workers="${5:-1}"
mkdir -p "$repo"
# load_models_at_startup off: MLServer loads nothing by itself, the worker asks for each
# model through the repository API. The metrics server is on for the worker's polls of
# each model's request counters.
cat >"$repo/settings.json" <<JSON
{
  "load_models_at_startup": false,
  "host": "127.0.0.1",
  "http_port": $http,
  "grpc_port": $grpc,
  "metrics_port": $metrics,
  "parallel_workers": $workers,
  "debug": false
}
JSON
# MLServer keeps its metrics files in .metrics under the working directory.
cd "$(dirname "$repo")"
exec "$root/.venv-mlserver/bin/mlserver" start "$repo"
