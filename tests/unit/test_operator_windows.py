"""Seeded simulations of the operator's statistical status decisions on windowed increments.

Sidecars export cumulative counters (two replicas per deployment, one of which restarts at a random
collection); every collection goes through the collector's window code
(``Collector.window_metrics`` -> ``mlops.operator.windows``) and the status code
(``status.metrics_status``), exactly as ``collect_sync`` does after scraping.

Print the figures with:  python -m pytest -q -s tests/unit/test_operator_windows.py
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mlops.core.drift import detect_drift_from_counts
from mlops.core.profile import build_profile
from mlops.operator import status as st
from mlops.operator import windows
from mlops.operator.collector import Collector
from mlops.operator.resources.spec import DEFAULT_ALERTS
from mlops.serving.sidecar_metrics import SidecarSnapshot, merge_snapshots

T0 = "2026-01-01T00:00:00Z"
BASELINE_ACCURACY = 0.9


def _profile(seed: int = 0):
    rng = np.random.default_rng(seed)
    n = 5000
    frame = pd.DataFrame({
        "x0": rng.normal(size=n), "x1": rng.normal(size=n), "flag": rng.binomial(1, 0.3, n),
        "cat": rng.choice(list("abcde"), n, p=[0.4, 0.3, 0.15, 0.1, 0.05]),
    })
    return build_profile(frame)


def _bin_probabilities(profile, shift: float = 0.0) -> dict[str, np.ndarray]:
    """True bin probabilities of the population the reference was drawn from (x0 shifted by ``shift`` sd)."""
    probs = {}
    for name, col in profile.columns.items():
        if name in ("x0", "x1"):
            cdf = stats.norm.cdf(np.asarray(col.edges), loc=shift if name == "x0" else 0.0)
            p = np.concatenate([[cdf[0]], np.diff(cdf), [1 - cdf[-1]]])
        elif name == "flag":
            p = np.zeros(len(col.counts) - 1)
            p[1], p[2] = 0.7, 0.3  # [0, 1) holds 0, the closed [1, 1+] holds 1
        else:
            share = {"a": 0.4, "b": 0.3, "c": 0.15, "d": 0.1, "e": 0.05}
            p = np.array([share[c] for c in col.categories] + [0.0])
        probs[name] = np.clip(p, 0, None) / np.clip(p, 0, None).sum()
    return probs


class Replica:
    """One sidecar's cumulative counters."""

    def __init__(self) -> None:
        self.snap = SidecarSnapshot(model="m")

    def restart(self) -> None:
        self.snap = SidecarSnapshot(model="m")

    def add(self, rng, rows: int, probs, labelled: int, accuracy: float) -> None:
        inc = SidecarSnapshot(model="m", predictions={"v1": float(rows)})
        for name, p in probs.items():
            for i, c in enumerate(rng.multinomial(rows, p)):
                if c:
                    inc.feature_bins[("v1", name, str(i))] = float(c)
        correct = rng.binomial(labelled, accuracy)
        if labelled:
            inc.feedback["v1"] = float(labelled)
            inc.confusion[("v1", "1", "1")] = float(correct)
            inc.confusion[("v1", "0", "1")] = float(labelled - correct)
        self.snap = merge_snapshots([self.snap, inc])


def _cr(uid: str):
    return {"metadata": {"name": "m", "namespace": "ns", "uid": uid, "generation": 1}, "status": {}}


def _collect(collector, cr, replicas, profile):
    per_source = {f"http://r{i}": r.snap.copy() for i, r in enumerate(replicas)}
    metrics = {"predictions": int(sum(r.snap.predictions.get("v1", 0) for r in replicas)), "driftedFeatures": []}
    metrics.update(collector.window_metrics(cr, per_source, profile, BASELINE_ACCURACY))
    new = st.metrics_status(cr, metrics=metrics, thresholds=DEFAULT_ALERTS, baseline_accuracy=BASELINE_ACCURACY,
                            now=T0)
    cr["status"] = {"conditions": new["conditions"]}
    drifting = any(c["type"] == "Drifting" and c["status"] == "True" for c in new["conditions"])
    critical = any(a["severity"] == "CRITICAL" and a["type"] == "AccuracyDrop" for a in new["alerts"])
    return drifting, critical


