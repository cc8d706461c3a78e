"""Alert rules: which measured conditions raise CRITICAL, WARNING or INFO alerts, when a condition
that persists is raised again (cooldown), and the overall status they add up to.

Why it exists: the rules are the product's judgement, so they live apart from the database and the
clock: the monitor measures, this module decides. The guide's "Alert Types" list maps to:

- CRITICAL: accuracy drop > ``critical_accuracy_drop`` below the *measured* baseline accuracy
  (``accuracy_drop``), error rate > ``critical_error_rate`` (``high_error_rate``), latency >
  ``critical_latency_ms`` (``high_latency``), concept drift detected (``concept_drift``).
- WARNING: accuracy drop in (warning, critical], error rate in (warning, critical], latency in
  (warning, critical], feature drift detected on more than ``drift_threshold`` of the columns
  (``feature_drift``).
- INFO: minor performance fluctuation (``accuracy_fluctuation``: accuracy down by more than the
  warning drop, but not significantly so, see below), feature drift detected on a share of columns at or below
  ``drift_threshold``, data quality score below ``data_quality_threshold`` (``data_quality``).
  "New data availability" belongs to the retraining trigger (``mlops.monitoring.data_trigger``).

Accuracy drops are absolute (0.05 = five percentage points) and only judged once at least
``min_labelled_for_accuracy`` labelled predictions are in the window. The monitor also tells
(``AlertInputs.accuracy_drop_significant``) whether a one-sided test finds accuracy below the
baseline at all: on 200 labels at 90% accuracy the standard error is two points, so a two-point
"drop" is as often noise as not. A drop past a threshold that the test cannot distinguish from
noise is an INFO fluctuation, not a WARNING or CRITICAL.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields

CRITICAL = "CRITICAL"
WARNING = "WARNING"
INFO = "INFO"
SEVERITIES = (INFO, WARNING, CRITICAL)
_RANK = {INFO: 0, WARNING: 1, CRITICAL: 2}

HEALTHY = "HEALTHY"
DEGRADED = "DEGRADED"

ACCURACY_DROP = "accuracy_drop"
ACCURACY_FLUCTUATION = "accuracy_fluctuation"
HIGH_ERROR_RATE = "high_error_rate"
HIGH_LATENCY = "high_latency"
CONCEPT_DRIFT = "concept_drift"
FEATURE_DRIFT = "feature_drift"
DATA_QUALITY = "data_quality"
ALERT_TYPES = (
    ACCURACY_DROP,
    ACCURACY_FLUCTUATION,
    HIGH_ERROR_RATE,
    HIGH_LATENCY,
    CONCEPT_DRIFT,
    FEATURE_DRIFT,
    DATA_QUALITY,
)

# Thresholds are compared with a tolerance so that 0.90 - 0.85 (= 0.05000000000000004) does not
# "exceed" a 0.05 threshold.
_EPS = 1e-9


@dataclass
class AlertConfig:
    """Alert thresholds. The first eight fields and their defaults are the original system's API."""

    critical_accuracy_drop: float = 0.05
    warning_accuracy_drop: float = 0.02
    critical_error_rate: float = 0.02
    warning_error_rate: float = 0.01
    critical_latency_ms: float = 500.0
    warning_latency_ms: float = 200.0
    drift_threshold: float = 0.1
    data_quality_threshold: float = 0.95
    cooldown_seconds: float = 300.0
    min_labelled_for_accuracy: int = 30
    # One-sided test "accuracy is below the baseline" that a drop must pass to be more than INFO:
    # the false-alarm rate of accuracy alerts per evaluated batch or window.
    accuracy_significance_level: float = 0.01

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{f.name}: expected a finite number, got {value!r}")
            if value < 0:
                raise ValueError(f"{f.name}: must be >= 0, got {value!r}")
        for name in ("critical_accuracy_drop", "warning_accuracy_drop", "critical_error_rate",
                     "warning_error_rate", "drift_threshold", "data_quality_threshold",
                     "accuracy_significance_level"):
            if getattr(self, name) > 1:
                raise ValueError(f"{name}: must be a fraction between 0 and 1, got {getattr(self, name)!r}")
        for warning, critical in (
            ("warning_accuracy_drop", "critical_accuracy_drop"),
            ("warning_error_rate", "critical_error_rate"),
            ("warning_latency_ms", "critical_latency_ms"),
        ):
            if getattr(self, warning) > getattr(self, critical):
                raise ValueError(
                    f"{warning}: must not exceed {critical} "
                    f"({getattr(self, warning)!r} > {getattr(self, critical)!r})"
                )


@dataclass(frozen=True)
class AlertInputs:
    """What was measured over one batch or window. ``None`` means "not measured"."""

    accuracy: float | None = None
    labelled_count: int = 0
    baseline_accuracy: float | None = None
    error_rate: float | None = None
    latency_ms: float | None = None
    drift_score: float | None = None
    feature_drift_detected: bool = False
    drifted_features: tuple[str, ...] = ()
    concept_drift_detected: bool = False
    data_quality_score: float | None = None
    accuracy_drop_significant: bool | None = None  # None: not tested, judge by magnitude alone


@dataclass(frozen=True)
class Alert:
    alert_type: str
    severity: str
    message: str
    value: float | None = None
    threshold: float | None = None


