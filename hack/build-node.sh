#!/usr/bin/env bash
# Builds (or reuses) what a real kubelet node of the local cluster runs, from Go modules (no release
# downloads here): kubelet and kube-proxy (from the same k8s.io/kubernetes consumer module pattern as
# hack/build-control-plane.sh, in a work folder of their own so the control-plane build is untouched),
# containerd + its runc shim + ctr, CoreDNS (the cluster DNS) and a static pause binary.
# runc and the CNI plugins come from Debian packages (hack/host-packages.sh).
#
# Everything lands in ${MLOPS_CACHE:-$HOME/.cache/mlops-operator}/bin/node-<versions>, sharing the
# control-plane build's GOMODCACHE and GOCACHE, never in the repository; a second run builds nothing.
# mlops.testing.node finds the binaries through the same layout.
#
#   bash hack/build-node.sh          # build what is missing
#   bash hack/build-node.sh containerd  # one component (pause containerd coredns kubernetes)
#   bash hack/build-node.sh --print  # print the bin directory only
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION="${K8S_VERSION:-v1.36.3}"
CONTAINERD_VERSION="${CONTAINERD_VERSION:-v2.4.2}"
COREDNS_VERSION="${COREDNS_VERSION:-v1.14.7}"

CACHE="${MLOPS_CACHE:-$HOME/.cache/mlops-operator}"
BIN="$CACHE/bin/node-k8s-${K8S_VERSION}_containerd-${CONTAINERD_VERSION}_coredns-${COREDNS_VERSION}"
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
NICE=(nice -n 15)
started=$(date +%s)
built=()

have() { [ -x "$BIN/$1" ] && { echo "reused: $BIN/$1"; return 0; } || return 1; }

build_kubernetes_node() {
  local need=()
  for b in kubelet kube-proxy; do have "$b" || need+=("$b"); done
  [ ${#need[@]} -eq 0 ] && return 0
  local t0 mod dir minor
  t0=$(date +%s)
  dir="$WORK/kubernetes-node-$K8S_VERSION"
  mkdir -p "$dir"
  echo "building ${need[*]} $K8S_VERSION (cold: about 7 min on 2 cores, less after the control plane)..."
  mod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  [ -f "$mod" ] || { echo "error: could not download k8s.io/kubernetes@$K8S_VERSION" >&2; exit 1; }
  local staging_version="v0.${K8S_VERSION#v1.}"
  {
    echo "module mlops.local/kubernetes-node-build"
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
  cat >"$dir/tools.go" <<'GO'
//go:build tools

// Package tools pins the node commands this module builds.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
GO
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
  (cd "$dir" && "${NICE[@]}" go build -trimpath -ldflags "$ld" -o "$BIN/" "${pkgs[@]}")
  built+=("kubelet+kube-proxy:$(( $(date +%s) - t0 ))s")
}

build_containerd() {
  local need=()
  for b in containerd containerd-shim-runc-v2 ctr; do have "$b" || need+=("$b"); done
  [ ${#need[@]} -eq 0 ] && return 0
  local t0 dir
  t0=$(date +%s)
  dir="$WORK/containerd-$CONTAINERD_VERSION"
  mkdir -p "$dir"
  echo "building ${need[*]} $CONTAINERD_VERSION..."
  # containerd's go.mod has no replace directives: a plain consumer module builds its commands.
  printf 'module mlops.local/containerd-build\n\ngo 1.24\n\nrequire github.com/containerd/containerd/v2 %s\n' \
    "$CONTAINERD_VERSION" >"$dir/go.mod"
  cat >"$dir/tools.go" <<'GO'
//go:build tools

// Package tools pins the containerd commands this module builds.
package tools

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
)
GO
  (cd "$dir" && "${NICE[@]}" go mod tidy)
  local pkgs=()
  for b in "${need[@]}"; do pkgs+=("github.com/containerd/containerd/v2/cmd/$b"); done
  (cd "$dir" && "${NICE[@]}" go build -trimpath -tags "no_btrfs no_devmapper no_zfs" \
    -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" \
    -o "$BIN/" "${pkgs[@]}")
  built+=("containerd:$(( $(date +%s) - t0 ))s")
}

build_coredns() {
  have coredns && return 0
  local t0 dir
  t0=$(date +%s)
  dir="$WORK/coredns-$COREDNS_VERSION"
  mkdir -p "$dir"
  echo "building coredns $COREDNS_VERSION (cluster-DNS plugins only)..."
  # CoreDNS's go.mod has no replace directives. A main of our own (hack/coredns) links only the
  # plugins the node's Corefile uses: kubernetes for the cluster domain, and no forward plugin at all.
  printf 'module mlops.local/coredns-build\n\ngo 1.25.0\n\nrequire github.com/coredns/coredns %s\n' \
    "$COREDNS_VERSION" >"$dir/go.mod"
  cp hack/coredns/main.go.in "$dir/main.go"
  (cd "$dir" && "${NICE[@]}" go mod tidy &&
    "${NICE[@]}" go build -trimpath -ldflags "-s -w" -o "$BIN/coredns" .)
  built+=("coredns:$(( $(date +%s) - t0 ))s")
}

build_pause() {
  have pause && return 0
  (cd hack/pause && "${NICE[@]}" go build -trimpath -ldflags "-s -w" -o "$BIN/pause" .)
  built+=("pause")
}

# Arguments pick components (pause containerd coredns kubernetes); default: all of them.
for component in "${@:-pause containerd coredns kubernetes}"; do
  for c in $component; do
    case "$c" in
      pause) build_pause ;;
      containerd) build_containerd ;;
      coredns) build_coredns ;;
      kubernetes) build_kubernetes_node ;;
      *) echo "error: unknown component $c" >&2; exit 2 ;;
    esac
  done
done

echo "binaries: $BIN"
if [ ${#built[@]} -eq 0 ]; then
  echo "nothing to build: every node binary reused ($(( $(date +%s) - started ))s)"
else
  echo "built: ${built[*]} (total $(( $(date +%s) - started ))s)"
fi
