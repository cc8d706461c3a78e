#!/usr/bin/env bash
# Builds (or reuses) the chart and GitOps tools the tests of charts/, manifests/ and deploy/ run:
#   helm        (helm.sh/helm/v3 cmd/helm)                 lint, template, install/upgrade/uninstall
#   kubeconform (github.com/yannh/kubeconform)             strict schema check of rendered manifests
#   luahealth   (hack/luahealth, embeds yuin/gopher-lua)   runs Argo CD health.lua checks
# compiled from Go modules, because this project's machines have no release downloads.
# promtool comes from Debian's `prometheus` package (.ci/run installs it).
#
# Everything lands in ${MLOPS_CACHE:-$HOME/.cache/mlops-operator}/bin/<tool>-<version>/ (plus the
# shared GOMODCACHE/GOCACHE), never in the repository, so a second run builds nothing.
# The tests (chart_tools in tests/conftest.py) and hack/render.py find them with `--print`.
#
#   bash hack/build-tools.sh          # build what is missing, print what was reused
#   bash hack/build-tools.sh --print  # print "<name> <path>" for each tool, build nothing
set -euo pipefail
cd "$(dirname "$0")/.."

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
KUBECONFORM_VERSION="${KUBECONFORM_VERSION:-v0.8.0}"
GOPHER_LUA_VERSION="$(awk '/yuin\/gopher-lua/ {print $NF; exit}' hack/luahealth/go.mod)"
# luahealth is keyed by its source too, so an edit to main.go rebuilds it.
LUAHEALTH_KEY="gopherlua-${GOPHER_LUA_VERSION}-$(cat hack/luahealth/main.go hack/luahealth/go.mod hack/luahealth/go.sum | sha256sum | cut -c1-12)"

CACHE="${MLOPS_CACHE:-$HOME/.cache/mlops-operator}"
HELM="$CACHE/bin/helm-$HELM_VERSION-k8sver/helm"  # built with the k8s version ldflags
KUBECONFORM="$CACHE/bin/kubeconform-$KUBECONFORM_VERSION/kubeconform"
LUAHEALTH="$CACHE/bin/luahealth-$LUAHEALTH_KEY/luahealth"

if [ "${1:-}" = "--print" ]; then
  printf 'helm %s\nkubeconform %s\nluahealth %s\n' "$HELM" "$KUBECONFORM" "$LUAHEALTH"
  exit 0
fi

export GOMODCACHE="$CACHE/go/mod"
export GOCACHE="$CACHE/go/build"
export GOFLAGS="-p=${GO_PARALLEL:-2} -buildvcs=false ${GOFLAGS:-}"
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
export CGO_ENABLED=0
command -v go >/dev/null || { echo "error: Go is required (https://go.dev/dl/)" >&2; exit 1; }
mkdir -p "$GOMODCACHE" "$GOCACHE"
NICE=(nice -n 10)
started=$(date +%s)
built=()

have() { [ -x "$1" ] && { echo "reused: $1"; return 0; } || return 1; }

install_module() {  # install_module <target-binary> <package@version> [extra ldflags]
  local target=$1 pkg=$2 ld="-s -w ${3:-}" t0 tmp
  have "$target" && return 0
  t0=$(date +%s)
  echo "building $pkg..."
  tmp="$(dirname "$target").tmp.$$"
  mkdir -p "$tmp"
  # Build into a private directory, then rename: a concurrent reader never sees half a binary.
  GOBIN="$tmp" "${NICE[@]}" go install -trimpath -ldflags "$ld" "$pkg"
  mkdir -p "$(dirname "$target")"
  mv -f "$tmp/$(basename "$target")" "$target"
  rmdir "$tmp"
  built+=("$(basename "$target"):$(( $(date +%s) - t0 ))s")
}

build_luahealth() {
  have "$LUAHEALTH" && return 0
  local t0 tmp
  t0=$(date +%s)
  echo "building luahealth (gopher-lua $GOPHER_LUA_VERSION)..."
  tmp="$(dirname "$LUAHEALTH").tmp.$$"
  mkdir -p "$tmp"
  (cd hack/luahealth && "${NICE[@]}" go build -mod=readonly -trimpath -ldflags "-s -w" -o "$tmp/luahealth" .)
  mkdir -p "$(dirname "$LUAHEALTH")"
  mv -f "$tmp/luahealth" "$LUAHEALTH"
  rmdir "$tmp"
  built+=("luahealth:$(( $(date +%s) - t0 ))s")
}

build_luahealth
install_module "$KUBECONFORM" "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION"
helm_ldflags() {
  # As helm's Makefile does: its version, and the Kubernetes version `helm template` and `helm lint`
  # assume (default v1.20 otherwise, which fails the chart's kubeVersion) from its client-go.
  local mod minor
  mod=$(go mod download -json "helm.sh/helm/v3@$HELM_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  minor=$(awk '$1 == "k8s.io/client-go" {split($2, v, "."); print v[2]; exit}' "$mod")
  [ -n "$minor" ] || { echo "error: no k8s.io/client-go version in $mod" >&2; exit 1; }
  local x="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  for p in pkg/lint/rules pkg/chartutil; do
    x+=" -X helm.sh/helm/v3/$p.k8sVersionMajor=1 -X helm.sh/helm/v3/$p.k8sVersionMinor=$minor"
  done
  echo "$x"
}
have "$HELM" || install_module "$HELM" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" "$(helm_ldflags)"

command -v promtool >/dev/null || echo "warning: promtool not found (Debian: apt-get install prometheus)" >&2

if [ ${#built[@]} -eq 0 ]; then
  echo "nothing to build: every chart tool reused ($(( $(date +%s) - started ))s)"
else
  echo "built: ${built[*]} (total $(( $(date +%s) - started ))s)"
fi
