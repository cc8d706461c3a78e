"""DataDrivenRetrainingTrigger with an injected clock and a stub monitor: governance over simulated
hours, weeks and months (real SQLite under the per-test MLOPS_HOME, no sleeping), run outcomes,
approvals and the audit chain."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

import pytest

from mlops.core import retrain_policy as p
from mlops.monitoring.data_trigger import (
    DataDrivenRetrainingTrigger,
    RetrainingEvent,
    RetrainingTriggerConfig,
    create_data_trigger,
)
from mlops.store.retrain_store import RetrainStore

H = 3600.0
DAY = 86400.0
T0 = 1_800_000_000.0


class FakeClock:
    def __init__(self, start: float = T0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class StubMonitor:
    """A collaborator stub answering the contract's summary keys."""

    def __init__(self, **summary) -> None:
        self.baseline_metrics = {"accuracy": 0.9}
        self.summary = {"total_predictions": 1000, "avg_accuracy": 0.9, "avg_error_rate": 0.0,
                        "avg_drift_score": 0.01, "avg_data_quality": 1.0, **summary}
        self.calls: list[float] = []

    def get_monitoring_summary(self, hours=24):
        self.calls.append(hours)
        return dict(self.summary)


IDLE = {"total_predictions": 0, "avg_accuracy": 0.0, "avg_error_rate": 0.0, "avg_drift_score": 0.0,
        "avg_data_quality": 0.0}


class Recorder:
    def __init__(self, result=True) -> None:
        self.calls: list[tuple[str, str]] = []
        self.result = result

    def __call__(self, trigger_type, reason):
        self.calls.append((trigger_type, reason))
        return self.result


def make(config=None, monitor=None, clock=None, handler=None, name="model-a"):
    clock = clock or FakeClock()
    trigger = create_data_trigger(name, config, monitor, clock=clock)
    trigger.retraining_handler = handler
    return trigger, clock


def runs_of(trigger):
    return [e for e in trigger.get_trigger_history(days=3650) if e["started_at"] is not None]


def test_ten_qualifying_triggers_in_one_hour_start_one_run_and_block_nine():
    handler = Recorder()
    trigger, clock = make({"min_hours_between_retrains": 6}, StubMonitor(avg_drift_score=0.4), handler=handler)
    actions = []
    for minute in range(0, 60, 6):
        clock.now = T0 + minute * 60
        actions.append(trigger.check_once(wait=True).action)
    assert actions == [p.RUN] + [p.BLOCKED] * 9
    assert handler.calls == [(p.DATA_DRIFT, handler.calls[0][1])]
    history = trigger.get_trigger_history()
    blocked = [e for e in history if e["status"] == "blocked"]
    assert len(blocked) == 9 and len(history) == 10
    assert all(e["block_code"] == p.COOLDOWN and "minimum is 6 h" in e["block_reason"] for e in blocked)
    assert [e["status"] for e in history if e["status"] != "blocked"] == ["succeeded"]


def test_ten_forced_retrains_in_a_burst_start_one_run():
    handler = Recorder()
    trigger, clock = make({"min_hours_between_retrains": 6}, handler=handler)
    results = []
    for i in range(10):
        clock.now = T0 + i
        results.append(trigger.force_retrain(f"request {i}"))
    assert results == [True] + [False] * 9
    assert handler.calls == [(p.MANUAL, "request 0")]
    statuses = [e["status"] for e in trigger.get_trigger_history()]
    assert statuses.count("blocked") == 9 and statuses.count("succeeded") == 1


def _max_runs_in_any_closed_day(starts):
    return max(sum(1 for t in starts if s <= t <= s + DAY) for s in starts)


def test_simulated_month_of_hourly_triggers_respects_cap_and_spacing():
    handler = Recorder()
    trigger, clock = make({"min_hours_between_retrains": 6, "max_retrains_per_day": 4},
                          StubMonitor(avg_drift_score=0.4), handler=handler)
    for hour in range(30 * 24):
        clock.now = T0 + hour * H
        trigger.check_once(wait=True)
    runs = runs_of(trigger)
    starts = sorted(datetime.fromisoformat(e["started_at"]).timestamp() for e in runs)
    assert all(e["status"] == "succeeded" for e in runs)
    assert len(starts) == len(handler.calls) >= 100  # one run per ~6 h over 30 days
    assert _max_runs_in_any_closed_day(starts) <= 4
    assert min(b - a for a, b in zip(starts, starts[1:], strict=False)) >= 6 * H
    blocked = [e for e in trigger.get_trigger_history(days=3650) if e["status"] == "blocked"]
    assert len(blocked) == 30 * 24 - len(starts)
    assert {e["block_code"] for e in blocked} <= {p.COOLDOWN, p.DAILY_CAP}


