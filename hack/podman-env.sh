# Sourced by hack/build-image.sh, hack/build-node.sh and the tests' podman helper (mlops/testing/image.py
# writes the same files): a podman set up the way these machines need it, with its own storage.
#
# - runc, not crun: crun refuses cgroup "hybrid" mode ("cgroups in hybrid mode not supported");
# - cgroupfs, not systemd: there is no systemd to talk to;
# - default_ulimits = []: podman's default ulimits fail with EPERM where root lacks CAP_SYS_RESOURCE;
# - storage under $MLOPS_CACHE/image, so images and build layers stay out of the repository and out of
#   /var/lib/containers, and `rm -rf $MLOPS_CACHE/image` forgets everything.
#
# Exports CONTAINERS_CONF, CONTAINERS_STORAGE_CONF and defines `pm` (podman with those settings).

MLOPS_CACHE="${MLOPS_CACHE:-$HOME/.cache/mlops-operator}"
IMAGE_CACHE="$MLOPS_CACHE/image"
mkdir -p "$IMAGE_CACHE/storage" "$IMAGE_CACHE/run"

cat >"$IMAGE_CACHE/containers.conf" <<EOF
[containers]
default_ulimits = []

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF

cat >"$IMAGE_CACHE/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$IMAGE_CACHE/storage"
runroot = "$IMAGE_CACHE/run"
EOF

export CONTAINERS_CONF="$IMAGE_CACHE/containers.conf"
export CONTAINERS_STORAGE_CONF="$IMAGE_CACHE/storage.conf"

pm() { podman --runtime runc --cgroup-manager=cgroupfs "$@"; }
