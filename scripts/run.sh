#!/usr/bin/env bash
# Starts the whole mesh locally: a private redis-server, two ONNX Runtime workers with
# different memory budgets, an MLServer with its worker (the scikit-learn, XGBoost and
# LightGBM demo models), ext_proc, the control plane and the gateway Envoy, with the demo
# registry (manifests/local/registry.yaml), and Prometheus scraping them all; every model is
# cold at start.
# Each process runs under a supervisor that restarts it when it exits, as Kubernetes restarts
# a container: after 1 s, doubling up to 10 s while it keeps dying, back to 1 s once a run
# lasted a minute. The terminal gets a line naming what exited, how, and the restart; each
# process's output is appended to <state>/<name>.log (a restart adds a marker line there),
# and <state>/<name>.pid holds its current process id. Only Ctrl-C (SIGINT) or SIGTERM stops
# the mesh: every process gets SIGTERM, and SIGKILL if it is still running 45 s later.
# Ports (override with the variables):
#   MESH_GATEWAY_PORT (8080)  MESH_ENVOY_ADMIN_PORT (9901)  MESH_REDIS_PORT (16379)
#   MESH_XDS_PORT (18000)  MESH_CONTROLPLANE_METRICS_PORT (18001)
#   MESH_EXTPROC_PORT (9002)  MESH_EXTPROC_METRICS_PORT (9003)
#   MESH_WORKER_PORT (8001) and MESH_WORKER_MANAGEMENT_PORT (8011): the first worker's data
#     and management ports; the second worker's are one more (8002, 8012)
#   MESH_MLSERVER_WORKER_PORT (8003) and MESH_MLSERVER_WORKER_MANAGEMENT_PORT (8013): the
#     MLServer worker's; MESH_MLSERVER_HTTP_PORT (8085), MESH_MLSERVER_GRPC_PORT (8086) and
#     MESH_MLSERVER_METRICS_PORT (8087): MLServer's own, where the gateway sends its models'
#     requests
#   MESH_PROMETHEUS_PORT (9090): Prometheus, scraping everything with the mesh's rules
# MESH_RUN_DIR (.run): the state directory (logs, pid files, caches, Redis, Prometheus data);
# emptied at start (another directory only if run.sh made it, or it is empty).
# MESH_STORAGE=s3 (make run S3=1) serves the demo models from a local S3 server instead of the
# file system: versitygw on MESH_S3_PORT (9000), bucket "models", and the workers read them
# through the storage key "local-s3" of a storage-config directory (docs/storage.md).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
state="${MESH_RUN_DIR:-$root/.run}"
# The directory is emptied: one that run.sh did not make must be empty already.
if [[ -n ${MESH_RUN_DIR:-} && -d $state && ! -e $state/.mesh-run && -n "$(ls -A "$state")" ]]; then
	echo "MESH_RUN_DIR=$state is not empty and was not made by run.sh: not removing it" >&2
	exit 2
fi
rm -rf "$state"
mkdir -p "$state"
state="$(cd "$state" && pwd)"
touch "$state/.mesh-run"
gateway_port="${MESH_GATEWAY_PORT:-8080}"
admin_port="${MESH_ENVOY_ADMIN_PORT:-9901}"
redis_port="${MESH_REDIS_PORT:-16379}"
xds_port="${MESH_XDS_PORT:-18000}"
cp_metrics_port="${MESH_CONTROLPLANE_METRICS_PORT:-18001}"
extproc_port="${MESH_EXTPROC_PORT:-9002}"
extproc_metrics_port="${MESH_EXTPROC_METRICS_PORT:-9003}"
prometheus_port="${MESH_PROMETHEUS_PORT:-9090}"
worker_port="${MESH_WORKER_PORT:-8001}"
worker_management_port="${MESH_WORKER_MANAGEMENT_PORT:-8011}"
mlserver_worker_port="${MESH_MLSERVER_WORKER_PORT:-8003}"
mlserver_worker_management_port="${MESH_MLSERVER_WORKER_MANAGEMENT_PORT:-8013}"
mlserver_http_port="${MESH_MLSERVER_HTTP_PORT:-8085}"
mlserver_grpc_port="${MESH_MLSERVER_GRPC_PORT:-8086}"
mlserver_metrics_port="${MESH_MLSERVER_METRICS_PORT:-8087}"
storage="${MESH_STORAGE:-file}"
s3_port="${MESH_S3_PORT:-9000}"
ort_lib="$(ls "$root"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | head -1)"
redis_addr="127.0.0.1:$redis_port"

