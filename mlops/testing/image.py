"""The project's container image for tests: podman set up the way these machines need it, and the
image ``make image`` builds.

Why it exists: the image tests (tests/e2e) and the real node (``mlops.testing.node``) run podman
with exactly the settings ``hack/podman-env.sh`` gives ``make image`` (runc, cgroupfs, no default
ulimits, storage under ``$MLOPS_CACHE/image``), so they see the image the build produced.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

IMAGE = os.environ.get("MLOPS_IMAGE", "localhost/mlops-operator:dev")
REPO = Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    return Path(os.environ.get("MLOPS_CACHE") or Path.home() / ".cache" / "mlops-operator")


def _write_config() -> dict[str, str]:
    root = cache_dir() / "image"
    (root / "storage").mkdir(parents=True, exist_ok=True)
    (root / "run").mkdir(parents=True, exist_ok=True)
    containers = root / "containers.conf"
    want = ('[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\n'
            'cgroup_manager = "cgroupfs"\nevents_logger = "file"\n')
    if not containers.exists() or containers.read_text() != want:
        containers.write_text(want)
    storage = root / "storage.conf"
    want = (f'[storage]\ndriver = "overlay"\ngraphroot = "{root / "storage"}"\n'
            f'runroot = "{root / "run"}"\n')
    if not storage.exists() or storage.read_text() != want:
        storage.write_text(want)
    return {"CONTAINERS_CONF": str(containers), "CONTAINERS_STORAGE_CONF": str(storage)}


def podman_command() -> list[str]:
    """argv prefix running podman with the project's configuration (``env ... podman --runtime runc ...``)."""
    podman = shutil.which("podman")
    if not podman:
        raise FileNotFoundError("podman not found: bash hack/host-packages.sh (apt-get install podman runc)")
    env = _write_config()
    return ["env", *(f"{k}={v}" for k, v in env.items()), podman, "--runtime", "runc",
            "--cgroup-manager=cgroupfs"]


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*podman_command(), *args], capture_output=True, text=True, timeout=timeout,
                          check=check)


def image_missing_reason(image: str = IMAGE) -> str | None:
    """None when podman runs and ``image`` is built; otherwise why not and how to fix it."""
    if not shutil.which("podman") or not shutil.which("runc"):
        return "podman/runc not installed: bash hack/host-packages.sh"
    if os.geteuid() != 0:
        return "the image tests run rootful podman (root needed)"
    proc = podman("image", "exists", image, check=False)
    if proc.returncode != 0:
        return f"image {image} not built: make image (bash hack/build-image.sh)"
    return None
