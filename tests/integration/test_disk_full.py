"""A full or read-only $MLOPS_HOME on a real process (issue 11, finding 7), with a 4 MiB tmpfs.

Reproduced on main: on a full disk /predict kept answering while every monitoring record was lost
without retry, /health stayed healthy and /monitoring/status said 0; the A/B path answered 500; an
unwritable $MLOPS_HOME died with a traceback."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time

import httpx
import pytest
from _procs import env, free_port, metric, serve, stop, train_model

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _mount(path, *options: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(("size=4m", *options)), "tmpfs", str(path)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")


def _umount(path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _fill(folder) -> None:
    try:
        with open(folder / "filler", "wb") as handle:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
    except OSError as error:  # ENOSPC, at open() too when the tmpfs is already full: the state we want
        if error.errno != errno.ENOSPC:
            raise
    # Small files too, so not even a page is left.
    for i in range(10_000):
        try:
            (folder / f"f{i}").write_bytes(b"x" * 512)
        except OSError:
            break


def _health(base: str) -> dict:
    return httpx.get(base + "/health", timeout=10).json()


def test_full_disk_keeps_serving_buffers_counts_and_recovers(tmp_path):
    home = tmp_path / "home"
    _mount(home)
    server = None
    try:
        train_model(tmp_path / "model")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = serve(tmp_path / "model", port, env(MLOPS_HOME=str(home)), "--flush-interval", "0.2")
        with httpx.Client(timeout=10) as client:
            for i in range(50):
                assert client.post(base + "/predict", json={"features": {"a": float(i), "b": 0.0}}).status_code == 200
            time.sleep(1.0)
            _fill(home)
            ids = []
            for i in range(1500):
                r = client.post(base + "/predict", json={"features": {"a": float(i % 9), "b": 1.0}})
                assert r.status_code == 200, r.text
                ids.append(r.json()["prediction_id"])
            deadline = time.monotonic() + 30
            while _health(base)["status"] != "degraded" and time.monotonic() < deadline:
                time.sleep(0.3)
            health = _health(base)
            assert health["status"] == "degraded", health
            assert any("full" in reason for reason in health["degraded_reasons"]), health
            fb = client.post(base + "/feedback", json={"prediction_id": ids[0], "true_label": 1})
            assert fb.status_code == 202, fb.text
            text = client.get(base + "/metrics").text
            assert metric(text, "mlops_monitoring_retry_buffered") > 0
            assert metric(text, "mlops_server_degraded") == 1
            status = client.get(base + "/monitoring/status", params={"hours": 1})
            assert status.status_code == 200 and status.json()["recording"]["retry_buffered"] > 0

            for child in home.iterdir():  # space comes back: the buffered records are written
                if child.name.startswith(("filler", "f")) and child.is_file() and not child.suffix:
                    child.unlink()
            # The feedback ledger recovers with its next write.
            fb = client.post(base + "/feedback", json={"prediction_id": ids[1], "true_label": 1})
            assert fb.status_code == 202, fb.text
            deadline = time.monotonic() + 30
            while _health(base)["status"] != "healthy" and time.monotonic() < deadline:
                time.sleep(0.3)
            health = _health(base)
            usage = subprocess.run(["du", "-ab", str(home)], capture_output=True, text=True).stdout
            assert health["status"] == "healthy", (health, usage)
            status = client.get(base + "/monitoring/status", params={"hours": 1}).json()
            assert status["recording"]["failed"] == 0 and status["recording"]["retry_buffered"] == 0
            assert status["total_predictions"] == 1550, status
        stop(server)
        assert server.returncode in (0, -15)
        assert "Traceback" not in server.stdout.read()
    finally:
        stop(server)
        _umount(home)


def test_read_only_home_at_start_is_exit_2_with_one_line(tmp_path):
    home = tmp_path / "home"
    _mount(home, "ro")
    try:
        train_model(tmp_path / "model")
        sha = (tmp_path / "model" / "model.sha256").read_text().split()[0]
        result = subprocess.run(
            [sys.executable, "-m", "mlops", "serve", "--model-uri", str(tmp_path / "model" / "model.skops"),
             "--sha256", sha, "--port", str(free_port())],
            env=env(MLOPS_HOME=str(home / "state")), capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "MLOPS_HOME" in lines[0] and "not writable" in lines[0], result.stderr
    finally:
        _umount(home)