say() { echo "run.sh: $*" >&2; }

# supervise NAME COMMAND...: runs COMMAND in the background, output appended to
# $state/NAME.log, and starts it again whenever it exits (any status, as Kubernetes'
# restartPolicy Always), with the back-off above. The supervisor is a subshell of its own;
# SIGTERM or SIGINT to it (cleanup below; Ctrl-C reaches it too) stops its process and it.
supervisors=()
supervise() {
	local name=$1
	shift
	(
		set +e
		stopping=0 child= nap=
		# The child gets SIGTERM whichever signal stops the supervisor: Go's binaries, Envoy,
		# Redis and Prometheus all shut down gracefully on it.
		trap 'stopping=1; kill -TERM $child $nap 2>/dev/null' INT TERM
		delay=1 restarts=0
		while :; do
			started=$SECONDS
			"$@" >>"$state/$name.log" 2>&1 &
			child=$!
			echo "$child" >"$state/$name.pid"
			# wait returns early when a trapped signal arrives: wait again until the child is gone.
			# (Its stderr is bash's own "Killed" notice; the line below says it better.)
			wait "$child" 2>/dev/null
			status=$?
			while kill -0 "$child" 2>/dev/null; do
				wait "$child" 2>/dev/null
				status=$?
			done
			child=
			# A stop in progress (cleanup makes the file first): the exit was asked for.
			if ((stopping)) || [[ -e $state/stopping ]]; then exit 0; fi
			how="with status $status"
			if ((status > 128)); then how="on signal $(kill -l $((status - 128)) 2>/dev/null) (status $status)"; fi
			if ((SECONDS - started >= 60)); then delay=1; fi
			restarts=$((restarts + 1))
			say "$name exited $how; restart $restarts in ${delay}s (log: $state/$name.log)"
			sleep "$delay" &
			nap=$!
			# Twice: when a signal cuts the first wait short, the second reaps the killed sleep.
			wait $nap 2>/dev/null
			wait $nap 2>/dev/null
			nap=
			if ((stopping)) || [[ -e $state/stopping ]]; then exit 0; fi
			echo "--- run.sh: $name exited $how; restart $restarts at $(date '+%F %T') ---" >>"$state/$name.log"
			say "$name restarted (restart $restarts)"
			delay=$((delay * 2 > 10 ? 10 : delay * 2))
		done
	) &
	supervisors+=($!)
}

