#!/usr/bin/env bash
# Starts the mesh locally: a private redis-server and a worker, then loads the demo models.
# Runs in the foreground; Ctrl-C stops everything. Ports (override with the variables):
#   MESH_REDIS_PORT (16379)  MESH_WORKER_PORT (8000)  MESH_WORKER_MGMT_PORT (8010)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
state="$root/.run"
mkdir -p "$state"
redis_port="${MESH_REDIS_PORT:-16379}"
data_port="${MESH_WORKER_PORT:-8000}"
mgmt_port="${MESH_WORKER_MGMT_PORT:-8010}"
capacity="${MESH_WORKER_CAPACITY:-512MiB}"
ort_lib="$(ls "$root"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | head -1)"

pids=()
cleanup() {
	trap - EXIT INT TERM
	for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
	wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
	--logfile "$state/redis.log" --dir "$state" &
pids+=($!)

bin/mesh-worker --worker-id local-1 --listen "127.0.0.1:$data_port" --management-listen "127.0.0.1:$mgmt_port" \
	--model-roots "$root/testdata/models" --cache-dir "$state/cache" --capacity "$capacity" \
	--ort-library "$ort_lib" --redis-addr "127.0.0.1:$redis_port" --log-format text 2> >(tee "$state/worker.log" >&2) &
pids+=($!)

for _ in $(seq 100); do
	curl -sf "http://127.0.0.1:$mgmt_port/healthz" >/dev/null && break
	sleep 0.1
done
for model in iris digits breast-cancer; do
	bin/meshctl --worker "127.0.0.1:$mgmt_port" load "$model" 1 "file://$root/testdata/models/$model/1/model.onnx" >/dev/null
	echo "loaded $model"
done

cat <<MSG

The mesh is running (logs in .run/). Try:
  curl -s localhost:$data_port/v2/models/iris
  curl -s -X POST localhost:$data_port/v2/models/iris/infer \\
    -d '{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[[5.1,3.5,1.4,0.2]]}]}'
  bin/meshctl --worker 127.0.0.1:$mgmt_port list
  curl -s localhost:$mgmt_port/metrics | grep mesh_worker
  redis-cli -p $redis_port hgetall mesh:replicas:local-1
Ctrl-C stops everything.
MSG
wait -n "${pids[@]}"