@pytest.mark.slow
def test_healthy_deployments_over_60_collections_stay_quiet():
    rng = np.random.default_rng(60)
    profile = _profile()
    probs = _bin_probabilities(profile)
    collector = Collector(kube=None)
    deployments, drifting_any, critical_any, tests_run = 300, 0, 0, 0
    for d in range(deployments):
        cr = _cr(f"uid-{d}")
        replicas = [Replica(), Replica()]
        restart_at = rng.integers(1, 60)
        drifted = critical = False
        for k in range(60):
            if k == restart_at:
                replicas[1].restart()
            rows = int(np.exp(rng.uniform(0, np.log(10_000))))  # 1 to 10,000 predictions
            for r, share in zip(replicas, (0.5, 0.5), strict=True):
                part = rng.binomial(rows, share)
                r.add(rng, part, probs, rng.binomial(part, 0.3), BASELINE_ACCURACY)
            a, b = _collect(collector, cr, replicas, profile)
            drifted, critical = drifted or a, critical or b
        state = collector._windows[("ns", "m", f"uid-{d}")]
        tests_run += state.drift_tests
        drifting_any += drifted
        critical_any += critical
    print(f"\nhealthy: Drifting in {drifting_any}/{deployments}, CRITICAL accuracy in {critical_any}/{deployments} "
          f"({tests_run} drift window tests)")
    assert drifting_any / deployments <= 0.05
    assert critical_any / deployments <= 0.05
    assert tests_run > deployments * 30  # the windows were really tested, not skipped


@pytest.mark.slow
def test_a_half_sd_shift_in_5000_rows_after_500000_stable_rows_is_detected():
    rng = np.random.default_rng(61)
    profile = _profile()
    stable, shifted = _bin_probabilities(profile), _bin_probabilities(profile, shift=0.5)
    collector = Collector(kube=None)
    reps, found, found_cumulative = 300, 0, 0
    for r in range(reps):
        cr = _cr(f"shift-{r}")
        replica = Replica()
        _collect(collector, cr, [replica], profile)  # first sight: baseline
        for _ in range(10):
            replica.add(rng, 50_000, stable, 0, BASELINE_ACCURACY)
            _collect(collector, cr, [replica], profile)
        replica.add(rng, 5_000, shifted, 0, BASELINE_ACCURACY)
        drifting, _ = _collect(collector, cr, [replica], profile)
        found += drifting
        # what the operator did before: one test of the cumulative counts
        counts = {name: [int(replica.snap.feature_bins.get(("v1", name, str(i)), 0))
                         for i in range(len(col.counts) - 1)] + [0]
                  for name, col in profile.columns.items()}
        found_cumulative += "x0" in detect_drift_from_counts(profile, counts).drifted_features
    print(f"\n0.5 sd shift in 5,000 rows after 500,000: windowed {found / reps:.3f}, cumulative {found_cumulative / reps:.3f}")
    assert found_cumulative / reps < 0.5
    assert found / reps >= 0.95


def test_increments_are_reset_safe_and_first_sight_is_a_baseline():
    a = SidecarSnapshot(model="m", predictions={"v1": 10.0}, feature_bins={("v1", "x", "1"): 10.0})
    b = SidecarSnapshot(model="m", predictions={"v1": 25.0}, feature_bins={("v1", "x", "1"): 25.0})
    inc, reset = windows.snapshot_increment(b, a)
    assert not reset and inc.predictions == {"v1": 15.0} and inc.feature_bins == {("v1", "x", "1"): 15.0}
    restarted = SidecarSnapshot(model="m", predictions={"v1": 4.0}, feature_bins={("v1", "x", "1"): 4.0})
    inc, reset = windows.snapshot_increment(restarted, b)
    assert reset and inc.predictions == {"v1": 4.0}
    inc, reset = windows.snapshot_increment(b, None)
    assert not reset and inc.predictions == {}
    state = windows.WindowState()
    windows.advance(state, {"u": a})
    windows.advance(state, {"u": b})
    windows.advance(state, {"u": restarted})
    assert state.resets == 1
    assert sum(state.drift_pending.feature_bins.values()) == 15.0 + 4.0


def test_small_windows_are_not_enough_data_and_accuracy_needs_a_significant_window():
    profile = _profile()
    state = windows.WindowState()
    rng = np.random.default_rng(3)
    rep = Replica()
    windows.advance(state, {"s": rep.snap.copy()})
    rep.add(rng, 5, _bin_probabilities(profile), 5, 0.0)  # 5 rows, all wrong
    windows.advance(state, {"s": rep.snap.copy()})
    out = windows.evaluate(state, profile, BASELINE_ACCURACY)
    assert out == {}  # below both minimums: nothing decided
    metrics = {"predictions": 5, "accuracy": 0.0, "driftedFeatures": [], **out}
    assert st.evaluate_alerts(metrics, DEFAULT_ALERTS, BASELINE_ACCURACY) == []
    rep.add(rng, 200, _bin_probabilities(profile), 200, 0.7)
    windows.advance(state, {"s": rep.snap.copy()})
    out = windows.evaluate(state, profile, BASELINE_ACCURACY)
    assert out["windowLabelled"] == 205 and out["accuracyDropPValue"] < 1e-5
    alerts = st.evaluate_alerts({**metrics, **out}, DEFAULT_ALERTS, BASELINE_ACCURACY)
    assert [(a["severity"], a["type"]) for a in alerts] == [("CRITICAL", "AccuracyDrop")]
