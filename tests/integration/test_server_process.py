"""`mlops serve` as a real process: SIGTERM under load loses no recorded prediction, and
schemathesis finds no 5xx in the OpenAPI-described API."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys

import httpx
import pytest
from _procs import free_port, serve, train_model

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _start(tmp_path, *extra: str) -> tuple[subprocess.Popen, int]:
    """`mlops serve` on a fresh model, with the environment as the test left it."""
    train_model(tmp_path / "model", name="sigterm-model")
    port = free_port()
    return serve(tmp_path / "model", port, {**os.environ}, *extra), port


async def _load(port: int, stop_after: float, proc: subprocess.Popen) -> int:
    """16 concurrent clients; SIGTERM is sent mid-load; returns how many predictions got a 200."""
    ok = 0
    url = f"http://127.0.0.1:{port}/predict"

    async def worker(client: httpx.AsyncClient, i: int) -> None:
        nonlocal ok
        while True:
            try:
                r = await client.post(url, json={"features": {"a": float(i % 7), "b": 1.0}})
            except httpx.HTTPError:
                return
            if r.status_code == 200:
                ok += 1

    async def terminate() -> None:
        await asyncio.sleep(stop_after)
        proc.send_signal(signal.SIGTERM)

    async with httpx.AsyncClient(timeout=10) as client:
        await asyncio.gather(terminate(), *(worker(client, i) for i in range(16)))
    return ok


def test_sigterm_under_load_loses_no_recorded_prediction(tmp_path):
    # A long flush interval keeps thousands of records queued at SIGTERM: only draining saves them.
    proc, port = _start(tmp_path, "--flush-interval", "30")
    try:
        served = asyncio.run(_load(port, 2.0, proc))
        assert proc.wait(60) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert served > 200
    from mlops.monitoring.production_monitor import create_production_monitor

    recorded = create_production_monitor("sigterm-model").get_monitoring_summary(hours=1)["total_predictions"]
    assert recorded == served


@pytest.mark.skipif(shutil.which("schemathesis") is None, reason="schemathesis CLI not installed (dev extra)")
def test_schemathesis_finds_no_server_errors(tmp_path):
    proc, port = _start(tmp_path)
    try:
        result = subprocess.run(
            ["schemathesis", "run", f"http://127.0.0.1:{port}/openapi.json", "--checks", "not_a_server_error",
             "--max-examples", "150", "--seed", "1", "--no-color"],
            capture_output=True, text=True, timeout=500,
        )
    finally:
        proc.terminate()
        proc.wait(30)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    generated = _generated_requests(output)
    assert generated >= 1000, output[-2000:]


def _generated_requests(output: str) -> int:
    import re

    counts = [int(n) for n in re.findall(r"(\d+) generated", output)]
    return sum(counts)


def test_server_sends_events_to_a_real_sidecar(tmp_path):
    """In a pod: `mlops serve --sidecar-url` ships predictions and feedback to `mlops sidecar`."""
    sidecar_port = free_port()
    sidecar = subprocess.Popen(
        [sys.executable, "-m", "mlops", "sidecar", "--host", "127.0.0.1", "--port", str(sidecar_port),
         "--model-name", "sigterm-model"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    proc = None
    try:
        proc, port = _start(tmp_path, "--sidecar-url", f"http://127.0.0.1:{sidecar_port}",
                            "--flush-interval", "0.2")
        ids = [httpx.post(f"http://127.0.0.1:{port}/predict", json={"features": {"a": 1.0, "b": 0.0}},
                          timeout=10).json()["prediction_id"] for _ in range(5)]
        fb = httpx.post(f"http://127.0.0.1:{port}/feedback", json={"prediction_id": ids[0], "true_label": 1},
                        timeout=10)
        assert fb.status_code == 202
        proc.terminate()
        proc.wait(30)
        metrics = httpx.get(f"http://127.0.0.1:{sidecar_port}/metrics", timeout=10).text
        totals = [line for line in metrics.splitlines() if line.startswith("mlops_predictions_total")]
        assert sum(float(line.rsplit(" ", 1)[1]) for line in totals) == 5, metrics[:2000]
        feedback = [line for line in metrics.splitlines() if line.startswith("mlops_feedback_total")]
        assert sum(float(line.rsplit(" ", 1)[1]) for line in feedback) == 1
    finally:
        for p in (proc, sidecar):
            if p is not None and p.poll() is None:
                p.terminate()
                p.wait(30)


def test_two_workers_serve_and_drain(tmp_path, monkeypatch):
    """`mlops serve --workers 2` (the uvicorn factory path): both worker processes answer, and on
    SIGTERM each drains its monitoring queue into the shared SQLite store."""
    from mlops.core.prediction_id import verify_prediction_id

    monkeypatch.setenv("MLOPS_PREDICTION_ID_KEY", "two-workers-key-0123456789abcdef-01234")
    proc, port = _start(tmp_path, "--workers", "2", "--flush-interval", "30")
    served: list[str] = []
    try:
        for i in range(60):  # a fresh connection per request, so the kernel hands them to both workers
            r = httpx.post(f"http://127.0.0.1:{port}/predict", json={"features": {"a": float(i % 5), "b": 1.0}},
                           timeout=10, headers={"connection": "close"})
            assert r.status_code == 200, r.text
            served.append(r.json()["prediction_id"])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
    key = b"two-workers-key-0123456789abcdef-01234"
    workers = {verify_prediction_id(key, pid).nonce[:8] for pid in served}  # per-process id prefix
    assert len(workers) == 2
    from mlops.monitoring.production_monitor import create_production_monitor

    recorded = create_production_monitor("sigterm-model").get_monitoring_summary(hours=1)["total_predictions"]
    assert recorded == len(served)
