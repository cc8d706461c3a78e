"""Unsafe or edited artifacts refused by `mlops serve` as a real process (issue 11, findings 5 and 6):
exit status 2 and one line, never a model that runs code or reads its columns in the wrong order."""

from __future__ import annotations

import json
import subprocess
import sys

import joblib
import numpy as np
import pytest
import skops.io as sio
from _procs import env, train_model
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import FunctionTransformer

from mlops.serving.model_store import sha256_hex

pytestmark = [pytest.mark.integration]


def _serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlops", "serve", "--port", "18097", *args], env=env(),
                          capture_output=True, text=True, timeout=120)


def _one_line(result: subprocess.CompletedProcess, needle: str) -> None:
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr


def test_swapped_schema_columns_are_refused(tmp_path):
    meta = train_model(tmp_path / "m")
    doc = json.loads((tmp_path / "m" / "metadata.json").read_text())
    features = doc["feature_schema"]["features"]
    features[0], features[1] = features[1], features[0]
    (tmp_path / "m" / "metadata.json").write_text(json.dumps(doc))
    _one_line(_serve("--model-uri", str(tmp_path / "m" / "model.skops"), "--sha256", meta.sha256),
              "does not match the schema inside the verified model")
    # Unpinned, with the digest rewritten in metadata.json after replacing the model: refused too.
    other = train_model(tmp_path / "other", seed=5)
    (tmp_path / "m" / "model.skops").write_bytes((tmp_path / "other" / "model.skops").read_bytes())
    doc["sha256"] = other.sha256
    (tmp_path / "m" / "metadata.json").write_text(json.dumps(doc))
    _one_line(_serve("--model-uri", str(tmp_path / "m" / "model.skops")), "disagree")


def test_joblib_needs_allow_unsafe_formats(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 2))
    path = tmp_path / "model.joblib"
    joblib.dump(LogisticRegression().fit(x, (x[:, 0] > 0).astype(int)), path)
    _one_line(_serve("--model-uri", str(path), "--format", "joblib", "--sha256", sha256_hex(path.read_bytes())),
              "--allow-unsafe-formats")


def test_function_transformer_exec_skops_file_is_refused(tmp_path):
    path = tmp_path / "model.skops"
    sio.dump(FunctionTransformer(func=exec, inverse_func=eval), path)
    _one_line(_serve("--model-uri", str(path), "--sha256", sha256_hex(path.read_bytes())), "builtins.exec")
