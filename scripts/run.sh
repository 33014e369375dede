#!/usr/bin/env bash
# Starts the whole mesh locally: a private redis-server, two workers with different memory
# budgets, ext_proc, the control plane and the gateway Envoy, with the demo registry
# (manifests/local/registry.yaml), and Prometheus scraping them all; every model is cold at
# start. Ctrl-C stops everything.
# Ports (override with the variables):
#   MESH_GATEWAY_PORT (8080)  MESH_ENVOY_ADMIN_PORT (9901)  MESH_REDIS_PORT (16379)
#   MESH_XDS_PORT (18000)  MESH_CONTROLPLANE_METRICS_PORT (18001)
#   MESH_EXTPROC_PORT (9002)  MESH_EXTPROC_METRICS_PORT (9003)
#   workers: data 8001 and 8002, management 8011 and 8012
#   MESH_PROMETHEUS_PORT (9090): Prometheus, scraping everything with the mesh's rules
# MESH_STORAGE=s3 (make run S3=1) serves the demo models from a local S3 server instead of the
# file system: versitygw on MESH_S3_PORT (9000), bucket "models", and the workers read them
# through the storage key "local-s3" of a storage-config directory (docs/storage.md).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
state="$root/.run"
rm -rf "$state"
mkdir -p "$state"
gateway_port="${MESH_GATEWAY_PORT:-8080}"
admin_port="${MESH_ENVOY_ADMIN_PORT:-9901}"
redis_port="${MESH_REDIS_PORT:-16379}"
xds_port="${MESH_XDS_PORT:-18000}"
cp_metrics_port="${MESH_CONTROLPLANE_METRICS_PORT:-18001}"
extproc_port="${MESH_EXTPROC_PORT:-9002}"
extproc_metrics_port="${MESH_EXTPROC_METRICS_PORT:-9003}"
prometheus_port="${MESH_PROMETHEUS_PORT:-9090}"
storage="${MESH_STORAGE:-file}"
s3_port="${MESH_S3_PORT:-9000}"
ort_lib="$(ls "$root"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | head -1)"
redis_addr="127.0.0.1:$redis_port"

pids=()
cleanup() {
	trap - EXIT INT TERM
	echo "stopping the mesh"
	for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
	wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

wait_http() {
	for _ in $(seq 200); do
		curl -sf -o /dev/null "$1" && return 0
		sleep 0.1
	done
	echo "$1 did not answer; logs are in .run/" >&2
	exit 1
}

redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
	--logfile "$state/redis.log" --dir "$state" &
pids+=($!)

sed "s#\${MODELS}#$root/testdata/models#g" manifests/local/registry.yaml >"$state/registry.yaml"
storage_flags=(--model-roots "$root/testdata/models")
case "$storage" in
file) ;;
s3)
	# A local S3 server (make setup builds it) holding the demo models, and a storage-config
	# entry naming it, as a mounted storage-config Secret would.
	s3_key=mesh-local s3_secret=mesh-local-secret s3="http://127.0.0.1:$s3_port"
	mkdir -p "$state/s3/data" "$state/s3/meta" "$state/storage-config"
	.bin/versitygw --access "$s3_key" --secret "$s3_secret" --region us-east-1 --port "127.0.0.1:$s3_port" \
		--health /_health --quiet posix --sidecar "$state/s3/meta" "$state/s3/data" >"$state/s3.log" 2>&1 &
	pids+=($!)
	wait_http "$s3/_health"
	s3put() { curl -sSf --aws-sigv4 aws:amz:us-east-1:s3 --user "$s3_key:$s3_secret" -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' "$@"; }
	s3put -X PUT "$s3/models"
	for f in testdata/models/*/*/model.onnx; do s3put -T "$f" "$s3/models/${f#testdata/models/}"; done
	printf '{"type": "s3", "access_key_id": "%s", "secret_access_key": "%s", "endpoint_url": "%s", "bucket": "models"}\n' \
		"$s3_key" "$s3_secret" "$s3" >"$state/storage-config/local-s3"
	sed -E 's#storageUri: "file://[^"]*/testdata/models/([^"]*)"#storage: {key: local-s3, path: "\1"}#' \
		"$state/registry.yaml" >"$state/registry-s3.yaml"
	mv "$state/registry-s3.yaml" "$state/registry.yaml"
	storage_flags=(--storage-config "$state/storage-config")
	;;
*)
	echo "MESH_STORAGE=$storage: want file or s3" >&2
	exit 2
	;;
esac

