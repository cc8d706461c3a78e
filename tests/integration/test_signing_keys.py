"""The prediction-id key in multi-process setups (issue 11, finding 1), on real processes.

Reproduced on main: `mlops serve --workers 2` without MLOPS_PREDICTION_ID_KEY rejected 29 of 40
genuine ids as forged (each worker had its own random key)."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest
from _procs import free_port, serve, train_model

from mlops.core.prediction_id import sign_prediction_id

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _start(tmp_path, *extra: str) -> tuple[subprocess.Popen, int]:
    """`mlops serve` on a fresh model, with the environment as the test left it."""
    train_model(tmp_path / "model", name="key-model")
    port = free_port()
    return serve(tmp_path / "model", port, {**os.environ}, *extra), port


def _without_keys() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_PREDICTION_ID")}


def test_two_workers_without_a_key_accept_every_genuine_id(tmp_path, monkeypatch):
    for name in list(os.environ):
        if name.startswith("MLOPS_PREDICTION_ID"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    proc, port = _start(tmp_path, "--workers", "2")
    try:
        ids = []
        for i in range(40):  # a fresh connection per request, so both workers answer
            r = httpx.post(f"http://127.0.0.1:{port}/predict", json={"features": {"a": float(i % 5), "b": 1.0}},
                           timeout=10, headers={"connection": "close"})
            assert r.status_code == 200, r.text
            ids.append(r.json()["prediction_id"])
        accepted = 0
        for pid in ids:
            r = httpx.post(f"http://127.0.0.1:{port}/feedback", json={"prediction_id": pid, "true_label": 1},
                           timeout=10, headers={"connection": "close"})
            accepted += r.status_code == 202
        assert accepted == 40
        forged = sign_prediction_id(b"x" * 40, "v1", "1", "n")
        for _ in range(10):
            r = httpx.post(f"http://127.0.0.1:{port}/feedback", json={"prediction_id": forged, "true_label": 1},
                           timeout=10, headers={"connection": "close"})
            assert r.status_code == 400, r.text
    finally:
        proc.terminate()
        proc.wait(60)


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlops", *args], env=env, capture_output=True, text=True, timeout=60)


def test_router_without_a_key_is_a_one_line_start_up_error(tmp_path):
    table = tmp_path / "routing.json"
    table.write_text('{"model": "m", "stable_version": "v1", "versions": {"v1": {"url": "http://127.0.0.1:9"}}}')
    result = _run(["route", "--table", str(table), "--port", "18099"], _without_keys())
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "MLOPS_PREDICTION_ID_KEY_FILE" in lines[0], result.stderr


@pytest.mark.parametrize("how", ["env", "file", "missing-file"])
def test_short_or_missing_key_is_refused_at_start(tmp_path, how):
    env = _without_keys()
    if how == "env":
        env["MLOPS_PREDICTION_ID_KEY"] = "short"
    elif how == "file":
        (tmp_path / "key").write_text("too-short\n")
        env["MLOPS_PREDICTION_ID_KEY_FILE"] = str(tmp_path / "key")
    else:
        env["MLOPS_PREDICTION_ID_KEY_FILE"] = str(tmp_path / "nope")
    result = _run(["serve", "--model-uri", str(tmp_path / "m.skops"), "--port", "18098"], env)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "MLOPS_PREDICTION_ID_KEY" in lines[0], result.stderr