def test_simulated_month_with_tighter_cap_blocks_on_the_cap():
    trigger, clock = make({"min_hours_between_retrains": 1, "max_retrains_per_day": 3},
                          StubMonitor(avg_drift_score=0.4), handler=Recorder())
    for hour in range(30 * 24):
        clock.now = T0 + hour * H
        trigger.check_once(wait=True)
    starts = sorted(datetime.fromisoformat(e["started_at"]).timestamp() for e in runs_of(trigger))
    assert _max_runs_in_any_closed_day(starts) <= 3
    codes = {e["block_code"] for e in trigger.get_trigger_history(days=3650) if e["status"] == "blocked"}
    assert p.DAILY_CAP in codes


def test_failing_runs_count_toward_the_cap_but_not_the_cooldown():
    handler = Recorder(result=False)
    trigger, clock = make({"min_hours_between_retrains": 6, "max_retrains_per_day": 4},
                          StubMonitor(avg_drift_score=0.4), handler=handler)
    for hour in range(48):
        clock.now = T0 + hour * H
        trigger.check_once(wait=True)
    starts = [round((datetime.fromisoformat(e["started_at"]).timestamp() - T0) / H)
              for e in runs_of(trigger)]
    # failures at 0,1,2,3 h (no cooldown), then the cap holds until the run at 0 h leaves the window
    assert sorted(starts) == [0, 1, 2, 3, 25, 26, 27, 28]
    assert all(e["status"] == "failed" and e["error_message"] == "handler returned False"
               for e in runs_of(trigger))
    assert trigger.last_retrain_time is None


def test_idle_system_with_default_config_for_a_week_triggers_only_the_time_based_retrain():
    handler = Recorder()
    trigger, clock = make(None, StubMonitor(**IDLE), handler=handler)
    for hour in range(7 * 24 + 3):
        clock.now = T0 + hour * H
        trigger.check_once(wait=True)
    history = trigger.get_trigger_history(days=30)
    assert [(e["trigger_type"], e["status"]) for e in history] == [(p.TIME_BASED, "succeeded")]
    assert history[0]["timestamp"] == datetime.fromtimestamp(T0 + 7 * DAY, UTC).isoformat()
    assert handler.calls[0][0] == p.TIME_BASED


def test_idle_week_with_the_real_production_monitor(tmp_path):
    from mlops.monitoring.production_monitor import create_production_monitor

    clock = FakeClock()
    monitor = create_production_monitor("real-idle", clock=clock)
    handler = Recorder()
    trigger = create_data_trigger("real-idle", None, monitor, clock=clock)
    trigger.retraining_handler = handler
    for hour in range(0, 7 * 24 + 1, 2):
        clock.now = T0 + hour * H
        trigger.check_once(wait=True)
    assert [c[0] for c in handler.calls] == [p.TIME_BASED]
    monitor.close()


def test_real_production_monitor_accuracy_drop_triggers_performance_degradation():
    import numpy as np
    import pandas as pd

    from mlops.monitoring.production_monitor import create_production_monitor

    rng = np.random.default_rng(3)
    clock = FakeClock()
    baseline = pd.DataFrame({"x": rng.normal(size=400), "y": rng.normal(size=400)})
    labels = rng.integers(0, 2, 400)
    monitor = create_production_monitor("real-acc", baseline, labels, baseline_predictions=labels.copy(),
                                        clock=clock)
    assert monitor.baseline_metrics["accuracy"] == 1.0
    features = pd.DataFrame({"x": rng.normal(size=300), "y": rng.normal(size=300)})
    truth = rng.integers(0, 2, 300)
    predictions = truth.copy()
    predictions[:60] = 1 - predictions[:60]  # 80% accuracy: a 0.2 drop
    monitor.log_prediction_batch(features, predictions, truth)
    handler = Recorder()
    trigger = create_data_trigger("real-acc", {"min_predictions": 100}, monitor, clock=clock)
    trigger.retraining_handler = handler
    clock.now += 60
    decision = trigger.check_once(wait=True)
    assert decision.trigger_type == p.PERFORMANCE_DEGRADATION
    assert handler.calls and handler.calls[0][0] == p.PERFORMANCE_DEGRADATION
    assert trigger.get_trigger_history()[0]["performance_before"] == pytest.approx(0.8)
    monitor.close()


