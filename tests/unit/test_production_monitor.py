"""ProductionMonitor: counting, averaging, baseline, alerts and handlers (real SQLite in a temp
MLOPS_HOME, injected clock, seeded data)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from mlops.core.config import ConfigError
from mlops.monitoring.production_monitor import (
    AlertConfig,
    MonitoringMetrics,
    ProductionMonitor,
    create_production_monitor,
)

T0 = 1_800_000_000.0


class FakeClock:
    def __init__(self, start: float = T0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def frame(rng: np.random.Generator, n: int, shift: float = 0.0, columns: int = 3) -> pd.DataFrame:
    return pd.DataFrame({f"feature{i + 1}": rng.normal(shift if i == 0 else 0.0, 1, n) for i in range(columns)})


def labelled_batch(rng: np.random.Generator, n: int, accuracy: float) -> tuple[np.ndarray, np.ndarray]:
    """Labels and predictions that agree on exactly round(accuracy * n) rows."""
    labels = rng.integers(0, 2, n)
    predictions = labels.copy()
    wrong = rng.choice(n, size=n - int(round(accuracy * n)), replace=False)
    predictions[wrong] = 1 - predictions[wrong]
    return labels, predictions


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_batches_of_10_20_30_count_60_predictions(rng, clock):
    monitor = create_production_monitor("m", baseline_data=frame(rng, 500), clock=clock)
    for n in (10, 20, 30):
        labels, predictions = labelled_batch(rng, n, 0.8)
        monitor.log_prediction_batch(frame(rng, n), predictions, labels, latency_ms=50.0)
        clock.advance(1)
    summary = monitor.get_monitoring_summary(hours=24)
    assert summary["total_predictions"] == 60
    assert summary["total_batches"] == 3


def test_result_has_every_metrics_field_and_alert_keys(rng, clock):
    monitor = create_production_monitor("m", baseline_data=frame(rng, 500), clock=clock,
                                        alert_config={"critical_latency_ms": 100, "warning_latency_ms": 50})
    result = monitor.log_prediction_batch(frame(rng, 40), rng.integers(0, 2, 40), latency_ms=150.0)
    fields = set(MonitoringMetrics.__dataclass_fields__)
    assert fields <= set(result["metrics"])
    assert result["metrics"]["prediction_count"] == 40
    assert result["metrics"]["accuracy"] is None  # no labels: not measured, not 0
    alerts = result["alerts_triggered"]
    assert all({"timestamp", "alert_type", "severity", "message"} <= set(a) for a in alerts)
    assert ("high_latency", "CRITICAL") in {(a["alert_type"], a["severity"]) for a in alerts}


def test_unlabelled_batches_leave_average_accuracy_alone(rng, clock):
    monitor = create_production_monitor("m", clock=clock)
    labels, predictions = labelled_batch(rng, 50, 0.9)
    monitor.log_prediction_batch(frame(rng, 50), predictions, labels)
    for _ in range(3):
        monitor.log_prediction_batch(frame(rng, 100), rng.integers(0, 2, 100))
    summary = monitor.get_monitoring_summary()
    assert summary["avg_accuracy"] == pytest.approx(0.9)
    assert summary["total_predictions"] == 350
    assert summary["labelled_predictions"] == 50


def test_averages_are_prediction_weighted(rng, clock):
    monitor = create_production_monitor("m", clock=clock)
    l1, p1 = labelled_batch(rng, 10, 0.5)
    l2, p2 = labelled_batch(rng, 90, 1.0)
    monitor.log_prediction_batch(frame(rng, 10), p1, l1, latency_ms=100.0)
    monitor.log_prediction_batch(frame(rng, 90), p2, l2, latency_ms=10.0)
    summary = monitor.get_monitoring_summary()
    assert summary["avg_accuracy"] == pytest.approx(95 / 100)
    assert summary["avg_latency_ms"] == pytest.approx((10 * 100 + 90 * 10) / 100)


def test_partially_labelled_batch_counts_only_known_outcomes(rng, clock):
    monitor = create_production_monitor("m", clock=clock)
    labels = np.array([1, 0, None, 1, None], dtype=object)
    result = monitor.log_prediction_batch(frame(rng, 5), np.array([1, 1, 0, 1, 0]), labels)
    assert result["metrics"]["labelled_count"] == 3
    assert result["metrics"]["accuracy"] == pytest.approx(2 / 3)


def test_error_rate_comes_from_reported_failures(rng, clock):
    monitor = create_production_monitor("m", clock=clock)
    result = monitor.log_prediction_batch(frame(rng, 95), rng.integers(0, 2, 95), error_count=5)
    assert result["metrics"]["error_rate"] == pytest.approx(0.05)
    assert ("high_error_rate", "CRITICAL") in {(a["alert_type"], a["severity"]) for a in result["alerts_triggered"]}
    monitor.log_prediction_batch(frame(rng, 100), rng.integers(0, 2, 100))
    assert monitor.get_monitoring_summary()["avg_error_rate"] == pytest.approx(5 / 200)


def test_throughput_uses_the_injected_clock(rng, clock):
    monitor = create_production_monitor("m", clock=clock)
    monitor.log_prediction_batch(frame(rng, 30), rng.integers(0, 2, 30))
    clock.advance(30)
    result = monitor.log_prediction_batch(frame(rng, 30), rng.integers(0, 2, 30))
    assert result["metrics"]["throughput_rps"] == pytest.approx(60 / 60)
    clock.advance(61)
    result = monitor.log_prediction_batch(frame(rng, 6), rng.integers(0, 2, 6))
    assert result["metrics"]["throughput_rps"] == pytest.approx(6 / 60)


def test_baseline_accuracy_from_baseline_predictions(rng, clock):
    labels, predictions = labelled_batch(rng, 400, 0.85)
    monitor = create_production_monitor("m", baseline_data=frame(rng, 400), baseline_labels=labels,
                                        baseline_predictions=predictions, clock=clock)
    assert monitor.baseline_metrics["accuracy"] == pytest.approx(0.85)
    # alerts are exact tests at a per-evaluation level of 1e-5 (docs/statistics.md), with the
    # baseline's own sampling error included: a 25-point drop on 500 labels is far past it
    l2, p2 = labelled_batch(rng, 500, 0.60)
    result = monitor.log_prediction_batch(frame(rng, 500), p2, l2)
    kinds = {(a["alert_type"], a["severity"]) for a in result["alerts_triggered"]}
    assert ("accuracy_drop", "CRITICAL") in kinds
    assert ("concept_drift", "CRITICAL") in kinds
    assert result["metrics"]["concept_drift_detected"] is True


def test_baseline_accuracy_measured_from_first_labelled_window(rng, clock):
    monitor = create_production_monitor("m", baseline_data=frame(rng, 2000),
                                        baseline_labels=rng.integers(0, 2, 2000), clock=clock, baseline_window=2000)
    assert monitor.baseline_accuracy is None
    for _ in range(2):  # 2 x 1000 = the window
        labels, predictions = labelled_batch(rng, 1000, 0.9)
        result = monitor.log_prediction_batch(frame(rng, 1000), predictions, labels)
        assert [a["alert_type"] for a in result["alerts_triggered"]] == []
    assert monitor.baseline_accuracy == pytest.approx(0.9)
    assert monitor.baseline_metrics["accuracy_n"] == 2000
    # a 3-point drop on 100 labels is within noise: INFO; a 4-point drop on 20,000 labels is real: WARNING
    labels, predictions = labelled_batch(rng, 100, 0.87)
    result = monitor.log_prediction_batch(frame(rng, 100), predictions, labels)
    assert [(a["alert_type"], a["severity"]) for a in result["alerts_triggered"]] == [
        ("accuracy_fluctuation", "INFO")
    ]
    # (alerts are exact tests at a per-evaluation level of 1e-5, including the baseline's own error)
    labels, predictions = labelled_batch(rng, 20000, 0.86)
    result = monitor.log_prediction_batch(frame(rng, 20000), predictions, labels)
    kinds = [(a["alert_type"], a["severity"]) for a in result["alerts_triggered"]]
    assert ("accuracy_drop", "WARNING") in kinds
    assert ("concept_drift", "CRITICAL") not in kinds  # not significantly beyond the tolerated 2 points


def test_cooldown_suppresses_repeats_and_lets_escalation_through(rng, clock):
    config = AlertConfig(cooldown_seconds=300)
    monitor = create_production_monitor("m", clock=clock, alert_config=config)

    def log(latency: float) -> list[tuple[str, str]]:
        result = monitor.log_prediction_batch(frame(rng, 20), rng.integers(0, 2, 20), latency_ms=latency)
        return [(a["alert_type"], a["severity"]) for a in result["alerts_triggered"]]

    assert log(300.0) == [("high_latency", "WARNING")]
    clock.advance(10)
    assert log(300.0) == []
    clock.advance(10)
    assert log(900.0) == [("high_latency", "CRITICAL")]
    clock.advance(10)
    assert log(900.0) == []
    clock.advance(300)
    assert log(900.0) == [("high_latency", "CRITICAL")]
    history = monitor.get_alert_history()
    assert [a["severity"] for a in history] == ["CRITICAL", "CRITICAL", "WARNING"]
    assert monitor.get_monitoring_summary()["alerts"] == {"CRITICAL": 2, "WARNING": 1, "INFO": 0}


def test_handlers_receive_type_and_metrics_and_their_exceptions_are_logged(rng, clock, caplog):
    monitor = create_production_monitor("m", clock=clock)
    calls = []

    def failing(alert_type, metrics):
        raise RuntimeError("pager is down")

    monitor.register_alert_handler(failing)
    monitor.register_alert_handler(lambda alert_type, metrics: calls.append((alert_type, metrics)))
    with caplog.at_level(logging.ERROR):
        result = monitor.log_prediction_batch(frame(rng, 20), rng.integers(0, 2, 20), latency_ms=800.0)
    assert [c[0] for c in calls] == ["high_latency"]
    assert calls[0][1]["latency_ms"] == 800.0 and calls[0][1]["severity"] == "CRITICAL"
    assert result["alerts_triggered"][0]["alert_type"] == "high_latency"
    assert "pager is down" in caplog.text


def test_min_severity_filters_handlers(rng, clock):
    monitor = create_production_monitor("m", clock=clock)
    critical = []
    monitor.register_alert_handler(lambda t, m: critical.append(t), min_severity="CRITICAL")
    monitor.log_prediction_batch(frame(rng, 20), rng.integers(0, 2, 20), latency_ms=300.0)
    assert critical == []
    monitor.log_prediction_batch(frame(rng, 20), rng.integers(0, 2, 20), latency_ms=600.0)
    assert critical == ["high_latency"]


def test_status_reflects_recent_alerts(rng, clock):
    monitor = create_production_monitor("m", clock=clock)
    monitor.log_prediction_batch(frame(rng, 20), rng.integers(0, 2, 20), latency_ms=20.0)
    assert monitor.get_monitoring_summary()["status"] == "HEALTHY"
    monitor.log_prediction_batch(frame(rng, 20), rng.integers(0, 2, 20), latency_ms=250.0)
    assert monitor.get_monitoring_summary(hours=1)["status"] == "DEGRADED"
    monitor.log_prediction_batch(frame(rng, 5), rng.integers(0, 2, 5), error_count=5)
    assert monitor.get_monitoring_summary(hours=1)["status"] == "CRITICAL"
    clock.advance(3 * 3600)
    assert monitor.get_monitoring_summary(hours=1)["status"] == "HEALTHY"


def test_feature_drift_is_detected_and_alerted(rng, clock):
    monitor = create_production_monitor("m", baseline_data=frame(rng, 1000), clock=clock)
    result = monitor.log_prediction_batch(frame(rng, 500, shift=1.0), rng.integers(0, 2, 500))
    metrics = result["metrics"]
    assert metrics["feature_drift_detected"] is True
    assert metrics["drifted_features"] == ["feature1"]
    assert metrics["drift_score"] == pytest.approx(1 / 3)
    assert ("feature_drift", "WARNING") in {(a["alert_type"], a["severity"]) for a in result["alerts_triggered"]}
    assert monitor.get_monitoring_summary()["drift_incidents"] == 1


def test_state_survives_a_new_monitor_object(rng, clock):
    monitor = create_production_monitor("m", baseline_data=frame(rng, 300), clock=clock)
    labels, predictions = labelled_batch(rng, 120, 0.8)
    monitor.log_prediction_batch(frame(rng, 120), predictions, labels)
    monitor.close()
    again = ProductionMonitor("m", clock=clock)
    assert again.get_monitoring_summary()["total_predictions"] == 120
    assert again.baseline_accuracy == pytest.approx(0.8)
    assert again.drift_monitor is not None and again.drift_monitor.feature_names == ["feature1", "feature2", "feature3"]


def test_resetting_the_same_baseline_keeps_the_measured_accuracy(rng, clock):
    base = frame(rng, 300)
    monitor = create_production_monitor("m", baseline_data=base, clock=clock)
    labels, predictions = labelled_batch(rng, 100, 0.8)
    monitor.log_prediction_batch(frame(rng, 100), predictions, labels)
    again = create_production_monitor("m", baseline_data=base, clock=clock)
    assert again.baseline_accuracy == pytest.approx(0.8)
    other = create_production_monitor("m", baseline_data=frame(rng, 300), clock=clock)
    assert other.baseline_accuracy is None


def test_alert_config_dict_with_unknown_key_names_it(clock):
    with pytest.raises(ConfigError, match=r"alert_config\.critcal_latency_ms: unknown key"):
        create_production_monitor("m", alert_config={"critcal_latency_ms": 500}, clock=clock)
    with pytest.raises(ConfigError, match=r"alert_config\.drift_threshold"):
        create_production_monitor("m", alert_config={"drift_threshold": "high"}, clock=clock)


def test_alert_config_is_assignable(clock):
    monitor = create_production_monitor("m", clock=clock)
    monitor.alert_config = {"critical_latency_ms": 1000, "warning_latency_ms": 900}
    assert isinstance(monitor.alert_config, AlertConfig)
    assert monitor.alert_config.critical_latency_ms == 1000


def test_bad_inputs_are_rejected(rng, clock):
    monitor = create_production_monitor("m", clock=clock)
    with pytest.raises(ValueError, match="true_labels"):
        monitor.log_prediction_batch(frame(rng, 3), [0, 1, 0], true_labels=[0, 1])
    with pytest.raises(ValueError, match="error_count"):
        monitor.log_prediction_batch(frame(rng, 3), [0, 1, 0], error_count=-1)
    with pytest.raises(ValueError, match="latency_ms"):
        monitor.log_prediction_batch(frame(rng, 3), [0, 1, 0], latency_ms=float("nan"))
    assert monitor.get_monitoring_summary()["total_predictions"] == 0


def test_feedback_counts_towards_accuracy_not_predictions(rng, clock):
    monitor = create_production_monitor("m", clock=clock)
    predictions = rng.integers(0, 2, 40)
    monitor.log_prediction_batch(frame(rng, 40), predictions, latency_ms=30.0, error_count=2)
    labels = predictions.copy()
    labels[:10] = 1 - labels[:10]
    result = monitor.log_feedback(predictions, labels, model_version="v1")
    assert result["metrics"]["prediction_count"] == 0
    assert result["metrics"]["accuracy"] == pytest.approx(0.75)
    summary = monitor.get_monitoring_summary()
    assert summary["total_predictions"] == 40
    assert summary["avg_accuracy"] == pytest.approx(0.75)
    assert summary["avg_latency_ms"] == pytest.approx(30.0)
    assert summary["avg_error_rate"] == pytest.approx(2 / 42)
