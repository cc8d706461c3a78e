"""Two real `mlops sidecar` processes: merged /metrics equal one sidecar that saw the union of traffic.

Events go over HTTP on 127.0.0.1 in the server's wire format; the numbers are read back the way the
operator's collector reads them (scrape /metrics, parse_metrics, merge_snapshots, summarize).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score

from mlops.core.profile import build_profile
from mlops.serving.sidecar_metrics import merge_snapshots, parse_metrics, summarize
from mlops.testing.cluster import free_port
from mlops.testing.waiting import wait_http

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def profile_file(tmp_path_factory):
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"Age": rng.normal(75, 8, 1_000), "MMSE": rng.integers(15, 31, 1_000).astype(float),
                          "M/F": rng.choice(["M", "F"], 1_000)})
    path = tmp_path_factory.mktemp("profile") / "profile.json"
    profile = build_profile(frame)
    path.write_text(json.dumps(profile.to_dict()))
    return path, profile


@pytest.fixture(scope="module")
def sidecars(profile_file):
    path, _ = profile_file
    procs, urls = [], []
    for _ in range(3):  # replica A, replica B, and one that receives the union
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlops", "sidecar", "--port", str(port), "--profile", str(path),
             "--model-name", "alz", "--baseline-accuracy", "0.8"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ},
        )
        procs.append(proc)
        urls.append(f"http://127.0.0.1:{port}")
    try:
        for proc, url in zip(procs, urls, strict=True):
            wait_http(url + "/healthz", proc)
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=15)


def _events(rng: np.random.Generator, n: int) -> tuple[list[dict], list[dict]]:
    predicted = rng.integers(0, 2, n)
    true = np.where(rng.random(n) < 0.75, predicted, 1 - predicted)
    predictions = []
    for i in range(n):
        features = {"Age": float(rng.normal(80, 8)), "MMSE": float(rng.integers(15, 31)), "M/F": str(rng.choice(["M", "F"]))}
        if i % 40 == 0:
            features["MMSE"] = None
        predictions.append({
            "prediction_id": f"id-{i}", "model_name": "alz", "model_version": "v2" if i % 3 == 0 else "v1",
            "timestamp": 1.7e9 + i, "latency_seconds": float(rng.gamma(2.0, 0.002)), "features": features,
            "prediction": int(predicted[i]), "confidence": 0.8, "error": bool(i % 97 == 0),
        })
    feedback = [
        {"prediction_id": p["prediction_id"], "model_version": p["model_version"], "prediction": str(p["prediction"]),
         "true_label": int(true[i]), "timestamp": 1.8e9 + i}
        for i, p in enumerate(predictions) if i % 2 == 0
    ]
    return predictions, feedback


def _post(url: str, predictions: list[dict], feedback: list[dict], batch: int = 150) -> int:
    accepted = 0
    with httpx.Client(timeout=30.0) as client:
        for start in range(0, max(len(predictions), len(feedback)), batch):
            body = {"predictions": predictions[start:start + batch], "feedback": feedback[start:start + batch]}
            response = client.post(url + "/v1/events", json=body)
            assert response.status_code == 202, response.text
            accepted += response.json()["accepted"]
    return accepted


def test_two_sidecars_merged_equal_the_union(sidecars, profile_file):
    _, profile = profile_file
    a_url, b_url, union_url = sidecars
    predictions, feedback = _events(np.random.default_rng(11), 2_400)
    to_a = {p["prediction_id"] for i, p in enumerate(predictions) if i % 5 < 2}
    part = lambda items, keep: [x for x in items if (x["prediction_id"] in to_a) == keep]  # noqa: E731
    assert _post(a_url, part(predictions, True), part(feedback, True)) + _post(
        b_url, part(predictions, False), part(feedback, False)) == len(predictions) + len(feedback)
    assert _post(union_url, predictions, feedback) == len(predictions) + len(feedback)

    scraped = [parse_metrics(httpx.get(url + "/metrics", timeout=10).text) for url in sidecars]
    merged = merge_snapshots(scraped[:2])
    union = scraped[2]
    assert merged.predictions == union.predictions == {"v1": 1600.0, "v2": 800.0}
    assert merged.confusion == union.confusion
    assert merged.feature_bins == union.feature_bins and merged.feature_missing == union.feature_missing
    assert merged.latency_buckets == union.latency_buckets

    got = summarize(merged, profile, baseline_accuracy=0.8)
    want = summarize(union, profile, baseline_accuracy=0.8)
    for key in ("predictions", "errors", "feedback", "accuracy", "precision", "recall", "f1", "latency_p50_ms",
                "latency_p95_ms", "error_rate", "drift_score", "drifted_features", "data_quality"):
        assert got[key] == pytest.approx(want[key]), key
    # And against the raw traffic: pooled accuracy/F1 of all feedback, exact counts.
    y_true = [f["true_label"] for f in feedback]
    y_pred = [int(f["prediction"]) for f in feedback]
    assert got["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert got["f1"] == pytest.approx(f1_score(y_true, y_pred, average="weighted"))
    assert got["errors"] == sum(p["error"] for p in predictions)
    assert got["drifted_features"] == ["Age"]  # traffic Age ~ N(80, 8) against a N(75, 8) baseline
    # The union sidecar's own /summary says the same as the collector's computation.
    own = httpx.get(union_url + "/summary", timeout=10).json()
    assert own["accuracy"] == pytest.approx(want["accuracy"]) and own["drifted_features"] == ["Age"]
    assert own["accuracy_drop"] == pytest.approx(0.8 - want["accuracy"])


def test_bad_event_batches_are_refused_with_a_reason(sidecars):
    url = sidecars[0] + "/v1/events"
    response = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422 and "invalid event batch" in response.json()["error"]
    # A bad event is refused alone and named; it never costs the batch (the good events are applied).
    response = httpx.post(url, json={"predictions": [{"prediction_id": "x"}]})
    assert response.status_code == 202 and response.json()["accepted"] == 0 and response.json()["invalid"] == 1
    assert any(d["field"].startswith("predictions.0") for d in response.json()["details"])
    response = httpx.post(url, content=b"{}", headers={"content-type": "text/plain"})
    assert response.status_code == 415
    metrics = httpx.get(sidecars[0] + "/metrics").text
    assert 'mlops_sidecar_rejected_batches_total{reason="invalid"} 1.0' in metrics


def test_cli_refuses_a_bad_profile_with_one_line(tmp_path):
    bad = tmp_path / "profile.json"
    bad.write_text('{"columns": 3}')
    result = subprocess.run([sys.executable, "-m", "mlops", "sidecar", "--profile", str(bad)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "not a baseline profile" in result.stderr and "Traceback" not in result.stderr