@pytest.mark.parametrize(
    ("handler", "message"),
    [
        (Recorder(result=False), "handler returned False"),
        (Recorder(result=None), "handler returned None (expected True or False)"),
        (lambda t, r: 1 / 0, "handler raised ZeroDivisionError: division by zero"),
        (lambda t, r: {"success": False, "error_message": "loss diverged"}, "loss diverged"),
    ],
)
def test_failing_handlers_are_recorded_as_failed(handler, message):
    trigger, _ = make(handler=handler)
    assert trigger.force_retrain("try") is False
    event = trigger.get_trigger_history()[0]
    assert (event["status"], event["success"], event["error_message"]) == ("failed", False, message)
    assert event["finished_at"] is not None and event["duration_seconds"] >= 0


def test_a_raising_handler_keeps_its_traceback():
    def handler(trigger_type, reason):
        raise RuntimeError("training data missing")

    trigger, _ = make(handler=handler)
    assert trigger.force_retrain() is False
    assert "RuntimeError: training data missing" in trigger.get_trigger_history()[0]["output_tail"]


def test_missing_handler_and_command_is_a_failure_not_a_success():
    trigger, clock = make()
    assert trigger.force_retrain() is False
    event = trigger.get_trigger_history()[0]
    assert event["status"] == "failed"
    assert event["error_message"] == "no retraining handler or command configured"
    assert trigger.retrains_today == 1 and trigger.last_retrain_time is None
    # a failure leaves no cooldown: the next request runs (and succeeds with a handler)
    trigger.retraining_handler = Recorder()
    clock.now += 60
    assert trigger.force_retrain() is True
    assert trigger.last_retrain_time == datetime.fromtimestamp(clock.now, UTC)


def test_handler_may_report_versions_and_performance():
    trigger, clock = make(handler=lambda t, r: {"success": True, "new_model_version": "v2",
                                                "performance_after": 0.93})
    assert trigger.force_retrain() is True
    clock.now += 7 * H
    trigger.retraining_handler = lambda t, r: {"success": True, "new_model_version": "v3"}
    assert trigger.force_retrain() is True
    newest, older = trigger.get_trigger_history()
    assert (older["new_model_version"], older["performance_after"]) == ("v2", 0.93)
    assert (newest["previous_model_version"], newest["new_model_version"]) == ("v2", "v3")
    events = trigger.get_trigger_events()
    assert isinstance(events[0], RetrainingEvent) and events[0].new_model_version == "v3"


def test_manual_approval_flow_approve_reject_and_dedup():
    handler = Recorder()
    monitor = StubMonitor(avg_drift_score=0.4)
    trigger, clock = make({"require_manual_approval": True}, monitor, handler=handler)
    assert trigger.check_once(wait=True).action == p.AWAIT_APPROVAL
    assert handler.calls == []
    pending = trigger.pending_approvals()
    assert [(e["trigger_type"], e["status"]) for e in pending] == [(p.DATA_DRIFT, "pending_approval")]

    clock.now += 120
    again = trigger.check_once(wait=True)
    assert again.block_code == p.DUPLICATE_PENDING
    assert len(trigger.pending_approvals()) == 1

    clock.now += 120
    assert trigger.approve(pending[0]["id"]) is True
    assert handler.calls == [(p.DATA_DRIFT, pending[0]["trigger_reason"])]
    assert trigger.store.get_event(pending[0]["id"])["status"] == "succeeded"
    with pytest.raises(ValueError, match="not pending approval"):
        trigger.approve(pending[0]["id"])

    # after the cooldown the next drift trigger waits again; rejecting it is recorded with the reason
    clock.now += 7 * H
    assert trigger.check_once(wait=True).action == p.AWAIT_APPROVAL
    second = trigger.pending_approvals()[0]
    trigger.reject(second["id"], "drift is a known seasonal effect")
    event = trigger.store.get_event(second["id"])
    assert event["status"] == "rejected" and "seasonal" in event["error_message"]
    assert len(handler.calls) == 1
    with pytest.raises(KeyError):
        trigger.reject(99999, "nope")


