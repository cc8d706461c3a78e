"""Sidecar counts: exposition round trip, exact merging across replicas, and the summary numbers
checked against direct computations on the raw traffic (sklearn, numpy, the quality/drift engines)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from mlops.core.drift import detect_drift_from_counts
from mlops.core.profile import build_profile
from mlops.core.quality import assess_data_quality
from mlops.serving.sidecar_metrics import (
    LATENCY_BUCKETS,
    SidecarRecorder,
    SidecarSnapshot,
    classification_from_confusion,
    counts_for_profile,
    histogram_quantile,
    label_str,
    merge_snapshots,
    parse_metrics,
    profile_binner,
    render_metrics,
    summarize,
)


def _baseline(rng: np.random.Generator, n: int = 2_000) -> pd.DataFrame:
    return pd.DataFrame({
        "Age": rng.normal(75, 8, n),
        "MMSE": rng.integers(15, 31, n).astype(float),
        "nWBV": rng.normal(0.73, 0.04, n),
        "region": rng.choice(["north", "south", "east"], n, p=[0.5, 0.3, 0.2]),
    })


def _traffic(rng: np.random.Generator, n: int, *, shift: float = 0.0) -> tuple[list[dict], list[dict], pd.DataFrame]:
    frame = pd.DataFrame({
        "Age": rng.normal(75 + shift, 8, n),
        "MMSE": rng.integers(15, 31, n).astype(float),
        "nWBV": rng.normal(0.73, 0.04, n),
        "region": rng.choice(["north", "south", "east", "west"], n, p=[0.45, 0.3, 0.2, 0.05]),
    })
    rows = frame.to_dict("records")
    # Some dirty cells: missing values, a wrong type, an absent key.
    for i in rng.choice(n, size=n // 50, replace=False):
        rows[i]["nWBV"] = None
    rows[3]["MMSE"] = "n/a"
    rows[5].pop("region")
    versions = rng.choice(["v1", "v2"], n, p=[0.7, 0.3])
    latency = rng.lognormal(np.log(0.004), 0.6, n)
    predicted = rng.integers(0, 3, n)
    true = np.where(rng.random(n) < 0.8, predicted, rng.integers(0, 3, n))
    errors = rng.random(n) < 0.02
    predictions = [
        {"prediction_id": f"p{i}", "model_name": "alz", "model_version": str(versions[i]), "timestamp": 1.0e9 + i,
         "latency_seconds": float(latency[i]), "features": rows[i], "prediction": int(predicted[i]),
         "confidence": 0.9, "error": bool(errors[i])}
        for i in range(n)
    ]
    labelled = rng.random(n) < 0.6
    feedback = [
        {"prediction_id": f"p{i}", "model_version": str(versions[i]), "prediction": str(predicted[i]),
         "true_label": int(true[i]), "timestamp": 2.0e9 + i}
        for i in range(n) if labelled[i]
    ]
    return predictions, feedback, pd.DataFrame(rows)


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(42)
    profile = build_profile(_baseline(rng))
    predictions, feedback, frame = _traffic(rng, 3_000, shift=4.0)
    return profile, predictions, feedback, frame


def _recorder(profile, predictions, feedback, chunk: int = 97) -> SidecarRecorder:
    recorder = SidecarRecorder("alz", profile_binner(profile))
    for start in range(0, len(predictions), chunk):  # the server ships batches of varying size
        recorder.record_predictions(predictions[start:start + chunk])
    recorder.record_feedback(feedback)
    return recorder


def test_exposition_round_trips_exactly(setup):
    profile, predictions, feedback, _ = setup
    snapshot = _recorder(profile, predictions, feedback).snapshot()
    text = render_metrics(snapshot)
    assert "mlops_feature_bin_total" in text and "mlops_prediction_latency_seconds_bucket" in text
    assert parse_metrics(text) == snapshot


def test_two_sidecars_merged_equal_one_sidecar_on_the_union(setup):
    profile, predictions, feedback, _ = setup
    rng = np.random.default_rng(1)
    to_a = rng.random(len(predictions)) < 0.4
    ids_a = {p["prediction_id"] for p, a in zip(predictions, to_a, strict=True) if a}
    a = _recorder(profile, [p for p, x in zip(predictions, to_a, strict=True) if x],
                  [f for f in feedback if f["prediction_id"] in ids_a], chunk=31)
    b = _recorder(profile, [p for p, x in zip(predictions, to_a, strict=True) if not x],
                  [f for f in feedback if f["prediction_id"] not in ids_a], chunk=200)
    union = _recorder(profile, predictions, feedback)

    merged = merge_snapshots([parse_metrics(render_metrics(a.snapshot())), parse_metrics(render_metrics(b.snapshot()))])
    expected = union.snapshot()
    assert merged.predictions == expected.predictions
    assert merged.confusion == expected.confusion
    assert merged.feature_bins == expected.feature_bins
    assert merged.latency_buckets == expected.latency_buckets
    merged_summary = summarize(merged, profile, baseline_accuracy=0.85)
    union_summary = summarize(expected, profile, baseline_accuracy=0.85)
    assert merged_summary.keys() == union_summary.keys()
    for key, value in union_summary.items():
        if isinstance(value, float):
            assert merged_summary[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
        elif key == "versions":  # latency sums differ only by float summation order
            assert value.keys() == merged_summary[key].keys()
            for version, block in value.items():
                assert merged_summary[key][version] == pytest.approx(block, rel=1e-12), version
        else:
            assert merged_summary[key] == value, key


def test_summary_matches_direct_computation_on_the_raw_traffic(setup):
    profile, predictions, feedback, frame = setup
    summary = summarize(_recorder(profile, predictions, feedback).snapshot(), profile, baseline_accuracy=0.85)

    assert summary["predictions"] == len(predictions)
    assert summary["errors"] == sum(p["error"] for p in predictions)
    assert summary["error_rate"] == pytest.approx(summary["errors"] / len(predictions))
    assert summary["feedback"] == len(feedback)
    y_true = [f["true_label"] for f in feedback]
    y_pred = [int(f["prediction"]) for f in feedback]
    assert summary["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    for key, fn in (("precision", precision_score), ("recall", recall_score), ("f1", f1_score)):
        assert summary[key] == pytest.approx(fn(y_true, y_pred, average="weighted", zero_division=0)), key
    assert summary["accuracy_drop"] == pytest.approx(0.85 - summary["accuracy"])

    # Latency quantiles interpolate inside the fixed bucket that holds the exact quantile.
    latencies = np.array([p["latency_seconds"] for p in predictions])
    bounds = (0.0, *LATENCY_BUCKETS)
    for q, key in ((0.5, "latency_p50_ms"), (0.95, "latency_p95_ms"), (0.99, "latency_p99_ms")):
        exact = float(np.quantile(latencies, q))
        i = int(np.searchsorted(LATENCY_BUCKETS, exact))
        assert bounds[i] * 1000 <= summary[key] <= bounds[i + 1] * 1000, (key, exact)

    quality = assess_data_quality(profile, frame)
    assert quality.duplicate_rate == 0.0  # counts cannot see duplicates; this traffic has none
    assert summary["data_quality"] == pytest.approx(quality.score)
    assert summary["missing_rate"] == pytest.approx(quality.missing_rate)
    assert summary["out_of_range_rate"] == pytest.approx(quality.out_of_range_rate)
    assert summary["wrong_type_rate"] == pytest.approx(quality.wrong_type_rate)

    direct = detect_drift_from_counts(profile, profile.bin_counts(frame))
    assert summary["drift_score"] == pytest.approx(direct.drift_score)
    assert summary["drifted_features"] == sorted(direct.drifted_features)
    assert "Age" in summary["drifted_features"] and "region" in summary["drifted_features"]
    assert "nWBV" not in summary["drifted_features"]


def test_binned_counts_equal_the_profile_binning(setup):
    profile, predictions, feedback, frame = setup
    snapshot = _recorder(profile, predictions, feedback).snapshot()
    assert counts_for_profile(snapshot, profile) == profile.bin_counts(frame)


def test_per_version_counts_for_ab_analysis(setup):
    profile, predictions, feedback, _ = setup
    snapshot = _recorder(profile, predictions, feedback).snapshot()
    summary = summarize(snapshot)
    for version in ("v1", "v2"):
        rows = [f for f in feedback if f["model_version"] == version]
        block = summary["versions"][version]
        assert block["feedback"] == len(rows)
        assert block["correct"] == sum(str(f["true_label"]) == f["prediction"] for f in rows)
        assert block["predictions"] == sum(p["model_version"] == version for p in predictions)
        only = summarize(snapshot.for_version(version))
        assert only["predictions"] == block["predictions"]
        assert only["accuracy"] == pytest.approx(block["correct"] / block["feedback"])
    assert summary["drift_score"] is None and summary["feature_drift_detected"] is None  # no profile given


def test_duplicate_feedback_is_counted_once():
    recorder = SidecarRecorder("m")
    event = {"prediction_id": "p1", "model_version": "v1", "prediction": "1", "true_label": 1, "timestamp": 0.0}
    recorder.record_feedback([event, event])
    recorder.record_feedback([event])
    snap = recorder.snapshot()
    assert snap.feedback == {"v1": 1.0}
    assert snap.feedback_duplicates == {"v1": 2.0}
    assert snap.confusion == {("v1", "1", "1"): 1.0}


def test_empty_snapshot_summarizes_to_nones():
    summary = summarize(SidecarSnapshot())
    assert summary["predictions"] == 0
    assert summary["accuracy"] is None and summary["latency_p50_ms"] is None and summary["error_rate"] is None
    assert summary["data_quality"] is None


def test_histogram_quantile_interpolates_like_prometheus():
    cumulative = {0.1: 10.0, 0.2: 30.0, 0.5: 40.0, math.inf: 40.0}
    assert histogram_quantile(0.25, cumulative) == pytest.approx(0.1)
    assert histogram_quantile(0.5, cumulative) == pytest.approx(0.15)
    assert histogram_quantile(1.0, cumulative) == pytest.approx(0.5)
    assert histogram_quantile(0.5, {0.1: 0.0, math.inf: 5.0}) == pytest.approx(0.1)  # +Inf bucket
    assert histogram_quantile(0.5, {}) is None


def test_classification_from_confusion_matches_sklearn_with_absent_classes():
    y_true = ["a", "a", "b", "c", "c", "c"]
    y_pred = ["a", "b", "b", "a", "d", "c"]
    confusion: dict = {}
    for t, p in zip(y_true, y_pred, strict=True):
        confusion[(t, p)] = confusion.get((t, p), 0) + 1
    scores = classification_from_confusion(confusion)
    assert scores["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert scores["precision"] == pytest.approx(precision_score(y_true, y_pred, average="weighted", zero_division=0))
    assert scores["recall"] == pytest.approx(recall_score(y_true, y_pred, average="weighted", zero_division=0))
    assert scores["f1"] == pytest.approx(f1_score(y_true, y_pred, average="weighted", zero_division=0))


@pytest.mark.parametrize(("value", "expected"), [(1, "1"), (1.0, "1"), ("1", "1"), (True, "1"), (0.5, "0.5"),
                                                 ("yes", "yes"), ("1.0", "1"), ("1e3", "1e3")])
def test_labels_are_spelled_one_way(value, expected):
    assert label_str(value) == expected
