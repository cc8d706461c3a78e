#!/usr/bin/env bash
# The Debian packages the image build and the real-node cluster need, installed when missing (root
# with apt-get only; otherwise print what is missing). Called by .ci/run and `make host-packages`.
#   podman, runc          build and run the image (crun refuses cgroup hybrid mode here)
#   mmdebstrap            a base image from Debian packages (no registry reachable)
#   containernetworking-plugins   CNI bridge/host-local/loopback for the real node's pods
#   iptables, conntrack   kube-proxy's Service rules
#   wrk, prometheus       benchmarks and the Prometheus-backed collector tests
set -euo pipefail
PACKAGES=(podman runc mmdebstrap containernetworking-plugins iptables conntrack wrk prometheus)
need=()
for pkg in "${PACKAGES[@]}"; do dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg"); done
[ ${#need[@]} -eq 0 ] && { echo "host packages: all present"; exit 0; }
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
else
  echo "missing Debian packages (install them as root): ${need[*]}" >&2
  exit 1
fi