def test_approved_trigger_blocked_by_cooldown_starts_later_from_the_loop():
    handler = Recorder()
    trigger, clock = make({"require_manual_approval": True}, StubMonitor(avg_drift_score=0.4), handler=handler)
    trigger.check_once(wait=True)
    drift_id = trigger.pending_approvals()[0]["id"]
    # a manual run goes through approval as well
    assert trigger.force_retrain("operator") is False
    manual_id = [e for e in trigger.pending_approvals() if e["trigger_type"] == p.MANUAL][0]["id"]
    assert trigger.approve(manual_id) is True
    assert trigger.approve(drift_id) is False  # cooldown from the manual run
    assert trigger.store.get_event(drift_id)["status"] == "approved"
    assert "minimum is 6 h" in trigger.store.get_event(drift_id)["block_reason"]
    clock.now += 6 * H + 1
    decision = trigger.check_once(wait=True)
    assert decision.action == p.RUN and decision.trigger_type == p.DATA_DRIFT
    assert trigger.store.get_event(drift_id)["status"] == "succeeded"
    assert [c[0] for c in handler.calls] == [p.MANUAL, p.DATA_DRIFT]


def test_repeated_identical_blocks_from_the_loop_are_coalesced():
    trigger, clock = make({"blocked_record_interval_seconds": 60}, StubMonitor(avg_drift_score=0.4),
                          handler=Recorder())
    trigger.check_once(wait=True)
    for second in range(1, 31):
        clock.now = T0 + second
        trigger.check_once(wait=True)
    blocked = [e for e in trigger.get_trigger_history() if e["status"] == "blocked"]
    assert len(blocked) == 1 and blocked[0]["suppressed_repeats"] == 29


def test_state_survives_a_restart():
    handler = Recorder()
    trigger, clock = make({"min_hours_between_retrains": 6}, handler=handler)
    assert trigger.force_retrain() is True
    trigger.store.close()
    clock.now += H
    again = DataDrivenRetrainingTrigger("model-a", {"min_hours_between_retrains": 6}, clock=clock,
                                        retraining_handler=handler)
    assert again.force_retrain() is False
    assert again.get_trigger_history()[0]["block_code"] == p.COOLDOWN
    assert again.retrains_today == 1


def test_never_retrained_clock_starts_at_first_start_up_and_persists():
    clock = FakeClock()
    first = create_data_trigger("model-t", None, StubMonitor(**IDLE), clock=clock)
    first.retraining_handler = Recorder()
    first.store.close()
    clock.now = T0 + 6 * DAY
    second = create_data_trigger("model-t", None, StubMonitor(**IDLE), clock=clock)
    second.retraining_handler = Recorder()
    assert second.check_once(wait=True).action == p.NONE
    clock.now = T0 + 7 * DAY
    assert second.check_once(wait=True).trigger_type == p.TIME_BASED


def test_clock_may_return_datetimes():
    now = {"t": datetime(2027, 1, 1, tzinfo=UTC)}
    trigger = create_data_trigger("model-dt", None, StubMonitor(**IDLE), clock=lambda: now["t"],
                                  retraining_handler=Recorder())
    now["t"] = datetime(2027, 1, 1, 0, 1)  # naive datetimes are taken as UTC
    assert trigger.force_retrain() is True
    assert trigger.last_retrain_time == datetime(2027, 1, 1, 0, 1, tzinfo=UTC)
    now["t"] = datetime(2027, 1, 8, 0, 1, tzinfo=UTC)
    assert trigger.check_once(wait=True).trigger_type == p.TIME_BASED


