"""mlops.testing.node's pure parts: the build script and Python agree on the binary folder, the host
snapshot diff reports exactly what changed, the pod network avoids the host's networks, and the
Dockerfile's demo models are found through $MLOPS_DEMO_MODELS without training."""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path

import pytest

from mlops.testing import node

REPO = Path(__file__).resolve().parents[2]


def test_build_script_and_python_agree_on_the_node_binary_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("MLOPS_CACHE", str(tmp_path))
    monkeypatch.delenv("MLOPS_NODE_BIN", raising=False)
    printed = subprocess.run(["bash", str(REPO / "hack" / "build-node.sh"), "--print"], capture_output=True,
                             text=True, check=True).stdout.strip()
    assert Path(printed) == node.node_bin_dir()


def test_snapshot_diff_names_what_changed_and_nothing_else():
    before = {"sysctls": {"a": "1", "b": "2"}, "links": ["eth0", "lo"], "mounts": ["/ ext4"]}
    after = {"sysctls": {"a": "1", "b": "3"}, "links": ["eth0", "lo", "mlk1"], "mounts": ["/ ext4"]}
    assert node.snapshot_diff(before, before) == {}
    assert node.snapshot_diff(before, after) == {
        "sysctls": {"b": {"before": "2", "after": "3"}},
        "links": {"added": ["mlk1"], "removed": []},
    }


def test_pod_network_avoids_networks_in_use(monkeypatch):
    used = [ipaddress.ip_network("10.77.0.0/16")]
    monkeypatch.setattr(node, "_used_networks", lambda: used)
    with pytest.raises(node.NodeError):
        node.pick_pod_network()
    used[:] = [ipaddress.ip_network("10.77.0.0/24"), ipaddress.ip_network("10.77.1.128/25")]
    assert str(node.pick_pod_network()) == "10.77.2.0/24"


def test_missing_prerequisites_name_the_command_that_provides_them(monkeypatch, tmp_path):
    monkeypatch.setenv("MLOPS_NODE_BIN", str(tmp_path))
    missing = node.missing_prerequisites()
    assert any("hack/build-node.sh" in m and "kubelet" in m for m in missing), missing


def test_prebuilt_demo_models_are_used_without_training(monkeypatch, tmp_path):
    from mlops.serving import demo

    built = demo.build_demo(tmp_path / "image-models")
    monkeypatch.setenv("MLOPS_DEMO_MODELS", str(built.folder))
    monkeypatch.setattr(demo, "build_demo", lambda *a, **k: pytest.fail("trained although prebuilt models exist"))
    found = demo.prebuilt_or_build(tmp_path / "elsewhere")
    assert found.model_uris == built.model_uris and found.baseline_csv == built.baseline_csv
    assert not (tmp_path / "elsewhere").exists()
    monkeypatch.setenv("MLOPS_DEMO_MODELS", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="lacks the demo artifacts"):
        demo.prebuilt_or_build(tmp_path / "elsewhere")
