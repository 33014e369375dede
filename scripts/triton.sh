#!/usr/bin/env bash
# Starts Triton Inference Server (CPU, Python backend) from .venv-triton in explicit model
# control mode, in the foreground (exec), for the Triton backend's tests and local runs.
#   scripts/triton.sh STATE_DIR HTTP_PORT GRPC_PORT METRICS_PORT [more tritonserver flags]
# The model repository is STATE_DIR/models (the worker owns it). Loopback only.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
state="$1" http="$2" grpc="$3" metrics="$4"
shift 4
venv="$root/.venv-triton"
sp="$(echo "$venv"/lib/python3*/site-packages)"
pyver="$("$venv/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
pylib="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')"

# The Python backend runs each model instance in a stub process; the stub matching the
# venv's Python goes beside the backend, as pytriton itself arranges it.
mkdir -p "$state/models" "$state/backends"
rm -rf "$state/backends/python"
cp -r "$sp/pytriton/tritonserver/backends/python" "$state/backends/python"
cp "$sp/pytriton/tritonserver/python_backend_stubs/$pyver/triton_python_backend_stub" "$state/backends/python/"

# libpython of the venv's interpreter first, then the libraries the wheel bundles; the venv
# first on PATH so that the stub's interpreter finds numpy there.
export LD_LIBRARY_PATH="$pylib:$sp/nvidia_pytriton.libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PATH="$venv/bin:$PATH"
exec "$sp/pytriton/tritonserver/bin/tritonserver" \
	--model-repository="$state/models" --model-control-mode=explicit \
	--backend-directory="$state/backends" --cache-directory="$sp/pytriton/tritonserver/caches" \
	--http-address=127.0.0.1 --http-port="$http" --grpc-address=127.0.0.1 --grpc-port="$grpc" \
	--metrics-address=127.0.0.1 --metrics-port="$metrics" --allow-gpu-metrics=false \
	--pinned-memory-pool-byte-size=0 --cuda-memory-pool-byte-size=0:0 \
	--disable-auto-complete-config --exit-timeout-secs=5 \
	--backend-config=python,shm-region-prefix-name="mesh$$-" "$@"
