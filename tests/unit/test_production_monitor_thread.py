"""The background checker: evaluates recent windows, dispatches alerts, survives failing handlers,
and stops promptly."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest

from mlops.monitoring.production_monitor import create_production_monitor


def small_batches(monitor, rng, count: int, accuracy: float) -> None:
    """Batches of 20 labelled predictions: each too small for an accuracy alert on its own."""
    for _ in range(count):
        labels = rng.integers(0, 2, 20)
        predictions = labels.copy()
        wrong = rng.choice(20, size=20 - int(round(accuracy * 20)), replace=False)
        predictions[wrong] = 1 - predictions[wrong]
        frame = pd.DataFrame({"x": rng.normal(0, 1, 20)})
        result = monitor.log_prediction_batch(frame, predictions, labels)
        assert result["alerts_triggered"] == []


def test_check_window_pools_small_batches_into_an_accuracy_alert():
    rng = np.random.default_rng(3)
    now = [1_800_000_000.0]
    monitor = create_production_monitor("m", clock=lambda: now[0])
    small_batches(monitor, rng, 5, 0.9)  # 100 labels: the measured baseline, 0.9
    assert monitor.baseline_accuracy == pytest.approx(0.9)
    now[0] += 400
    # 500 labels at 0.5, 20 at a time (a baseline from 100 labels is uncertain: the exact test at the
    # per-evaluation level 1e-5 needs a clear drop)
    small_batches(monitor, rng, 25, 0.5)
    alerts = monitor.check_window(300)
    assert {(a["alert_type"], a["severity"]) for a in alerts} >= {("accuracy_drop", "CRITICAL"),
                                                                 ("concept_drift", "CRITICAL")}
    assert monitor.check_window(300) == []  # cooldown
    assert [a["alert_type"] for a in monitor.get_alert_history()].count("accuracy_drop") == 1


def test_background_thread_dispatches_survives_handler_errors_and_stops():
    rng = np.random.default_rng(4)
    frozen = 1_800_000_000.0  # the logged batch stays inside every checked window
    monitor = create_production_monitor("m", alert_config={"cooldown_seconds": 0}, clock=lambda: frozen)
    called = threading.Event()
    failures = []

    def failing(alert_type, metrics):
        failures.append(alert_type)
        raise RuntimeError("boom")

    monitor.register_alert_handler(failing)
    monitor.register_alert_handler(lambda alert_type, metrics: called.set())
    frame = pd.DataFrame({"x": rng.normal(0, 1, 10)})
    monitor.log_prediction_batch(frame, rng.integers(0, 2, 10), latency_ms=900.0)
    called.clear()
    monitor.start_monitoring(interval_seconds=0.05)
    try:
        assert called.wait(timeout=20), "the background check never dispatched an alert"
        assert monitor.is_monitoring  # handler exceptions did not kill the thread
        called.clear()
        assert called.wait(timeout=20), "the thread stopped after a failing handler"
    finally:
        monitor.stop_monitoring()
    assert not monitor.is_monitoring
    assert len(failures) >= 2


def test_stop_is_prompt_with_a_long_interval():
    monitor = create_production_monitor("m")
    monitor.start_monitoring(interval_seconds=3600)
    thread = monitor._thread
    monitor.stop_monitoring(timeout=10)
    assert thread is not None and not thread.is_alive()


def test_start_twice_keeps_one_thread_and_rejects_bad_intervals():
    monitor = create_production_monitor("m")
    with pytest.raises(ValueError, match="interval_seconds"):
        monitor.start_monitoring(interval_seconds=0)
    monitor.start_monitoring(interval_seconds=3600)
    first = monitor._thread
    monitor.start_monitoring(interval_seconds=3600)
    assert monitor._thread is first
    monitor.stop_monitoring()