def test_audit_chain_records_every_step_and_detects_tampering():
    trigger, clock = make({"require_manual_approval": True}, StubMonitor(avg_drift_score=0.4),
                          handler=Recorder())
    trigger.check_once(wait=True)
    trigger.approve(trigger.pending_approvals()[0]["id"])
    clock.now += 60
    trigger.check_once(wait=True)
    actions = [e["action"] for e in trigger.store.audit_entries()]
    assert actions == ["approval_requested", "approved", "run_started", "run_succeeded", "blocked"]
    assert trigger.store.verify_audit().ok

    conn = sqlite3.connect(trigger.store.path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE retrain_audit SET payload='{}' WHERE id=3")
    conn.execute("DROP TRIGGER retrain_audit_no_update")
    conn.execute("UPDATE retrain_audit SET payload=replace(payload, 'handler', 'command') WHERE id=3")
    conn.commit()
    conn.close()
    result = RetrainStore("model-a").verify_audit()
    assert (result.ok, result.first_bad_id) == (False, 3)
    assert "modified" in result.problem


def test_audit_detects_a_deleted_entry():
    trigger, clock = make(handler=Recorder())
    for i in range(3):
        clock.now = T0 + i * 7 * H
        trigger.force_retrain()
    conn = sqlite3.connect(trigger.store.path)
    conn.execute("DROP TRIGGER retrain_audit_no_delete")
    conn.execute("DELETE FROM retrain_audit WHERE id=4")
    conn.commit()
    conn.close()
    result = RetrainStore("model-a").verify_audit()
    assert (result.ok, result.first_bad_id) == (False, 5)


def test_config_accepts_dicts_and_refuses_nonsense():
    guide_yaml_section = {"min_new_samples": 1000, "max_days_without_retrain": 7,
                          "accuracy_degradation_threshold": 0.05, "min_hours_between_retrains": 6,
                          "max_retrains_per_day": 4, "data_directories": ["data/raw", "data/processed"]}
    config = RetrainingTriggerConfig.from_dict(guide_yaml_section)
    assert config.data_directories == ["data/raw", "data/processed"] and config.require_manual_approval is False
    defaults = RetrainingTriggerConfig()
    assert (defaults.new_data_check_interval, defaults.error_rate_threshold, defaults.data_quality_threshold,
            defaults.missing_data_threshold, defaults.new_study_threshold, defaults.imaging_drift_threshold,
            defaults.image_quality_threshold, defaults.modality_change_trigger) == (
        3600, 0.02, 0.95, 0.1, 100, 0.15, 0.8, True)
    assert RetrainingTriggerConfig(retrain_command="python train.py --x 'a b'").retrain_command == [
        "python", "train.py", "--x", "a b"]
    with pytest.raises(ValueError, match="unknown retraining config keys: min_new_sample"):
        RetrainingTriggerConfig.from_dict({"min_new_sample": 5})
    with pytest.raises(ValueError, match="max_retrains_per_day"):
        RetrainingTriggerConfig(max_retrains_per_day=0)
    with pytest.raises(ValueError, match="min_hours_between_retrains"):
        RetrainingTriggerConfig(min_hours_between_retrains=-1)
    with pytest.raises(ValueError, match="new_data_check_interval"):
        RetrainingTriggerConfig(new_data_check_interval=0)
    with pytest.raises(TypeError):
        create_data_trigger("m", config=[1, 2])


def test_a_monitor_that_fails_gives_no_evidence_but_time_still_counts():
    class Broken:
        baseline_metrics = {"accuracy": 0.9}

        def get_monitoring_summary(self, hours=24):
            raise ConnectionError("monitor down")

    trigger, clock = make(None, Broken(), handler=Recorder())
    assert trigger.check_once(wait=True).action == p.NONE
    clock.now += 7 * DAY
    assert trigger.check_once(wait=True).trigger_type == p.TIME_BASED


def test_summary_window_starts_at_the_last_successful_retrain():
    monitor = StubMonitor()
    trigger, clock = make(None, monitor, handler=Recorder())
    trigger.check_once()
    assert monitor.calls[-1] == 24
    trigger.force_retrain()
    clock.now += 2.5 * H
    trigger.check_once()
    assert monitor.calls[-1] == 3


def test_background_runs_share_one_worker_thread():
    import threading

    threads = []

    def handler(trigger_type, reason):
        threads.append(threading.get_ident())
        return True

    trigger, clock = make({"max_days_without_retrain": 0, "min_hours_between_retrains": 0,
                           "max_retrains_per_day": 100}, handler=handler)
    for i in range(5):
        clock.now = T0 + i * 60
        assert trigger.check_once().action == p.RUN
        assert trigger.wait_for_run(timeout=10)
    assert len(threads) == 5 and len(set(threads)) == 1
    assert threads[0] != threading.get_ident()
