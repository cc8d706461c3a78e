"""The pure retraining rules: which conditions qualify, which constraints block, in what order."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from mlops.core import retrain_policy as p

H = 3600.0
DAY = 86400.0
T0 = 1_800_000_000.0


@dataclass
class Cfg:
    min_new_samples: int = 1000
    max_days_without_retrain: float = 7
    accuracy_degradation_threshold: float = 0.05
    drift_score_threshold: float = 0.1
    error_rate_threshold: float = 0.02
    data_quality_threshold: float = 0.95
    min_hours_between_retrains: float = 6
    max_retrains_per_day: int = 4
    require_manual_approval: bool = False
    min_predictions: int = 100


# 500 labelled predictions, against a baseline taken as exact: the accuracy trigger is an exact test
HEALTHY = p.Evidence(total_predictions=500, accuracy=0.9, baseline_accuracy=0.9, labelled=500, drift_score=0.01,
                     error_rate=0.0, data_quality=1.0, first_start=T0)


def types(decision: p.Decision) -> list[str]:
    return [t for t, _ in decision.candidates]


def test_healthy_system_does_not_trigger():
    assert p.decide(HEALTHY, p.History(), Cfg(), T0 + H).action == p.NONE


def test_idle_system_with_zero_scores_does_not_trigger_before_the_time_limit():
    idle = p.Evidence(total_predictions=0, accuracy=0.0, baseline_accuracy=0.9, drift_score=0.0,
                      error_rate=1.0, data_quality=0.0, first_start=T0)
    assert p.decide(idle, p.History(), Cfg(), T0 + 6 * DAY).action == p.NONE
    later = p.decide(idle, p.History(), Cfg(), T0 + 7 * DAY)
    assert (later.action, later.trigger_type) == (p.RUN, p.TIME_BASED)
    assert "never retrained" in later.reason


def test_missing_values_are_no_evidence():
    none = p.Evidence(total_predictions=10_000, first_start=None)
    assert p.decide(none, p.History(), Cfg(), T0).action == p.NONE


def test_too_few_predictions_are_not_evidence():
    few = replace(HEALTHY, total_predictions=99, accuracy=0.1)
    assert p.decide(few, p.History(), Cfg(), T0).action == p.NONE
    enough = replace(few, total_predictions=100)
    assert p.decide(enough, p.History(), Cfg(), T0).trigger_type == p.PERFORMANCE_DEGRADATION


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"accuracy": 0.84}, p.PERFORMANCE_DEGRADATION),
        ({"error_rate": 0.03}, p.HIGH_ERROR_RATE),
        ({"drift_score": 0.2}, p.DATA_DRIFT),
        ({"data_quality": 0.9}, p.DATA_QUALITY),
        ({"new_samples": 1000}, p.DATA_ARRIVAL),
        ({"manual_reason": "because"}, p.MANUAL),
    ],
)
def test_each_condition_triggers_its_type(change, expected):
    decision = p.decide(replace(HEALTHY, **change), p.History(), Cfg(), T0 + H)
    assert (decision.action, decision.trigger_type) == (p.RUN, expected)
    assert decision.reason


@pytest.mark.parametrize(
    "change",
    [{"accuracy": 0.86}, {"error_rate": 0.02}, {"drift_score": 0.1}, {"data_quality": 0.95},
     {"new_samples": 999}],
)
def test_values_at_or_inside_the_threshold_do_not_trigger(change):
    assert p.decide(replace(HEALTHY, **change), p.History(), Cfg(), T0 + H).action == p.NONE


def test_degradation_is_relative_to_the_measured_baseline():
    # 0.80 is a 0.05+ drop from a 0.86 baseline but not from a 0.84 one
    assert p.decide(replace(HEALTHY, accuracy=0.78, baseline_accuracy=0.86), p.History(), Cfg(), T0).triggered
    assert not p.decide(replace(HEALTHY, accuracy=0.80, baseline_accuracy=0.84), p.History(), Cfg(), T0).triggered
    assert not p.decide(replace(HEALTHY, accuracy=0.1, baseline_accuracy=None), p.History(), Cfg(), T0).triggered


def test_candidates_are_in_priority_order():
    everything = replace(HEALTHY, accuracy=0.5, error_rate=0.5, drift_score=0.5, data_quality=0.5,
                         new_samples=5000, manual_reason="now")
    decision = p.decide(everything, p.History(), Cfg(), T0 + 8 * DAY)
    assert types(decision) == list(p.TRIGGER_PRIORITY)
    assert decision.trigger_type == p.MANUAL


def test_time_limit_counts_from_the_last_success_not_first_start():
    history = p.History(runs=(p.RunRecord(T0 + 5 * DAY, T0 + 5 * DAY + H, True),))
    assert p.decide(HEALTHY, history, Cfg(), T0 + 8 * DAY).action == p.NONE
    late = p.decide(HEALTHY, history, Cfg(), T0 + 12 * DAY + H)
    assert late.trigger_type == p.TIME_BASED and "last successful retrain" in late.reason


def test_cooldown_after_a_success_blocks_with_reason():
    history = p.History(runs=(p.RunRecord(T0, T0 + 60, True),))
    blocked = p.decide(replace(HEALTHY, drift_score=0.5), history, Cfg(), T0 + 2 * H)
    assert (blocked.action, blocked.block_code) == (p.BLOCKED, p.COOLDOWN)
    assert "minimum is 6 h" in blocked.block_reason
    allowed = p.decide(replace(HEALTHY, drift_score=0.5), history, Cfg(), T0 + 60 + 6 * H)
    assert allowed.action == p.RUN


def test_failures_do_not_consume_the_cooldown_but_count_toward_the_daily_cap():
    failures = tuple(p.RunRecord(T0 + i * H, T0 + i * H + 60, False) for i in range(3))
    history = p.History(runs=failures)
    assert p.decide(replace(HEALTHY, drift_score=0.5), history, Cfg(), T0 + 3 * H).action == p.RUN
    history = p.History(runs=(*failures, p.RunRecord(T0 + 3 * H, T0 + 3 * H + 60, False)))
    capped = p.decide(replace(HEALTHY, drift_score=0.5), history, Cfg(), T0 + 4 * H)
    assert (capped.action, capped.block_code) == (p.BLOCKED, p.DAILY_CAP)


def test_daily_cap_window_is_closed_at_24_hours():
    runs = tuple(p.RunRecord(T0 + i * 6 * H, T0 + i * 6 * H, True) for i in range(4))  # 0, 6, 12, 18 h
    history = p.History(runs=runs)
    at_24 = p.decide(replace(HEALTHY, drift_score=0.5), history, Cfg(), T0 + 24 * H)
    assert at_24.block_code == p.DAILY_CAP  # the run at 0 h is exactly 24 h old and still counts
    assert p.decide(replace(HEALTHY, drift_score=0.5), history, Cfg(), T0 + 24 * H + 1).action == p.RUN


def test_one_run_at_a_time():
    history = p.History(runs=(p.RunRecord(T0 - 30 * DAY, None, None),))
    decision = p.decide(replace(HEALTHY, drift_score=0.5), history, Cfg(), T0)
    assert decision.block_code == p.RUN_IN_PROGRESS


def test_a_pending_trigger_blocks_its_duplicate_only():
    history = p.History(pending=(p.PendingTrigger(7, p.DATA_DRIFT),))
    dup = p.decide(replace(HEALTHY, drift_score=0.5), history, Cfg(), T0)
    assert dup.block_code == p.DUPLICATE_PENDING and "event 7" in dup.block_reason
    other = p.decide(replace(HEALTHY, error_rate=0.5), history, Cfg(require_manual_approval=True), T0)
    assert other.action == p.AWAIT_APPROVAL


def test_manual_approval_asks_instead_of_running():
    decision = p.decide(replace(HEALTHY, drift_score=0.5), p.History(), Cfg(require_manual_approval=True), T0)
    assert (decision.action, decision.trigger_type) == (p.AWAIT_APPROVAL, p.DATA_DRIFT)


def test_an_approved_trigger_is_not_its_own_duplicate_but_still_obeys_limits():
    pending = p.PendingTrigger(3, p.DATA_DRIFT, "approved")
    history = p.History(pending=(pending,))
    assert p.decide_pending(pending, "r", history, Cfg(), T0).action == p.RUN
    busy = p.History(runs=(p.RunRecord(T0 - H, T0 - H + 1, True),), pending=(pending,))
    assert p.decide_pending(pending, "r", busy, Cfg(), T0).block_code == p.COOLDOWN


def test_every_block_reason_is_reported():
    history = p.History(runs=(p.RunRecord(T0 - H, None, None), *(p.RunRecord(T0 - i * H, T0, True)
                                                                  for i in range(2, 6))))
    decision = p.decide(replace(HEALTHY, drift_score=0.5), history, Cfg(), T0)
    assert decision.block_code == p.RUN_IN_PROGRESS
    for words in ("already running", "minimum is 6 h", "maximum 4"):
        assert words in decision.block_reason
