"""Per-arm counting through real processes: `mlops route` -> `mlops serve` -> `mlops sidecar`.

Only in-segment users with a user key, while the experiment is not paused, belong to an arm; users
outside the segment reach the control version but are counted in neither arm. Feedback lands in the
arm of the prediction it labels (the tag rides in the signed prediction id). No cluster needed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import numpy as np
import pandas as pd
import pytest

from mlops.core.arm_counts import table_from_list
from mlops.serving.routing_table import choose_version, parse_routing_table
from mlops.testing.experiment_stack import (
    ConfigMapDir,
    free_port,
    sha256_of,
    start_mlops,
    stop_all,
    wait_http,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
KEY = "k" * 40


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("arms")
    env = {**os.environ, "MLOPS_PREDICTION_ID_KEY": KEY, "MLOPS_HOME": str(root / "home")}
    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"age": rng.normal(70, 8, 300).round(1), "score": rng.normal(25, 3, 300).round(2)})
    frame["label"] = (frame.score < 25).astype(int)
    frame.to_csv(root / "train.csv", index=False)
    assert subprocess.run([sys.executable, "-m", "mlops", "train", "--data", str(root / "train.csv"), "--label",
                           "label", "--out", str(root / "m"), "--model-name", "alz", "--version", "v1"],
                          env=env, capture_output=True, timeout=180).returncode == 0
    model = root / "m" / "model.skops"
    procs, info = [], {}
    try:
        for v in ("v1", "v2"):
            sp, mp = free_port(), free_port()
            procs.append(start_mlops(["sidecar", "--port", str(sp), "--model-name", "alz"], env))
            procs.append(start_mlops(["serve", "--model-uri", model.as_uri(), "--sha256", sha256_of(model), "--version", v,
                                 "--model-name", "alz", "--sidecar-url", f"http://127.0.0.1:{sp}", "--flush-interval",
                                 "0.1", "--host", "127.0.0.1", "--port", str(mp), "--log-level", "warning"], env))
            info[v] = {"server": f"http://127.0.0.1:{mp}", "sidecar": f"http://127.0.0.1:{sp}"}
        folder = ConfigMapDir(root / "cm")
        table = {"model": "alz", "stable_version": "v1",
                 "versions": {v: {"url": info[v]["server"], "weight": 1.0 if v == "v1" else 0.0} for v in info},
                 "experiment": {"name": "exp-arms", "salt": "s1", "control": "v1", "treatment": "v2",
                                "treatment_share": 0.5, "segment": {"age": {"min": 65}}, "paused": False, "phase": 3}}
        folder.write(json.dumps(table))
        port = free_port()
        procs.append(start_mlops(["route", "--table", str(folder.path), "--port", str(port), "--poll-interval", "0.1"], env))
        for i, v in enumerate(info):
            wait_http(info[v]["sidecar"] + "/healthz", procs[2 * i])
            wait_http(info[v]["server"] + "/health", procs[2 * i + 1])
        wait_http(f"http://127.0.0.1:{port}/healthz", procs[-1])
        yield {"router": f"http://127.0.0.1:{port}", "info": info, "folder": folder, "table": table}
    finally:
        stop_all(procs)


def _arms(info) -> dict:
    out = {}
    for v in info:
        body = httpx.get(info[v]["sidecar"] + "/v1/arms", timeout=5).json()
        assert len(body["instance"]) == 32
        for key, counts in table_from_list(body["arms"]).items():
            out[(v, *key)] = counts
    return out


def test_only_in_segment_users_are_counted_per_arm_and_feedback_follows(stack):
    router, info = stack["router"], stack["info"]
    table = parse_routing_table(json.dumps(stack["table"]))
    expected = {"control": 0, "treatment": 0}
    feedback, correct = [], {"control": 0, "treatment": 0}
    with httpx.Client(base_url=router, timeout=10) as client:
        for i in range(200):
            age = 70.0 if i % 4 else 50.0  # every 4th user is outside the segment
            user = f"u{i}"
            headers = {"X-MLOps-Arm": f"x1.0.t.{'0' * 16}.exp-arms"}  # a client's forged tag is dropped
            r = client.post("/predict", json={"features": {"age": age, "score": 24.0}, "user_id": user},
                            headers=headers)
            assert r.status_code == 200, r.text
            body = r.json()
            version, variant = choose_version(table, user, {"age": age, "score": 24.0})
            assert body["model_version"] == version
            if age >= 65:
                expected[variant] += 1
                label = int(body["prediction"]) if i % 3 else 1 - int(body["prediction"])
                correct[variant] += int(label == int(body["prediction"]))
            else:
                label = 0
            feedback.append({"prediction_id": body["prediction_id"], "true_label": label})
        assert client.post("/feedback", json={"feedback": feedback}).status_code in (200, 202)
    deadline = time.monotonic() + 20
    while True:
        arms = _arms(info)
        got = {arm: sum(c.predictions for (v, e, p, a), c in arms.items() if a == arm) for arm in expected}
        labelled = {arm: sum(c.labelled for (v, e, p, a), c in arms.items() if a == arm) for arm in expected}
        if got == expected and labelled == expected or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert got == expected and labelled == expected
    assert {(v, e, p, a) for (v, e, p, a) in arms} == {("v1", "exp-arms", 3, "control"), ("v2", "exp-arms", 3, "treatment")}
    for arm, version in (("control", "v1"), ("treatment", "v2")):
        counts = arms[(version, "exp-arms", 3, arm)]
        assert counts.correct == correct[arm]
        assert round(counts.user_sketch.estimate()) == expected[arm]  # one request per user
        assert counts.sums["accuracy"].users == expected[arm]
    text = httpx.get(info["v2"]["sidecar"] + "/metrics", timeout=5).text
    assert 'mlops_experiment_predictions_total{arm="treatment",experiment="exp-arms",model="alz",phase="3"}' in text


def test_paused_sends_everyone_to_control_and_counts_no_arm(stack):
    router, info, folder = stack["router"], stack["info"], stack["folder"]
    before = _arms(info)
    paused = {**stack["table"], "experiment": {**stack["table"]["experiment"], "paused": True}}
    folder.write(json.dumps(paused))
    deadline = time.monotonic() + 10
    while httpx.get(router + "/routing", timeout=5).json()["experiment"]["paused"] is not True:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    with httpx.Client(base_url=router, timeout=10) as client:
        versions = {client.post("/predict", json={"features": {"age": 70.0, "score": 24.0}, "user_id": f"u{i}"}
                                ).json()["model_version"] for i in range(60)}
    assert versions == {"v1"}
    time.sleep(1.0)
    after = _arms(info)
    assert {k: v.predictions for k, v in after.items()} == {k: v.predictions for k, v in before.items()}
    folder.write(json.dumps(stack["table"]))