# cleanup STATUS stops every process and exits with STATUS: 0 after Ctrl-C or SIGTERM, the
# script's own status when it ends otherwise (a component that did not start).
cleanup() {
	trap - EXIT INT TERM
	say "stopping the mesh"
	touch "$state/stopping"
	local pid alive=0 i
	for pid in "${supervisors[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
	# Whatever still runs after 45 s (a worker waits for its drains at most
	# --shutdown-timeout) is killed.
	for ((i = 0; i < 225; i++)); do
		alive=0
		for pid in "${supervisors[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
		((alive)) || break
		sleep 0.2
	done
	if ((alive)); then
		say "still running after 45 s: killing what is left"
		for pid in "$state"/*.pid; do kill -KILL "$(cat "$pid" 2>/dev/null)" 2>/dev/null || true; done
		kill -KILL "${supervisors[@]}" 2>/dev/null || true
	fi
	wait 2>/dev/null || true
	rm -f "$state"/*.pid "$state/stopping"
	exit "$1"
}
trap 'cleanup 0' INT TERM
trap 'cleanup $?' EXIT

# wait_http URL: until URL answers 2xx, for at most 60 s (each try at most 2 s).
wait_http() {
	local deadline=$((SECONDS + 60))
	while ((SECONDS < deadline)); do
		curl -sf -m 2 -o /dev/null "$1" && return 0
		sleep 0.1
	done
	echo "$1 did not answer within 60 s; logs are in $state/" >&2
	exit 1
}

# No persistence: after a restart the workers and the control plane write their state
# again (the workers' next heartbeat, the control plane's registry check).
supervise redis redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$state"

sed "s#\${MODELS}#$root/testdata/models#g" manifests/local/registry.yaml >"$state/registry.yaml"
storage_flags=(--model-roots "$root/testdata/models")
case "$storage" in
file) ;;
s3)
	# A local S3 server (make setup builds it) holding the demo models, and a storage-config
	# entry naming it, as a mounted storage-config Secret would.
	s3_key=mesh-local s3_secret=mesh-local-secret s3="http://127.0.0.1:$s3_port"
	mkdir -p "$state/s3/data" "$state/s3/meta" "$state/storage-config"
	# The objects are files under $state/s3: a restarted versitygw serves them again.
	supervise s3 .bin/versitygw --access "$s3_key" --secret "$s3_secret" --region us-east-1 --port "127.0.0.1:$s3_port" \
		--health /_health --quiet posix --sidecar "$state/s3/meta" "$state/s3/data"
	wait_http "$s3/_health"
	s3put() { curl -sSf --aws-sigv4 aws:amz:us-east-1:s3 --user "$s3_key:$s3_secret" -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' "$@"; }
	s3put -X PUT "$s3/models"
	for f in testdata/models/*/*/model.*; do s3put -T "$f" "$s3/models/${f#testdata/models/}"; done
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
# A restarted worker keeps its disk tier (cache-N), as a container restart keeps an emptyDir.
management=()
for i in 1 2; do
	capacity=$([[ $i == 1 ]] && echo 64MiB || echo 256MiB)
	data_port=$((worker_port + i - 1)) management_port=$((worker_management_port + i - 1))
	management+=("127.0.0.1:$management_port")
	supervise "worker-$i" bin/mesh-worker --worker-id "worker-$i" --listen "127.0.0.1:$data_port" \
		--management-listen "127.0.0.1:$management_port" \
		"${storage_flags[@]}" --cache-dir "$state/cache-$i" --capacity "$capacity" \
		--ort-library "$ort_lib" --redis-addr "$redis_addr" --log-format text
done

# MLServer, loading only what its worker asks for, and the worker that drives it: the gateway
# sends its models' requests to MLServer's own ports. A restarted MLServer starts empty; the
# worker sees it gone, and loads its models again on demand.
supervise mlserver scripts/mlserver.sh "$state/mlserver/models" "$mlserver_http_port" "$mlserver_grpc_port" "$mlserver_metrics_port"
management+=("127.0.0.1:$mlserver_worker_management_port")
supervise worker-mlserver bin/mesh-worker --worker-id worker-mlserver --listen "127.0.0.1:$mlserver_worker_port" \
	--management-listen "127.0.0.1:$mlserver_worker_management_port" \
	"${storage_flags[@]}" --cache-dir "$state/cache-mlserver" --capacity 512MiB --runtime mlserver \
	--mlserver-http "127.0.0.1:$mlserver_http_port" --mlserver-grpc "127.0.0.1:$mlserver_grpc_port" \
	--mlserver-repository "$state/mlserver/models" --mlserver-metrics "http://127.0.0.1:$mlserver_metrics_port/metrics" \
	--redis-addr "$redis_addr" --log-format text

supervise extproc bin/mesh-extproc --listen "127.0.0.1:$extproc_port" --metrics-listen "127.0.0.1:$extproc_metrics_port" \
	--redis-addr "$redis_addr" --log-format text

# VirtualService and DestinationRule files dropped here drive the models' traffic (docs/istio.md).
mkdir -p "$state/istio"
supervise controlplane bin/mesh-controlplane --xds-listen "127.0.0.1:$xds_port" --metrics-listen "127.0.0.1:$cp_metrics_port" \
	--registry "$state/registry.yaml" --istio-dir "$state/istio" \
	--redis-addr "$redis_addr" --gateway-address 127.0.0.1 --gateway-port "$gateway_port" \
	--extproc-addr "127.0.0.1:$extproc_port" --wasm-path "$root/bin/modelid.wasm" --log-format text

sed -e "s#\${ADMIN_PORT}#$admin_port#" -e "s#\${XDS_HOST}#127.0.0.1#" -e "s#\${XDS_PORT}#$xds_port#" \
	-e "s#\${XDS_API}#GRPC#" -e "s#\${NODE_ID}#gateway-local#" manifests/local/envoy-bootstrap.yaml >"$state/envoy.yaml"
# A restarted Envoy gets its configuration from the control plane again.
supervise envoy .venv/bin/envoy -c "$state/envoy.yaml" --concurrency 2 --disable-hot-restart --use-dynamic-base-id \
	--log-level warn

# Prometheus (make setup installs it) with manifests/observability's local configuration.
sed -e "s#\${SCRAPE_INTERVAL}#5s#g" -e "s#\${RULES}#$root/manifests/observability/rules#" \
	-e "s#\${GATEWAY_ADMIN}#127.0.0.1:$admin_port#" -e "s#\${CONTROLPLANE}#127.0.0.1:$cp_metrics_port#" \
	-e "s#\${EXTPROC}#127.0.0.1:$extproc_metrics_port#" -e "s#\${WORKERS}#\"${management[0]}\", \"${management[1]}\", \"${management[2]}\"#" \
	manifests/observability/prometheus-local.yaml >"$state/prometheus.yaml"
supervise prometheus prometheus --config.file "$state/prometheus.yaml" --storage.tsdb.path "$state/prometheus" \
	--web.listen-address "127.0.0.1:$prometheus_port" --log.level warn

for m in "${management[@]}"; do wait_http "http://$m/healthz"; done
wait_http "http://127.0.0.1:$mlserver_http_port/v2/health/live"
wait_http "http://127.0.0.1:$prometheus_port/-/ready"
wait_http "http://127.0.0.1:$admin_port/ready"
wait_http "http://127.0.0.1:$gateway_port/v2/health/ready"

zeros="$(printf '0 %.0s' $(seq 64))"
cat <<MSG

The mesh is running: gateway 127.0.0.1:$gateway_port, Envoy admin 127.0.0.1:$admin_port, logs in $state/.
Prometheus: http://127.0.0.1:$prometheus_port (dashboards and alerts: docs/observability.md).
Every model is cold; the first request loads it (models from: $storage). Try:

  curl -s -X POST localhost:$gateway_port/v2/models/iris/infer \\
    -d '{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[[5.1,3.5,1.4,0.2]]}]}'
  curl -s localhost:$gateway_port/v2/models/iris                      # metadata
  bin/meshctl --worker ${management[0]} list                           # what worker-1 holds
  bin/meshctl --worker ${management[0]} disk                           # worker-1's disk tier
  curl -s localhost:$admin_port/stats | grep -E 'modelmesh|cluster.model'   # Envoy's per-model stats

gRPC (and REST) with tritonclient, a stock KServe v2 client, sending no mesh header:
  .venv/bin/python scripts/infer.py --url localhost:$gateway_port iris 5.1 3.5 1.4 0.2
  .venv/bin/python scripts/infer.py --url localhost:$gateway_port --protocol http digits $zeros
  .venv/bin/python scripts/infer.py --url localhost:$gateway_port breast-cancer \$(python3 -c 'import json; print(*json.load(open("testdata/models/breast-cancer/testset.json"))["inputs"][0])')
                                                  # breast-cancer splits 90/10 between versions 1 and 2
  .venv/bin/python scripts/infer.py --url localhost:$gateway_port --input input-0 --datatype FP64 --outputs predict \
    wine-sklearn \$(python3 -c 'import json; print(*json.load(open("testdata/models/wine-sklearn/testset.json"))["inputs"][0])')
                                                  # scikit-learn on MLServer; also diabetes-xgboost, breast-cancer-lightgbm
A process that dies is restarted (try: kill -9 \$(cat $state/worker-1.pid)); Ctrl-C stops everything.
MSG
# The supervisors never exit on their own: this waits for Ctrl-C or SIGTERM (cleanup).
wait "${supervisors[@]}"