# Two workers: a small one and a larger one.
for i in 1 2; do
	capacity=$([[ $i == 1 ]] && echo 64MiB || echo 256MiB)
	bin/mesh-worker --worker-id "worker-$i" --listen "127.0.0.1:800$i" --management-listen "127.0.0.1:801$i" \
		"${storage_flags[@]}" --cache-dir "$state/cache-$i" --capacity "$capacity" \
		--ort-library "$ort_lib" --redis-addr "$redis_addr" --log-format text 2>"$state/worker-$i.log" &
	pids+=($!)
done

bin/mesh-extproc --listen "127.0.0.1:$extproc_port" --metrics-listen "127.0.0.1:$extproc_metrics_port" \
	--redis-addr "$redis_addr" --log-format text 2>"$state/extproc.log" &
pids+=($!)

# VirtualService and DestinationRule files dropped here drive the models' traffic (docs/istio.md).
mkdir -p "$state/istio"
bin/mesh-controlplane --xds-listen "127.0.0.1:$xds_port" --metrics-listen "127.0.0.1:$cp_metrics_port" \
	--registry "$state/registry.yaml" --istio-dir "$state/istio" \
	--redis-addr "$redis_addr" --gateway-address 127.0.0.1 --gateway-port "$gateway_port" \
	--extproc-addr "127.0.0.1:$extproc_port" --wasm-path "$root/bin/modelid.wasm" --log-format text 2>"$state/controlplane.log" &
pids+=($!)

sed -e "s#\${ADMIN_PORT}#$admin_port#" -e "s#\${XDS_HOST}#127.0.0.1#" -e "s#\${XDS_PORT}#$xds_port#" \
	-e "s#\${XDS_API}#GRPC#" -e "s#\${NODE_ID}#gateway-local#" manifests/local/envoy-bootstrap.yaml >"$state/envoy.yaml"
.venv/bin/envoy -c "$state/envoy.yaml" --concurrency 2 --disable-hot-restart --use-dynamic-base-id \
	--log-level warn 2>"$state/envoy.log" &
pids+=($!)

# Prometheus (make setup installs it) with manifests/observability's local configuration.
sed -e "s#\${SCRAPE_INTERVAL}#5s#g" -e "s#\${RULES}#$root/manifests/observability/rules#" \
	-e "s#\${GATEWAY_ADMIN}#127.0.0.1:$admin_port#" -e "s#\${CONTROLPLANE}#127.0.0.1:$cp_metrics_port#" \
	-e "s#\${EXTPROC}#127.0.0.1:$extproc_metrics_port#" -e "s#\${WORKERS}#\"127.0.0.1:8011\", \"127.0.0.1:8012\"#" \
	manifests/observability/prometheus-local.yaml >"$state/prometheus.yaml"
prometheus --config.file "$state/prometheus.yaml" --storage.tsdb.path "$state/prometheus" \
	--web.listen-address "127.0.0.1:$prometheus_port" --log.level warn 2>"$state/prometheus.log" &
pids+=($!)

for i in 1 2; do wait_http "http://127.0.0.1:801$i/healthz"; done
wait_http "http://127.0.0.1:$prometheus_port/-/ready"
wait_http "http://127.0.0.1:$admin_port/ready"
wait_http "http://127.0.0.1:$gateway_port/v2/health/ready"

zeros="$(printf '0 %.0s' $(seq 64))"
cat <<MSG

The mesh is running: gateway 127.0.0.1:$gateway_port, Envoy admin 127.0.0.1:$admin_port, logs in .run/.
Prometheus: http://127.0.0.1:$prometheus_port (dashboards and alerts: docs/observability.md).
Every model is cold; the first request loads it (models from: $storage). Try:

  curl -s -X POST localhost:$gateway_port/v2/models/iris/infer \\
    -d '{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[[5.1,3.5,1.4,0.2]]}]}'
  curl -s localhost:$gateway_port/v2/models/iris                      # metadata
  bin/meshctl --worker 127.0.0.1:8011 list                           # what worker-1 holds
  bin/meshctl --worker 127.0.0.1:8011 disk                           # worker-1's disk tier
  curl -s localhost:$admin_port/stats | grep -E 'modelmesh|cluster.model'   # Envoy's per-model stats

gRPC (and REST) with tritonclient, a stock KServe v2 client, sending no mesh header:
  .venv/bin/python scripts/infer.py --url localhost:$gateway_port iris 5.1 3.5 1.4 0.2
  .venv/bin/python scripts/infer.py --url localhost:$gateway_port --protocol http digits $zeros
  .venv/bin/python scripts/infer.py --url localhost:$gateway_port breast-cancer \$(python3 -c 'import json; print(*json.load(open("testdata/models/breast-cancer/testset.json"))["inputs"][0])')
                                                  # breast-cancer splits 90/10 between versions 1 and 2
Ctrl-C stops everything.
MSG
wait -n "${pids[@]}"
