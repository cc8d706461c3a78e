"""Seeded simulations of the production monitor's repeated alerts, the retraining accuracy trigger and
the duplicate-rate quality score.

The 300-monitor simulation runs the monitor's decision functions (the drift check on the stored
profile at ``ProductionMonitor.drift_level``, the exact accuracy tests at ``accuracy_level``, and
``evaluate_alerts``) without SQLite; a smaller end-to-end run through ``create_production_monitor``
and ``log_prediction_batch`` shows the monitor makes the same decisions.

Print the figures with:  python -m pytest -q -s tests/unit/test_monitor_validity.py
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mlops.core import retrain_policy as policy
from mlops.core.alerts import CRITICAL, WARNING, AlertConfig, AlertInputs, evaluate_alerts
from mlops.core.drift import concept_drift_test, detect_drift_from_counts
from mlops.core.profile import build_profile
from mlops.core.quality import assess_data_quality
from mlops.monitoring.production_monitor import ProductionMonitor, create_production_monitor


def _frame(rng, n):
    return pd.DataFrame({"a": rng.normal(size=n), "b": rng.exponential(size=n), "flag": rng.binomial(1, 0.3, n),
                         "c": rng.choice(list("xyzw"), n, p=[0.4, 0.3, 0.2, 0.1])})


def test_accuracy_test_against_a_100_label_baseline_is_valid():
    """The old z-test plugged in a baseline from 100 labels and rejected 7.6-8.4% at alpha 0.05."""
    rng = np.random.default_rng(0)
    reps, rejected, rejected_z = 4000, 0, 0
    for _ in range(reps):
        base = rng.binomial(100, 0.9) / 100
        n = 200
        cur = rng.binomial(n, 0.9) / n
        rejected += concept_drift_test(base, cur, n, alpha=0.05, baseline_n=100).p_value <= 0.05
        var = base * (1 - base) / 100 + cur * (1 - cur) / n
        rejected_z += var > 0 and stats.norm.cdf((cur - base) / math.sqrt(var)) <= 0.05
    print(f"\nhealthy accuracy vs 100-label baseline at alpha 0.05: exact {rejected / reps:.4f}, "
          f"z-test {rejected_z / reps:.4f}")
    assert rejected_z / reps > 0.06
    assert rejected / reps <= 0.05


@pytest.mark.slow
def test_300_healthy_monitors_over_100_batches_raise_no_warning_or_critical():
    rng = np.random.default_rng(1)
    config = AlertConfig()
    monitor_like = ProductionMonitor.__new__(ProductionMonitor)  # only for its level properties
    monitor_like.alert_horizon, monitor_like.drift_alpha, monitor_like._alert_config = 1000, 0.05, config
    drift_level, accuracy_level = monitor_like.drift_level, monitor_like.accuracy_level
    profile = build_profile(_frame(rng, 2000))
    col_probs = {name: col.bin_counts / col.bin_counts.sum() for name, col in profile.columns.items()}
    reps, batches = 300, 100
    alarmed, alarmed_old = 0, 0
    for _ in range(reps):
        base_n = 100
        base = rng.binomial(base_n, 0.9) / base_n  # baseline accuracy from the first 100 labels
        raised = raised_old = False
        for _b in range(batches):
            n = int(rng.integers(20, 500))
            counts = {name: [*rng.multinomial(n, p).tolist(), 0] for name, p in col_probs.items()}
            report = detect_drift_from_counts(profile, counts, alpha=drift_level)
            labelled = int(rng.binomial(n, 0.5))
            acc = rng.binomial(labelled, 0.9) / labelled if labelled else None
            significant = concept = None
            if acc is not None:
                significant = concept_drift_test(base, acc, labelled, alpha=accuracy_level, baseline_n=base_n).detected
                concept = concept_drift_test(base, acc, labelled, alpha=accuracy_level,
                                             min_drop=config.warning_accuracy_drop, baseline_n=base_n).detected
            alerts = evaluate_alerts(AlertInputs(
                accuracy=acc, labelled_count=labelled, baseline_accuracy=base, error_rate=0.0, latency_ms=5.0,
                drift_score=report.drift_score, feature_drift_detected=report.feature_drift_detected,
                drifted_features=tuple(report.drifted_features), concept_drift_detected=bool(concept),
                accuracy_drop_significant=significant), config)
            raised = raised or any(a.severity in (CRITICAL, WARNING) for a in alerts)
            if not raised_old:  # what the old per-batch levels did: drift at 0.05, accuracy at 0.01
                old = detect_drift_from_counts(profile, counts, alpha=0.05).feature_drift_detected
                raised_old = old
        alarmed += raised
        alarmed_old += raised_old
    print(f"\nhealthy monitors with a WARNING/CRITICAL over {batches} batches: {alarmed}/{reps} "
          f"(drift at 0.05 per batch: {alarmed_old}/{reps})")
    assert alarmed_old / reps > 0.5
    assert alarmed / reps <= 0.05


@pytest.mark.slow
def test_production_monitor_end_to_end_stays_quiet_and_still_alerts_on_a_real_drop():
    rng = np.random.default_rng(2)
    noisy = 0
    monitors = 6
    for m in range(monitors):
        monitor = create_production_monitor(f"quiet-{m}", baseline_data=_frame(rng, 2000))
        for _ in range(100):
            n = 100
            labels = (rng.random(n) < 0.9).astype(int)
            out = monitor.log_prediction_batch(_frame(rng, n), np.ones(n, dtype=int), true_labels=labels)
            noisy += any(a["severity"] in (CRITICAL, WARNING) for a in out["alerts_triggered"])
        assert monitor.baseline_metrics["accuracy_n"] == 100  # measured on the first 100 labels
        if m == 0:
            bad = (rng.random(2000) < 0.6).astype(int)
            out = monitor.log_prediction_batch(_frame(rng, 2000), np.ones(2000, dtype=int), true_labels=bad)
            assert {a["alert_type"] for a in out["alerts_triggered"]} >= {"accuracy_drop", "concept_drift"}
        monitor.close()
    print(f"\nend to end: {noisy} WARNING/CRITICAL alerts over {monitors * 100} healthy batches")
    assert noisy == 0


@pytest.mark.parametrize("factor", [1, 10, 100])
def test_duplicate_rate_score_does_not_depend_on_batch_size(factor):
    """Discrete features make duplicates common; a batch 10x or 100x the baseline used to score 0.52
    and 0.43 on same-distribution data."""
    rng = np.random.default_rng(3)

    def frame(n):
        return pd.DataFrame({"k": rng.integers(0, 20, n), "c": rng.choice(list("abc"), n),
                             "f": rng.binomial(1, 0.5, n)})

    profile = build_profile(frame(1000))
    report = assess_data_quality(profile, frame(1000 * factor))
    print(f"\nbatch {factor}x baseline: raw duplicate rate {report.duplicate_rate:.3f}, score {report.score:.3f}")
    assert report.score >= 0.97
    # and a batch that really repeats rows still scores low
    continuous = build_profile(pd.DataFrame({"x": rng.normal(size=1000)}))
    repeated = pd.DataFrame({"x": np.tile(rng.normal(size=200), 5 * factor)})
    assert assess_data_quality(continuous, repeated).score < 0.5


class _Config:
    min_new_samples = 1000
    max_days_without_retrain = None
    accuracy_degradation_threshold = 0.05
    drift_score_threshold = 0.1
    error_rate_threshold = 0.02
    data_quality_threshold = 0.95
    min_hours_between_retrains = 6
    max_retrains_per_day = 4
    require_manual_approval = False
    min_predictions = 100


def test_retrain_accuracy_trigger_needs_a_significant_drop_not_a_raw_one():
    rng = np.random.default_rng(4)
    reps, evaluations = 300, 100
    triggered, triggered_raw = 0, 0
    for _ in range(reps):
        base = rng.binomial(100, 0.9) / 100
        fired = fired_raw = False
        for _e in range(evaluations):
            labelled = int(rng.integers(30, 400))
            acc = rng.binomial(labelled, 0.9) / labelled
            ev = policy.Evidence(total_predictions=1000, accuracy=acc, baseline_accuracy=base, labelled=labelled,
                                 baseline_labelled=100)
            fired = fired or any(t == policy.PERFORMANCE_DEGRADATION
                                 for t, _ in policy.qualifying_triggers(ev, policy.History(), _Config(), 0.0))
            fired_raw = fired_raw or base - acc > 0.05
        triggered += fired
        triggered_raw += fired_raw
    print(f"\nhealthy model, 100 evaluations: accuracy trigger in {triggered}/{reps} (raw 0.05 drop: {triggered_raw}/{reps})")
    assert triggered_raw / reps > 0.5
    assert triggered / reps <= 0.05
    # a real drop still triggers; too few labels never does
    ev = policy.Evidence(total_predictions=1000, accuracy=0.65, baseline_accuracy=0.9, labelled=500, baseline_labelled=100)
    assert policy.qualifying_triggers(ev, policy.History(), _Config(), 0.0)[0][0] == policy.PERFORMANCE_DEGRADATION
    ev = policy.Evidence(total_predictions=1000, accuracy=0.0, baseline_accuracy=0.9, labelled=10)
    assert policy.qualifying_triggers(ev, policy.History(), _Config(), 0.0) == []