def _exceeds(value: float, threshold: float) -> bool:
    return value - threshold > _EPS


def evaluate_alerts(inputs: AlertInputs, config: AlertConfig) -> list[Alert]:
    """Every alert condition that holds for ``inputs``, at most one per alert type."""
    alerts: list[Alert] = []
    if (
        inputs.accuracy is not None
        and inputs.baseline_accuracy is not None
        and inputs.labelled_count >= config.min_labelled_for_accuracy
    ):
        drop = inputs.baseline_accuracy - inputs.accuracy
        detail = (
            f"accuracy {inputs.accuracy:.3f} is {drop:.3f} below the baseline "
            f"{inputs.baseline_accuracy:.3f} ({inputs.labelled_count} labelled predictions)"
        )
        if not _exceeds(drop, config.warning_accuracy_drop):
            pass
        elif inputs.accuracy_drop_significant is False:
            alerts.append(Alert(ACCURACY_FLUCTUATION, INFO, detail + ", within noise", inputs.accuracy,
                                config.warning_accuracy_drop))
        elif _exceeds(drop, config.critical_accuracy_drop):
            alerts.append(Alert(ACCURACY_DROP, CRITICAL, detail, inputs.accuracy, config.critical_accuracy_drop))
        else:
            alerts.append(Alert(ACCURACY_DROP, WARNING, detail, inputs.accuracy, config.warning_accuracy_drop))
    if inputs.error_rate is not None:
        detail = f"error rate {inputs.error_rate:.3%}"
        if _exceeds(inputs.error_rate, config.critical_error_rate):
            alerts.append(Alert(HIGH_ERROR_RATE, CRITICAL, f"{detail} exceeds {config.critical_error_rate:.3%}",
                                inputs.error_rate, config.critical_error_rate))
        elif _exceeds(inputs.error_rate, config.warning_error_rate):
            alerts.append(Alert(HIGH_ERROR_RATE, WARNING, f"{detail} exceeds {config.warning_error_rate:.3%}",
                                inputs.error_rate, config.warning_error_rate))
    if inputs.latency_ms is not None:
        detail = f"latency {inputs.latency_ms:.1f} ms"
        if _exceeds(inputs.latency_ms, config.critical_latency_ms):
            alerts.append(Alert(HIGH_LATENCY, CRITICAL, f"{detail} exceeds {config.critical_latency_ms:.1f} ms",
                                inputs.latency_ms, config.critical_latency_ms))
        elif _exceeds(inputs.latency_ms, config.warning_latency_ms):
            alerts.append(Alert(HIGH_LATENCY, WARNING, f"{detail} exceeds {config.warning_latency_ms:.1f} ms",
                                inputs.latency_ms, config.warning_latency_ms))
    if inputs.concept_drift_detected:
        detail = "concept drift: accuracy is significantly below the baseline"
        if inputs.accuracy is not None and inputs.baseline_accuracy is not None:
            detail += f" ({inputs.accuracy:.3f} vs {inputs.baseline_accuracy:.3f})"
        alerts.append(Alert(CONCEPT_DRIFT, CRITICAL, detail, inputs.accuracy, inputs.baseline_accuracy))
    if inputs.feature_drift_detected:
        share = inputs.drift_score if inputs.drift_score is not None else 0.0
        columns = ", ".join(inputs.drifted_features) or "unknown columns"
        detail = f"feature drift in {share:.1%} of the columns ({columns})"
        severity = WARNING if _exceeds(share, config.drift_threshold) else INFO
        alerts.append(Alert(FEATURE_DRIFT, severity, detail, share, config.drift_threshold))
    if inputs.data_quality_score is not None and inputs.data_quality_score < config.data_quality_threshold - _EPS:
        alerts.append(Alert(
            DATA_QUALITY, INFO,
            f"data quality {inputs.data_quality_score:.3f} is below {config.data_quality_threshold:.3f}",
            inputs.data_quality_score, config.data_quality_threshold,
        ))
    return alerts


def apply_cooldown(
    candidates: Iterable[Alert],
    last_raised: Mapping[str, tuple[float, str]],
    now: float,
    cooldown_seconds: float,
) -> list[Alert]:
    """The candidates to raise now. ``last_raised`` maps an alert type to ``(time, severity)`` of its
    latest raised alert. A type is raised again once ``cooldown_seconds`` have passed, or at once
    when its severity rises (a WARNING turning CRITICAL is news)."""
    raised = []
    for alert in candidates:
        previous = last_raised.get(alert.alert_type)
        if (
            previous is None
            or now - previous[0] >= cooldown_seconds
            or _RANK[alert.severity] > _RANK.get(previous[1], -1)
        ):
            raised.append(alert)
    return raised


def worst_severity(severities: Iterable[str]) -> str | None:
    ranked = [s for s in severities if s in _RANK]
    return max(ranked, key=_RANK.__getitem__) if ranked else None


def status_from_severities(severities: Iterable[str]) -> str:
    """HEALTHY, DEGRADED (a WARNING holds) or CRITICAL (a CRITICAL holds). INFO is healthy."""
    worst = worst_severity(severities)
    if worst == CRITICAL:
        return CRITICAL
    if worst == WARNING:
        return DEGRADED
    return HEALTHY
