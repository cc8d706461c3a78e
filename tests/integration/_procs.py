"""Helpers for tests that run `mlops` commands as real processes (imported by test modules)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from mlops.serving.training import train
from mlops.testing.cluster import free_port  # noqa: F401 - re-exported to the tests
from mlops.testing.waiting import wait_http

KEY = "integration-signing-key-0123456789-abcdefghij"


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_PREDICTION_ID")}
    out["MLOPS_PREDICTION_ID_KEY"] = KEY
    out.update(extra)
    return out


def train_model(folder: Path, name: str = "m", version: str = "v1", seed: int = 0):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(2, 300))
    frame = pd.DataFrame({"a": a, "b": b, "y": (a > b).astype(int)})
    return train(frame, "y", folder, model_name=name, version=version)


def start(args: list[str], environ: dict[str, str], health: str, timeout: float = 90.0) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "mlops", *args], env=environ, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_http(health, proc, timeout)
    except AssertionError:
        stop(proc)
        raise
    return proc


def serve(model_dir: Path, port: int, environ: dict[str, str], *extra: str) -> subprocess.Popen:
    sha = (model_dir / "model.sha256").read_text().split()[0]
    return start(["serve", "--model-uri", str(model_dir / "model.skops"), "--sha256", sha, "--host", "127.0.0.1",
                  "--port", str(port), "--log-level", "warning", *extra], environ,
                 f"http://127.0.0.1:{port}/health")


def stop(*procs: subprocess.Popen | None) -> None:
    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.terminate()
    for proc in procs:
        if proc is not None:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric_name = head.split("{", 1)[0]
        if metric_name != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total
