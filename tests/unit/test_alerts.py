"""The pure alert rules: the guide's "Alert Types" list, thresholds relative to the measured
baseline, the cooldown and the status."""

from __future__ import annotations

import pytest

from mlops.core.alerts import (
    Alert,
    AlertConfig,
    AlertInputs,
    apply_cooldown,
    evaluate_alerts,
    status_from_severities,
)

CONFIG = AlertConfig()


def kinds(inputs: AlertInputs, config: AlertConfig = CONFIG) -> set[tuple[str, str]]:
    return {(a.alert_type, a.severity) for a in evaluate_alerts(inputs, config)}


def accuracy(value: float, baseline: float = 0.90, n: int = 1000, significant: bool | None = True) -> AlertInputs:
    return AlertInputs(accuracy=value, labelled_count=n, baseline_accuracy=baseline,
                       accuracy_drop_significant=significant)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.90, set()),
        (0.89, set()),  # a 1-point drop is below the warning threshold
        (0.88, set()),  # exactly 2 points: "drops 2-5%" starts above 2
        (0.87, {("accuracy_drop", "WARNING")}),
        (0.85, {("accuracy_drop", "WARNING")}),  # exactly 5 points is not "> 5%"
        (0.84, {("accuracy_drop", "CRITICAL")}),
        (0.95, set()),  # improvements never alert
    ],
)
def test_accuracy_drop_is_relative_to_the_measured_baseline(value, expected):
    assert kinds(accuracy(value)) == expected


def test_the_same_accuracy_is_fine_or_critical_depending_on_the_baseline():
    assert kinds(accuracy(0.70, baseline=0.71)) == set()
    assert kinds(accuracy(0.70, baseline=0.80)) == {("accuracy_drop", "CRITICAL")}


def test_an_insignificant_drop_is_only_a_fluctuation():
    assert kinds(accuracy(0.80, significant=False)) == {("accuracy_fluctuation", "INFO")}
    assert kinds(accuracy(0.80, significant=None)) == {("accuracy_drop", "CRITICAL")}


def test_accuracy_is_not_judged_without_a_baseline_or_on_too_few_labels():
    assert kinds(AlertInputs(accuracy=0.1, labelled_count=1000)) == set()
    assert kinds(accuracy(0.1, n=CONFIG.min_labelled_for_accuracy - 1)) == set()
    assert kinds(accuracy(0.1, n=CONFIG.min_labelled_for_accuracy)) == {("accuracy_drop", "CRITICAL")}


@pytest.mark.parametrize(
    ("rate", "expected"),
    [(0.0, set()), (0.01, set()), (0.015, {("high_error_rate", "WARNING")}),
     (0.02, {("high_error_rate", "WARNING")}), (0.021, {("high_error_rate", "CRITICAL")})],
)
def test_error_rate(rate, expected):
    assert kinds(AlertInputs(error_rate=rate)) == expected


@pytest.mark.parametrize(
    ("latency", "expected"),
    [(120.0, set()), (200.0, set()), (200.5, {("high_latency", "WARNING")}),
     (500.0, {("high_latency", "WARNING")}), (501.0, {("high_latency", "CRITICAL")})],
)
def test_latency(latency, expected):
    assert kinds(AlertInputs(latency_ms=latency)) == expected


def test_concept_drift_is_critical():
    alerts = evaluate_alerts(AlertInputs(concept_drift_detected=True, accuracy=0.7, baseline_accuracy=0.9), CONFIG)
    assert [(a.alert_type, a.severity) for a in alerts] == [("concept_drift", "CRITICAL")]
    assert "0.700" in alerts[0].message and "0.900" in alerts[0].message


def test_feature_drift_is_a_warning_above_the_drift_threshold_and_info_below():
    wide = AlertInputs(feature_drift_detected=True, drift_score=0.3, drifted_features=("a", "b", "c"))
    narrow = AlertInputs(feature_drift_detected=True, drift_score=0.05, drifted_features=("a",))
    assert kinds(wide) == {("feature_drift", "WARNING")}
    assert kinds(narrow) == {("feature_drift", "INFO")}
    assert kinds(AlertInputs(feature_drift_detected=False, drift_score=0.3)) == set()
    assert "a, b, c" in evaluate_alerts(wide, CONFIG)[0].message


def test_data_quality_issues_are_info():
    assert kinds(AlertInputs(data_quality_score=0.90)) == {("data_quality", "INFO")}
    assert kinds(AlertInputs(data_quality_score=0.95)) == set()


def test_custom_thresholds_apply():
    config = AlertConfig(critical_latency_ms=100.0, warning_latency_ms=50.0, critical_error_rate=0.5,
                         warning_error_rate=0.4)
    assert kinds(AlertInputs(latency_ms=120.0, error_rate=0.45), config) == {
        ("high_latency", "CRITICAL"), ("high_error_rate", "WARNING")}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"warning_latency_ms": 600.0}, "warning_latency_ms: must not exceed critical_latency_ms"),
        ({"drift_threshold": 1.5}, "drift_threshold: must be a fraction"),
        ({"critical_error_rate": -0.1}, "critical_error_rate: must be >= 0"),
        ({"critical_latency_ms": "fast"}, "critical_latency_ms: expected a finite number"),
    ],
)
def test_invalid_alert_config_names_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AlertConfig(**kwargs)


def test_alert_config_defaults_are_the_api_contract():
    config = AlertConfig()
    assert (config.critical_accuracy_drop, config.warning_accuracy_drop, config.critical_error_rate,
            config.warning_error_rate, config.critical_latency_ms, config.warning_latency_ms,
            config.drift_threshold, config.data_quality_threshold) == (0.05, 0.02, 0.02, 0.01, 500.0, 200.0, 0.1, 0.95)


WARN = Alert("high_latency", "WARNING", "slow")
CRIT = Alert("high_latency", "CRITICAL", "very slow")


def test_cooldown_suppresses_the_same_condition_until_it_expires():
    assert apply_cooldown([WARN], {}, now=1000.0, cooldown_seconds=300) == [WARN]
    last = {"high_latency": (1000.0, "WARNING")}
    assert apply_cooldown([WARN], last, now=1299.0, cooldown_seconds=300) == []
    assert apply_cooldown([WARN], last, now=1300.0, cooldown_seconds=300) == [WARN]


def test_escalation_passes_the_cooldown_and_deescalation_does_not():
    assert apply_cooldown([CRIT], {"high_latency": (1000.0, "WARNING")}, 1010.0, 300) == [CRIT]
    assert apply_cooldown([WARN], {"high_latency": (1000.0, "CRITICAL")}, 1010.0, 300) == []


def test_cooldown_is_per_alert_type():
    other = Alert("high_error_rate", "WARNING", "errors")
    assert apply_cooldown([WARN, other], {"high_latency": (1000.0, "WARNING")}, 1010.0, 300) == [other]


def test_status():
    assert status_from_severities([]) == "HEALTHY"
    assert status_from_severities(["INFO"]) == "HEALTHY"
    assert status_from_severities(["INFO", "WARNING"]) == "DEGRADED"
    assert status_from_severities(["WARNING", "CRITICAL", "INFO"]) == "CRITICAL"
