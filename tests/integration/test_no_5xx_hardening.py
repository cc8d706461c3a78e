"""Hostile numbers and ids on real processes (issue 11, finding 4), and the A/B path's records.

Reproduced on main: a JSON integer above ~1e308 in a feature gave 500 on /predict, /predict/batch and
the A/B path; a non-ASCII signature in a prediction id gave 500 on the server."""

from __future__ import annotations

import signal

import httpx
import pytest
from _procs import env, free_port, serve, stop, train_model

from mlops.monitoring.ab_testing import ABTestConfig, ABTestingManager

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HUGE_INT = "1" + "0" * 400  # a JSON integer far above 1e308
HOSTILE = [HUGE_INT, "-" + HUGE_INT, "1e400", "-1e400", "9" * 4000]


@pytest.fixture()
def ab_server(tmp_path):
    train_model(tmp_path / "v1", version="v1", seed=0)
    train_model(tmp_path / "v2", version="v2", seed=1)
    home = tmp_path / "home"
    environ = env(MLOPS_HOME=str(home))
    manager = ABTestingManager(experiment_db=home / "ab_experiments.db")
    manager.create_experiment(ABTestConfig(experiment_name="exp", model_a_version="v1", model_b_version="v2",
                                           traffic_split=0.5, min_samples_per_variant=10))
    manager.start_experiment("exp")
    manager.close()
    port = free_port()
    sha2 = (tmp_path / "v2" / "model.sha256").read_text().split()[0]
    proc = serve(tmp_path / "v1", port, environ, "--version", "v1", "--model-uri",
                 str(tmp_path / "v2" / "model.skops"), "--sha256", sha2, "--version", "v2")
    yield {"url": f"http://127.0.0.1:{port}", "proc": proc, "home": home, "port": port, "tmp": tmp_path,
           "environ": environ}
    stop(proc)


def _post(url: str, text: str) -> httpx.Response:
    return httpx.post(url, content=text.encode(), headers={"content-type": "application/json"}, timeout=10)


def test_huge_numbers_are_422_naming_the_field_on_every_predict_path(ab_server):
    url = ab_server["url"]
    for number in HOSTILE:
        single = _post(url + "/predict", f'{{"features": {{"a": {number}, "b": 1.0}}}}')
        assert single.status_code == 422 and single.json()["field"] == "features.a", (number, single.text)
        batch = _post(url + "/predict/batch", f'{{"batch_features": [{{"a": 1, "b": 1}}, {{"a": 1, "b": {number}}}]}}')
        assert batch.status_code == 422 and batch.json()["field"] == "batch_features.1.b", (number, batch.text)
        ab = _post(url + "/predict", f'{{"features": {{"a": {number}, "b": 1.0}}, "user_id": "u1", '
                                     '"experiment_name": "exp"}')
        assert ab.status_code == 422 and ab.json()["field"] == "features.a", (number, ab.text)
    # Beyond the JSON parser's own limit (~4,300 digits) the body is refused as malformed: still 4xx.
    beyond = _post(url + "/predict", '{"features": {"a": ' + "9" * 5000 + ', "b": 1.0}}')
    assert beyond.status_code == 400 and beyond.json()["error"] == "malformed_json"
    # The server is unharmed.
    assert httpx.post(url + "/predict", json={"features": {"a": 1.0, "b": 0.0}}, timeout=10).status_code == 200


def test_non_ascii_signature_is_a_400_json_answer(ab_server):
    url = ab_server["url"]
    pid = httpx.post(url + "/predict", json={"features": {"a": 1.0, "b": 0.0}}, timeout=10).json()["prediction_id"]
    for forged in (pid[:-1] + "é", pid[:-2] + "\u2603\u2603", "p1.ü.ü"):
        r = httpx.post(url + "/feedback", json={"prediction_id": forged, "true_label": 1}, timeout=10)
        assert r.status_code == 400 and r.json()["error"] == "invalid_prediction_id", r.text


def test_ab_assignments_are_sticky_and_answered_ones_survive_sigterm(ab_server):
    url = ab_server["url"]
    users = [f"user-{i}" for i in range(200)]
    first = {}
    with httpx.Client(timeout=10) as client:
        for user in users:
            r = client.post(url + "/predict", json={"features": {"a": 0.5, "b": 0.1}, "user_id": user,
                                                    "experiment_name": "exp"})
            assert r.status_code == 200, r.text
            first[user] = r.json()["variant"]
        assert set(first.values()) == {"control", "treatment"}
    proc = ab_server["proc"]
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    manager = ABTestingManager(experiment_db=ab_server["home"] / "ab_experiments.db")
    counters = manager.store.counters("exp")
    assert counters["control"]["predictions"] + counters["treatment"]["predictions"] == 200
    assert counters["control"]["users"] == sum(v == "control" for v in first.values())
    manager.close()
    # Restarted: every user keeps their variant.
    port = ab_server["port"]
    tmp = ab_server["tmp"]
    sha2 = (tmp / "v2" / "model.sha256").read_text().split()[0]
    proc2 = serve(tmp / "v1", port, ab_server["environ"], "--version", "v1", "--model-uri",
                  str(tmp / "v2" / "model.skops"), "--sha256", sha2, "--version", "v2")
    try:
        with httpx.Client(timeout=10) as client:
            for user in users:
                r = client.post(url + "/predict", json={"features": {"a": 0.5, "b": 0.1}, "user_id": user,
                                                        "experiment_name": "exp"})
                assert r.json()["variant"] == first[user]
            # Feedback right after the answer joins the experiment's outcome (queued records are flushed first).
            r = client.post(url + "/predict", json={"features": {"a": 0.5, "b": 0.1}, "user_id": "fresh",
                                                    "experiment_name": "exp"})
            fb = client.post(url + "/feedback", json={"prediction_id": r.json()["prediction_id"], "true_label": 1})
            assert fb.status_code == 202 and fb.json()["experiment_outcomes"] == 1, fb.text
    finally:
        stop(proc2)
