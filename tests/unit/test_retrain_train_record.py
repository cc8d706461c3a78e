"""`mlops train --termination-message-path`: the artifact record a RetrainPolicy's Job reports."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd

from mlops.cli import main
from mlops.core.retrain_loop import parse_artifact_record


def test_train_writes_the_artifact_record_the_operator_accepts(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 200))
    pd.DataFrame({"a": a, "b": b, "y": (a > b).astype(int)}).to_csv(tmp_path / "d.csv", index=False)
    monkeypatch.setenv("MLOPS_RUN_ID", "p-r3")
    record_path = tmp_path / "termination-log"
    assert main(["train", "--data", str(tmp_path / "d.csv"), "--label", "y", "--out", str(tmp_path / "out"),
                 "--termination-message-path", str(record_path)]) == 0
    text = record_path.read_text()
    record = json.loads(text)
    model = tmp_path / "out" / "model.skops"
    assert record["uri"] == model.resolve().as_uri()
    assert record["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert record["format"] == "skops" and record["runId"] == "p-r3" and 0.5 < record["metrics"]["accuracy"] <= 1
    assert len(text.encode()) <= 4096
    parsed, problem = parse_artifact_record(text, "p-r3")
    assert problem is None and parsed["sha256"] == record["sha256"]
    assert "belongs to run" in parse_artifact_record(text, "p-r4")[1]


def test_without_the_flag_nothing_is_written(tmp_path):
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(2, 100))
    pd.DataFrame({"a": a, "b": b, "y": (a > b).astype(int)}).to_csv(tmp_path / "d.csv", index=False)
    assert main(["train", "--data", str(tmp_path / "d.csv"), "--label", "y", "--out", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.csv", "out"]


def test_verify_audit_needs_a_model_or_a_policy(capsys):
    assert main(["retrain", "verify-audit"]) == 2
    assert "--policy" in capsys.readouterr().err
