#!/usr/bin/env bash
# `make image`: build the project's container image (Dockerfile) with podman.
#
# The Dockerfile's base is a build arg (default python:3.11-slim, for users with a registry). These
# machines reach no container registry, so by default this script first makes a base from Debian
# packages with mmdebstrap (bookworm: python3 is 3.11) and imports it into podman's storage; set
# BASE_IMAGE=python:3.11-slim to use the registry image instead. pip inside the build reaches PyPI
# through the host's CA bundle, mounted read-only. Layers are cached in $MLOPS_CACHE/image (see
# hack/podman-env.sh), so a second build only redoes what changed.
#
#   bash hack/build-image.sh                 # build localhost/mlops-operator:dev
#   IMAGE=localhost/mlops-operator:x bash hack/build-image.sh
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE="${IMAGE:-localhost/mlops-operator:dev}"
DEBIAN_SUITE="${DEBIAN_SUITE:-bookworm}"
BASE_PACKAGES="ca-certificates,python3,python3-venv,python3-pip,passwd"

for tool in podman runc; do
  command -v "$tool" >/dev/null || {
    echo "error: $tool is missing: run 'bash hack/host-packages.sh' (Debian: apt-get install podman runc mmdebstrap)" >&2
    exit 1
  }
done
# shellcheck source=hack/podman-env.sh
. hack/podman-env.sh

started=$(date +%s)
if [ -z "${BASE_IMAGE:-}" ]; then
  command -v mmdebstrap >/dev/null || { echo "error: mmdebstrap is missing: run 'bash hack/host-packages.sh'" >&2; exit 1; }
  key=$(printf '%s %s' "$DEBIAN_SUITE" "$BASE_PACKAGES" | sha256sum | cut -c1-12)
  BASE_IMAGE="localhost/mlops-base:$DEBIAN_SUITE-$key"
  if pm image exists "$BASE_IMAGE"; then
    echo "reused base: $BASE_IMAGE"
  else
    t0=$(date +%s)
    echo "building base $BASE_IMAGE from Debian $DEBIAN_SUITE packages (about a minute)..."
    tar="$IMAGE_CACHE/base-$DEBIAN_SUITE-$key.tar"
    nice -n 10 mmdebstrap --quiet --variant=minbase --include="$BASE_PACKAGES" \
      --customize-hook='rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/*' \
      "$DEBIAN_SUITE" "$tar"
    pm import --change 'CMD ["/bin/bash"]' "$tar" "$BASE_IMAGE" >/dev/null
    rm -f "$tar"
    echo "base built in $(( $(date +%s) - t0 ))s"
  fi
fi

t0=$(date +%s)
nice -n 10 podman --runtime runc --cgroup-manager=cgroupfs build \
  --build-arg "BASE_IMAGE=$BASE_IMAGE" \
  --volume /etc/ssl/certs:/etc/ssl/certs:ro \
  --layers --tag "$IMAGE" --file Dockerfile .
size=$(pm image inspect --format '{{.Size}}' "$IMAGE")
echo "image $IMAGE: $(( size / 1000000 )) MB, podman build $(( $(date +%s) - t0 ))s, total $(( $(date +%s) - started ))s"
