"""A sidecar started with ``arms_state`` writes its per-arm counts at a clean shutdown and the next
one resumes them under the same instance id (so the operator's accumulator sees one counter that
went on growing: nothing that arrived after its last scrape is lost, nothing is counted twice)."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from mlops.core.arm_counts import Accumulator, ArmRecorder, accumulate, table_from_list
from mlops.core.arm_tag import ArmTag, format_tag, tagged_nonce
from mlops.core.hll import user_hash
from mlops.core.prediction_id import sign_prediction_id
from mlops.serving.events import EVENTS_PATH
from mlops.serving.sidecar import create_sidecar_app

KEY = b"k" * 32


def _events(users: list[str], arm: str, start: int) -> dict:
    preds, feedback = [], []
    for i, user in enumerate(users):
        tag = format_tag(ArmTag("exp", 0, arm, user_hash(user)))
        pid = sign_prediction_id(KEY, "v2", "1", tagged_nonce(f"n{start + i}", tag))
        preds.append({"prediction_id": pid, "model_name": "m", "model_version": "v2", "timestamp": 1.0,
                      "latency_seconds": 0.01, "prediction": 1})
        feedback.append({"prediction_id": pid, "model_version": "v2", "prediction": "1", "true_label": i % 2,
                         "timestamp": 2.0})
    return {"predictions": preds, "feedback": feedback}


def _arms(client: TestClient) -> tuple[str, dict]:
    body = client.get("/v1/arms").json()
    return body["instance"], table_from_list(body["arms"])


def test_clean_restart_resumes_the_counts_under_the_same_instance(tmp_path):
    state = tmp_path / "arms-state.json"
    acc = Accumulator()
    with TestClient(create_sidecar_app(model_name="m", arms_state=str(state))) as client:
        assert client.post(EVENTS_PATH, json=_events(["a", "b", "a"], "treatment", 0)).status_code == 202
        instance, table = _arms(client)
        accumulate(acc, "src", instance, table)  # the operator's last scrape
        # more events after that scrape, then a clean shutdown before the next one
        assert client.post(EVENTS_PATH, json=_events(["c", "a"], "treatment", 10)).status_code == 202
        before = _arms(client)[1]
    assert state.exists()
    with TestClient(create_sidecar_app(model_name="m", arms_state=str(state))) as client:
        assert not state.exists()  # consumed: an unclean exit later must not resume it twice
        resumed_instance, resumed = _arms(client)
        assert resumed_instance == instance
        assert resumed == before
        assert not accumulate(acc, "src", resumed_instance, resumed)  # no reset seen
        # a returning user continues their own running sums (user-level variance stays exact)
        assert client.post(EVENTS_PATH, json=_events(["a"], "treatment", 20)).status_code == 202
        final = _arms(client)[1]
    counts = acc.totals[("exp", 0, "treatment")]
    assert counts.predictions == 5 and counts.labelled == 5
    reference = ArmRecorder()
    for i, user in enumerate(["a", "b", "a", "c", "a", "a"]):
        reference.prediction(("exp", 0, "treatment"), user_hash(user), error=False, latency_seconds=0.01)
        reference.outcome(("exp", 0, "treatment"), user_hash(user), correct=[0, 1, 0, 0, 1, 0][i] == 1)
    got, want = final[("exp", 0, "treatment")], reference.table[("exp", 0, "treatment")]
    assert got.sums["accuracy"] == want.sums["accuracy"] and got.sums["errorRate"] == want.sums["errorRate"]
    assert round(got.user_sketch.estimate()) == 3


def test_a_corrupt_state_file_starts_a_new_instance_from_zero(tmp_path, caplog):
    state = tmp_path / "arms-state.json"
    state.write_text(json.dumps({"instance": "old", "arms": {"table": [{"experiment": "e"}]}}))
    with TestClient(create_sidecar_app(model_name="m", arms_state=str(state))) as client:
        instance, table = _arms(client)
    assert instance != "old" and table == {}
    assert (tmp_path / "arms-state.json.corrupt").exists()
    assert "malformed arm state" in caplog.text


def test_without_arms_state_nothing_is_written(tmp_path):
    with TestClient(create_sidecar_app(model_name="m")) as client:
        assert client.post(EVENTS_PATH, json=_events(["a"], "control", 0)).status_code == 202
    assert list(tmp_path.iterdir()) == []
