"""Feedback on real processes (issue 11, findings 2 and 7).

Reproduced on main: in sidecar mode, `true_label: NaN` or an integer >= 2**64 on a genuine id made the
sidecar refuse the whole flush (422 three times) or the JSON encoder fail: 501 unrelated records
lost. One prediction id replayed 1,000 times added 1,000 labelled outcomes."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from _procs import env, free_port, metric, serve, start, stop, train_model

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _post_raw(url: str, text: str) -> httpx.Response:
    return httpx.post(url, content=text.encode(), headers={"content-type": "application/json"}, timeout=10)


def _wait_metric(url: str, name: str, want: float, timeout: float = 20.0, **labels: str) -> float:
    deadline = time.monotonic() + timeout
    while True:
        got = metric(httpx.get(url + "/metrics", timeout=10).text, name, **labels)
        if got >= want or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def test_bad_labels_are_refused_alone_and_no_good_record_is_lost(tmp_path):
    train_model(tmp_path / "model")
    environ = env(MLOPS_HOME=str(tmp_path / "home"))
    sidecar_port, port = free_port(), free_port()
    sidecar = server = None
    try:
        sidecar = start(["sidecar", "--port", str(sidecar_port), "--model-name", "m",
                         "--feedback-ledger", str(tmp_path / "sidecar-ledger.db")], environ,
                        f"http://127.0.0.1:{sidecar_port}/healthz")
        server = serve(tmp_path / "model", port, environ, "--sidecar-url", f"http://127.0.0.1:{sidecar_port}",
                       "--flush-interval", "5")
        base = f"http://127.0.0.1:{port}"
        ids = []
        with httpx.Client(timeout=10) as client:
            for i in range(501):
                r = client.post(base + "/predict", json={"features": {"a": float(i % 7), "b": 1.0}})
                assert r.status_code == 200
                ids.append(r.json()["prediction_id"])
            # The reproducing inputs, on genuine ids, inside the same flush interval as 501 predictions.
            nan = _post_raw(base + "/feedback", f'{{"prediction_id": "{ids[0]}", "true_label": NaN}}')
            assert nan.status_code == 422, nan.text
            assert nan.json()["field"] == "true_label" and "finite" in nan.json()["message"]
            huge = _post_raw(base + "/feedback", f'{{"prediction_id": "{ids[1]}", "true_label": {2**64}}}')
            assert huge.status_code == 422 and huge.json()["field"] == "true_label", huge.text
            unknown = client.post(base + "/feedback", json={"prediction_id": ids[2], "true_label": "banana"})
            assert unknown.status_code == 422 and "not a label the model knows" in unknown.json()["message"]
            # A mixed request: the good items are recorded, the bad ones named.
            mixed = _post_raw(base + "/feedback", json.dumps({"feedback": [
                {"prediction_id": ids[3], "true_label": 1},
                {"prediction_id": ids[4], "true_label": float("inf")},
                {"prediction_id": ids[5], "true_label": 0},
            ]}))
            assert mixed.status_code == 422, mixed.text
            body = mixed.json()
            assert body["accepted"] == 2 and body["field"] == "feedback.1.true_label"
            assert [r["field"] for r in body["rejected"]] == ["feedback.1.true_label"]
            good = client.post(base + "/feedback", json={"feedback": [
                {"prediction_id": pid, "true_label": 1} for pid in ids[6:106]]})
            assert good.status_code == 202 and good.json()["accepted"] == 100
        sidecar_url = f"http://127.0.0.1:{sidecar_port}"
        assert _wait_metric(sidecar_url, "mlops_predictions_total", 501) == 501
        assert _wait_metric(sidecar_url, "mlops_feedback_total", 102) == 102
        server_metrics = httpx.get(base + "/metrics", timeout=10).text
        assert metric(server_metrics, "mlops_monitoring_records_failed_total") == 0
        assert metric(server_metrics, "mlops_server_feedback_rejected_total") == 4

        # A bad event sent to the sidecar directly (another client) is dropped alone, too.
        batch = ('{"predictions": [], "feedback": ['
                 '{"prediction_id": "x1", "model_version": "v1", "prediction": "1", "true_label": NaN, '
                 '"timestamp": 1.0}, '
                 f'{{"prediction_id": "x2", "model_version": "v1", "prediction": "1", "true_label": {2**64}, '
                 '"timestamp": 1.0}, '
                 '{"prediction_id": "x3", "model_version": "v1", "prediction": "1", "true_label": 1, '
                 '"timestamp": 1.0}]}')
        answer = _post_raw(sidecar_url + "/v1/events", batch)
        assert answer.status_code == 202 and answer.json()["accepted"] == 1 and answer.json()["invalid"] == 2
        assert [d["field"] for d in answer.json()["details"]] == ["feedback.0.true_label", "feedback.1.true_label"]
    finally:
        stop(server, sidecar)


def test_one_id_replayed_1000_times_adds_one_labelled_outcome_also_after_a_restart(tmp_path):
    train_model(tmp_path / "model")
    environ = env(MLOPS_HOME=str(tmp_path / "home"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = serve(tmp_path / "model", port, environ, "--flush-interval", "0.2")
    try:
        with httpx.Client(timeout=10) as client:
            pid = client.post(base + "/predict", json={"features": {"a": 1.0, "b": 0.0}}).json()["prediction_id"]
            first = client.post(base + "/feedback", json={"prediction_id": pid, "true_label": 1})
            assert first.json() | {"experiment_outcomes": 0} == {
                "accepted": 1, "duplicates": 0, "experiment_outcomes": 0, "rejected": []}
            replays = client.post(base + "/feedback", json={"feedback": [
                {"prediction_id": pid, "true_label": 0}] * 999})
            assert replays.status_code == 202 and replays.json()["duplicates"] == 999
            status = client.get(base + "/monitoring/status", params={"hours": 1}).json()
            assert status["labelled_predictions"] == 1, status
        stop(server)
        server = serve(tmp_path / "model", port, environ, "--flush-interval", "0.2")
        with httpx.Client(timeout=10) as client:
            again = client.post(base + "/feedback", json={"prediction_id": pid, "true_label": 0})
            assert again.json()["duplicates"] == 1 and again.json()["accepted"] == 0
            status = client.get(base + "/monitoring/status", params={"hours": 1}).json()
            assert status["labelled_predictions"] == 1
            assert metric(client.get(base + "/metrics").text, "mlops_server_feedback_duplicates_total") == 1
    finally:
        stop(server)


def test_sidecar_dedupes_replays_durably(tmp_path):
    environ = env(MLOPS_HOME=str(tmp_path / "home"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["sidecar", "--port", str(port), "--model-name", "m", "--feedback-ledger", str(tmp_path / "ledger.db")]
    event = {"prediction_id": "p1.same", "model_version": "v1", "prediction": "1", "true_label": 1, "timestamp": 1.0}
    sidecar = start(args, environ, url + "/healthz")
    try:
        for _ in range(10):
            r = httpx.post(url + "/v1/events", json={"feedback": [event] * 100}, timeout=10)
            assert r.status_code == 202
        text = httpx.get(url + "/metrics", timeout=10).text
        assert metric(text, "mlops_feedback_total") == 1 and metric(text, "mlops_feedback_duplicates_total") == 999
        stop(sidecar)
        sidecar = start(args, environ, url + "/healthz")
        httpx.post(url + "/v1/events", json={"feedback": [event]}, timeout=10)
        text = httpx.get(url + "/metrics", timeout=10).text
        assert metric(text, "mlops_feedback_total") == 0 and metric(text, "mlops_feedback_duplicates_total") == 1
    finally:
        stop(sidecar)
