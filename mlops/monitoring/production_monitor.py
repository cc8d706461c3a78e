"""Production monitoring of one model: per-batch performance, latency, throughput, error rate, data
drift, concept drift and data quality, with alerts, a durable history and a background checker.

Why it exists: this is the guide's ``create_production_monitor`` API (see
``docs/monitoring.md``) without the original's defects: ``total_predictions`` counts predictions,
not batches; unlabelled batches leave accuracy alone; the error rate comes from the failures the
caller reports; accuracy drops are judged against a *measured* baseline accuracy; one condition
does not raise an alert on every batch (cooldown); and the history lives in SQLite per model under
``$MLOPS_HOME``, committed before :meth:`ProductionMonitor.log_prediction_batch` returns, so a
restarted (or SIGKILLed) process sees every acknowledged batch.

Alerts are evaluated again and again (every batch, every window check), so each statistical alert
uses a per-evaluation level that bounds false alarms over a horizon of ``alert_horizon``
evaluations (1,000 by default; Bonferroni): feature drift at ``drift_alpha / alert_horizon`` (family-
wise over columns, 5e-5 by default) and accuracy drops and concept drift at
``accuracy_significance_level / alert_horizon`` (1e-5 by default; an exact test that includes the
baseline's own sampling error). So over any 1,000 evaluations a healthy model raises a drift alert
with probability at most ``drift_alpha`` and an accuracy alert with probability at most
``accuracy_significance_level`` (docs/statistics.md).

The rules are in :mod:`mlops.core.alerts`, the statistics in :mod:`mlops.core.drift`,
:mod:`mlops.core.quality` and :mod:`mlops.core.classification`; this module measures, records and
dispatches.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from mlops.core.alerts import (
    CRITICAL,
    INFO,
    SEVERITIES,
    WARNING,
    Alert,
    AlertConfig,
    AlertInputs,
    apply_cooldown,
    evaluate_alerts,
    status_from_severities,
)
from mlops.core.classification import classification_metrics
from mlops.core.config import alert_config_from_mapping
from mlops.core.drift import concept_drift_test
from mlops.core.profile import BaselineProfile, ProfileVersionError
from mlops.core.quality import assess_data_quality
from mlops.integrations.mlflow_tracking import Tracker
from mlops.monitoring.drift_detection import DriftMonitor
from mlops.store.monitoring_store import AlertRecord, BatchRecord, MonitoringStore

__all__ = [
    "AlertConfig",
    "MonitoringMetrics",
    "ProductionMonitor",
    "create_production_monitor",
]

logger = logging.getLogger(__name__)

AlertHandler = Callable[[str, dict[str, Any]], Any]

_SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}
# Throughput is predictions over this trailing window divided by its length.
THROUGHPUT_WINDOW_SECONDS = 60.0


@dataclass
class MonitoringMetrics:
    """What one batch measured. Fields that could not be measured (no labels, no baseline) are
    ``None`` rather than a made-up 0."""

    timestamp: datetime
    model_version: str
    accuracy: float | None
    precision: float | None
    recall: float | None
    f1_score: float | None
    latency_ms: float | None
    throughput_rps: float
    error_rate: float | None
    drift_score: float | None
    data_quality_score: float | None
    prediction_count: int
    feature_drift_detected: bool = False
    concept_drift_detected: bool = False
    labelled_count: int = 0
    error_count: int = 0
    drifted_features: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["timestamp"] = self.timestamp.isoformat()
        return out


def _coerce_alert_config(value: AlertConfig | Mapping[str, Any] | None) -> AlertConfig:
    if value is None:
        return AlertConfig()
    if isinstance(value, AlertConfig):
        return value
    if isinstance(value, Mapping):
        return alert_config_from_mapping(value)
    raise TypeError(f"alert_config must be an AlertConfig or a dict, not {type(value).__name__}")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _alert_dict(alert: AlertRecord) -> dict[str, Any]:
    return {"timestamp": _iso(alert.ts), "alert_type": alert.alert_type, "severity": alert.severity,
            "message": alert.message, "value": alert.value, "threshold": alert.threshold}


def _to_frame(features: Any, columns: Sequence[str] | None) -> pd.DataFrame:
    if isinstance(features, pd.DataFrame):
        return features
    if isinstance(features, pd.Series):
        return features.to_frame().T
    if isinstance(features, np.ndarray):
        array = features.reshape(1, -1) if features.ndim == 1 else features
        if columns is not None and array.shape[1] == len(columns):
            return pd.DataFrame(array, columns=list(columns))
        return pd.DataFrame(array)
    if isinstance(features, Mapping):
        return pd.DataFrame(features)
    return pd.DataFrame(list(features))


def _labelled_mask(labels: np.ndarray) -> np.ndarray:
    return ~pd.isna(pd.Series(labels, dtype=object)).to_numpy()


class ProductionMonitor:
    """Monitors one model (see the module docstring).

    ``redis_host`` and ``redis_port`` are accepted for compatibility with the original API and
    ignored: state lives in SQLite under ``$MLOPS_HOME/<model_name>/``. With ``mlflow_tracking_uri``
    (and MLflow installed) each batch's metrics are also logged there (mlops.integrations.mlflow_tracking).
    ``clock`` (epoch seconds) is injectable so time-based behaviour is tested without sleeping.
    """

    def __init__(
        self,
        model_name: str,
        mlflow_tracking_uri: str | None = None,
        redis_host: str | None = None,
        redis_port: int | None = None,
        alert_config: AlertConfig | Mapping[str, Any] | None = None,
        *,
        clock: Callable[[], float] = time.time,
        store: MonitoringStore | None = None,
        retention_days: float = 30.0,
        drift_alpha: float = 0.05,
        baseline_window: int = 100,
        status_window_seconds: float = 3600.0,
        alert_horizon: int = 1000,
    ) -> None:
        if baseline_window < 1:
            raise ValueError("baseline_window must be at least 1")
        if int(alert_horizon) < 1:
            raise ValueError("alert_horizon must be at least 1")
        self.alert_horizon = int(alert_horizon)
        self.model_name = model_name
        self.mlflow_tracking_uri = mlflow_tracking_uri
        self.tracker = Tracker(mlflow_tracking_uri, clock=clock, component="production_monitor")
        self.redis_host = redis_host
        self.redis_port = redis_port
        self.alert_config = alert_config  # type: ignore[assignment]  (the property coerces)
        self.clock = clock
        self.drift_alpha = drift_alpha
        self.baseline_window = baseline_window
        self.status_window_seconds = status_window_seconds
        self.store = store or MonitoringStore(model_name, retention_seconds=retention_days * 86400.0)
        self._lock = threading.RLock()
        self._handlers: list[tuple[AlertHandler, str]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._batches_since_prune = 0
        self.drift_monitor: DriftMonitor | None = None
        self.baseline_profile: BaselineProfile | None = None
        self.baseline_metrics: dict[str, Any] = {}
        self._load_baseline()

    @classmethod
    def from_config(cls, model_name: str, config: Any, **kwargs: Any) -> ProductionMonitor:
        """A monitor configured by a validated ``MLOpsConfig`` (``mlops.monitoring.config.load_config``)
        or its ``production.monitoring`` section: alert thresholds, retention and drift alpha.
        Start its checker with ``start_monitoring(section.interval_seconds)``."""
        section = getattr(getattr(config, "production", None), "monitoring", config)
        return cls(
            model_name,
            alert_config=section.alert_config.to_alert_config(),
            retention_days=section.retention_days,
            drift_alpha=section.drift_alpha,
            **kwargs,
        )

    # -- configuration ---------------------------------------------------------------------------

    @property
    def alert_config(self) -> AlertConfig:
        return self._alert_config

    @alert_config.setter
    def alert_config(self, value: AlertConfig | Mapping[str, Any] | None) -> None:
        self._alert_config = _coerce_alert_config(value)

    def _load_baseline(self) -> None:
        stored = self.store.baseline()
        self.baseline_metrics = dict(stored.get("metrics") or {})
        profile = stored.get("profile")
        if profile:
            try:
                self.baseline_profile = BaselineProfile.from_dict(profile)
            except ProfileVersionError as exc:
                # Refused, not silently used: drift and quality stay off until the baseline is set
                # again from data, and the reason is visible in baseline_metrics.
                logger.warning("monitor %s: stored baseline profile refused: %s", self.model_name, exc)
                self.baseline_metrics["profile_error"] = str(exc)
                return
            self.drift_monitor = DriftMonitor(self.baseline_profile, alpha=self.drift_level)

    @property
    def drift_level(self) -> float:
        """Family-wise level of one drift check: ``drift_alpha`` spread over ``alert_horizon`` checks."""
        return self.drift_alpha / self.alert_horizon

    @property
    def accuracy_level(self) -> float:
        """Level of one accuracy test: ``accuracy_significance_level`` spread over ``alert_horizon``."""
        return self.alert_config.accuracy_significance_level / self.alert_horizon

    @property
    def baseline_accuracy(self) -> float | None:
        return self.baseline_metrics.get("accuracy")

    def set_baseline_metrics(
        self,
        baseline_data: Any,
        baseline_labels: Any = None,
        model_version: str = "baseline",
        *,
        baseline_predictions: Any = None,
    ) -> dict[str, Any]:
        """Set the reference for drift and data quality (``baseline_data``) and the baseline
        accuracy: measured from ``baseline_predictions`` against ``baseline_labels`` when both are
        given, otherwise from the first ``baseline_window`` labelled predictions logged after this
        call. Re-setting the same data keeps an accuracy already measured."""
        frame = _to_frame(baseline_data, None)
        if frame.empty:
            raise ValueError("baseline_data is empty")
        drift_monitor = DriftMonitor(frame, alpha=self.drift_level)
        profile_dict = drift_monitor.profile.to_dict()
        now = self.clock()
        metrics: dict[str, Any] = {
            "model_version": model_version,
            "set_at": now,
            "set_at_iso": _iso(now),
            "n_rows": len(frame),
            "columns": [str(c) for c in frame.columns],
            "accuracy": None,
            "accuracy_source": "pending: first labelled window",
            "accuracy_n": 0,
        }
        if baseline_labels is not None:
            labels = np.asarray(baseline_labels)
            if len(labels) != len(frame):
                raise ValueError(f"baseline_labels has {len(labels)} rows but baseline_data has {len(frame)}")
            values, counts = np.unique(labels.astype(str), return_counts=True)
            metrics["label_distribution"] = {v: int(c) / len(labels) for v, c in zip(values, counts, strict=True)}
            if baseline_predictions is not None:
                scores = classification_metrics(labels, np.asarray(baseline_predictions))
                metrics.update(
                    accuracy=scores.accuracy, precision=scores.precision, recall=scores.recall,
                    f1_score=scores.f1_score, accuracy_source="baseline predictions", accuracy_n=scores.n,
                )
        with self._lock:
            previous = self.store.baseline()
            if (
                metrics["accuracy"] is None
                and previous.get("profile") == profile_dict
                and (previous.get("metrics") or {}).get("accuracy") is not None
            ):
                metrics = previous["metrics"]
            self.store.set_baseline({"metrics": metrics, "profile": profile_dict}, now)
            self.baseline_metrics = metrics
            self.baseline_profile = drift_monitor.profile
            self.drift_monitor = drift_monitor
        return dict(metrics)

    # -- alert handlers --------------------------------------------------------------------------

    def register_alert_handler(self, handler: AlertHandler, min_severity: str = INFO) -> AlertHandler:
        """Call ``handler(alert_type, metrics)`` for every raised alert of at least ``min_severity``.
        ``metrics`` is the measured metrics dict plus ``severity``, ``message`` and
        ``baseline_accuracy``. Exceptions from handlers are logged, never raised to the caller."""
        if min_severity not in _SEVERITY_RANK:
            raise ValueError(f"min_severity must be one of {SEVERITIES}")
        with self._lock:
            self._handlers.append((handler, min_severity))
        return handler

    def _dispatch(self, raised: list[dict[str, Any]], metrics: dict[str, Any]) -> None:
        with self._lock:
            handlers = list(self._handlers)
        for alert in raised:
            payload = dict(metrics)
            payload.update(severity=alert["severity"], message=alert["message"],
                           baseline_accuracy=self.baseline_accuracy)
            for handler, min_severity in handlers:
                if _SEVERITY_RANK[alert["severity"]] < _SEVERITY_RANK[min_severity]:
                    continue
                try:
                    handler(alert["alert_type"], payload)
                except Exception:
                    logger.exception("alert handler %r failed on %s alert", handler, alert["alert_type"])

    # -- logging batches -------------------------------------------------------------------------

    def log_prediction_batch(
        self,
        features: Any,
        predictions: Any,
        true_labels: Any = None,
        model_version: str = "current",
        latency_ms: float | Sequence[float] = 0.0,
        *,
        error_count: int = 0,
    ) -> dict[str, Any]:
        """Record one batch and return ``{"metrics": {...}, "alerts_triggered": [...]}``.

        ``predictions`` are the successful predictions; ``error_count`` is the number of requests
        of this batch that failed (they have no prediction), so ``error_rate = error_count /
        (len(predictions) + error_count)``. ``true_labels`` may hold ``None``/NaN for rows whose
        outcome is unknown. ``latency_ms`` is the mean per-prediction latency, or one value per
        prediction. The batch is durable when this returns.
        """
        if isinstance(error_count, bool) or int(error_count) != error_count or error_count < 0:
            raise ValueError(f"error_count must be a non-negative integer, got {error_count!r}")
        latencies = np.asarray(latency_ms, dtype=float).reshape(-1)
        if latencies.size == 0 or not np.all(np.isfinite(latencies)) or np.any(latencies < 0):
            raise ValueError("latency_ms must be non-negative finite number(s)")
        frame = _to_frame(features, self.drift_monitor.feature_names if self.drift_monitor else None)
        return self._log(frame, predictions, true_labels, str(model_version), float(latencies.mean()),
                         int(error_count))

    def log_feedback(self, predictions: Any, true_labels: Any, model_version: str = "current") -> dict[str, Any]:
        """Record outcomes that arrived after their predictions were logged (e.g. the server's
        ``/feedback``): they count towards accuracy, precision, recall, F1 and concept drift, but
        not towards ``total_predictions``, latency or error rate (the predictions were counted
        when they were logged)."""
        return self._log(None, predictions, true_labels, str(model_version), None, 0)

    def _log(
        self,
        frame: pd.DataFrame | None,
        predictions: Any,
        true_labels: Any,
        model_version: str,
        mean_latency: float | None,
        error_count: int,
    ) -> dict[str, Any]:
        preds = np.asarray(predictions)
        if preds.ndim == 0:
            preds = preds.reshape(1)
        n = int(len(preds))
        if frame is not None and len(frame) != n:
            raise ValueError(f"features has {len(frame)} rows but predictions has {n}")
        counted = n if frame is not None else 0  # feedback does not add predictions

        accuracy = precision = recall = f1 = None
        labelled = correct = 0
        if true_labels is not None:
            labels = np.asarray(true_labels)
            if labels.ndim == 0:
                labels = labels.reshape(1)
            if len(labels) != n:
                raise ValueError(f"true_labels has {len(labels)} rows but predictions has {n}")
            mask = _labelled_mask(labels)
            if mask.any():
                y_true = labels[mask]
                if y_true.dtype == object:
                    y_true = pd.Series(y_true).infer_objects().to_numpy()
                scores = classification_metrics(y_true, preds[mask])
                accuracy, precision, recall, f1 = scores.accuracy, scores.precision, scores.recall, scores.f1_score
                labelled, correct = scores.n, scores.correct

        drift_score = quality = None
        feature_drift = False
        drifted: list[str] = []
        drift_monitor = self.drift_monitor
        if drift_monitor is not None and frame is not None and len(frame):
            report = drift_monitor.check(frame)
            drift_score = float(report.drift_score)
            feature_drift = bool(report.feature_drift_detected)
            drifted = list(report.drifted_features)
            quality = float(assess_data_quality(drift_monitor.profile, frame).score)

        with self._lock:
            now = self.clock()
            recent = self.store.predictions_since(now - THROUGHPUT_WINDOW_SECONDS)
            throughput = (recent + counted) / THROUGHPUT_WINDOW_SECONDS
            attempts = counted + error_count
            error_rate = error_count / attempts if attempts else None

            baseline_updates: dict[str, Any] = {}
            baseline = self.baseline_metrics
            concept = False
            significant = None
            if baseline.get("accuracy") is None and labelled:
                baseline_updates = self._maybe_measure_baseline(labelled, correct, now)
            elif baseline.get("accuracy") is not None and labelled:
                concept = self._concept_drift(accuracy, labelled)
                significant = self._accuracy_below_baseline(accuracy, labelled)

            metrics = MonitoringMetrics(
                timestamp=datetime.fromtimestamp(now, UTC),
                model_version=model_version,
                accuracy=accuracy,
                precision=precision,
                recall=recall,
                f1_score=f1,
                latency_ms=mean_latency,
                throughput_rps=throughput,
                error_rate=error_rate,
                drift_score=drift_score,
                data_quality_score=quality,
                prediction_count=counted,
                feature_drift_detected=feature_drift,
                concept_drift_detected=concept,
                labelled_count=labelled,
                error_count=error_count,
                drifted_features=drifted,
            )
            inputs = AlertInputs(
                accuracy=accuracy,
                labelled_count=labelled,
                baseline_accuracy=baseline.get("accuracy"),
                error_rate=error_rate,
                latency_ms=mean_latency if attempts else None,
                drift_score=drift_score,
                feature_drift_detected=feature_drift,
                drifted_features=tuple(drifted),
                concept_drift_detected=concept,
                data_quality_score=quality,
                accuracy_drop_significant=significant,
            )
            raised = self._raise(inputs, now, model_version)
            batch = BatchRecord(
                ts=now, model_version=model_version, prediction_count=counted, error_count=error_count,
                labelled_count=labelled, correct_count=correct, accuracy=accuracy, precision=precision,
                recall=recall, f1_score=f1, latency_ms=mean_latency if counted else None,
                throughput_rps=throughput, error_rate=error_rate, drift_score=drift_score,
                data_quality_score=quality, feature_drift_detected=feature_drift, concept_drift_detected=concept,
                drifted_features=drifted,
            )
            self.store.record_batch(batch, raised, {"metrics": baseline_updates} if baseline_updates else None)
            if baseline_updates:
                self.baseline_metrics = baseline_updates
            self._batches_since_prune += 1
            if self._batches_since_prune >= 1000:
                self._batches_since_prune = 0
                self.store.prune(now)

        metrics_dict = metrics.to_dict()
        alerts = [_alert_dict(a) for a in raised]
        self.tracker.monitor_batch(self.model_name, metrics_dict, alerts)
        self._dispatch(alerts, metrics_dict)
        return {"metrics": metrics_dict, "alerts_triggered": alerts}

    def _maybe_measure_baseline(self, labelled: int, correct: int, now: float) -> dict[str, Any]:
        """Baseline accuracy from the first ``baseline_window`` labelled predictions (this batch
        included); returns the new baseline metrics, or {} while the window is not full yet."""
        since = float(self.baseline_metrics.get("set_at", 0.0))
        prior_labelled, prior_correct = self.store.labelled_since(since)
        total, hits = prior_labelled + labelled, prior_correct + correct
        if total < self.baseline_window:
            return {}
        updated = dict(self.baseline_metrics)
        updated.update(
            accuracy=hits / total,
            accuracy_n=total,
            accuracy_source="first labelled window",
            accuracy_measured_at=now,
        )
        updated.setdefault("set_at", since)
        return updated

    def _concept_drift(
        self, accuracy: float | None, labelled: int, min_drop: float | None = None, alpha: float | None = None
    ) -> bool:
        """Is accuracy on ``labelled`` predictions significantly (at ``alpha``, default the
        per-evaluation accuracy level) below the baseline, by more than ``min_drop`` (default: the
        warning drop, the tolerated change)? The baseline's own sampling error is included when it
        was measured (exact test, :func:`mlops.core.drift.concept_drift_test`)."""
        baseline = self.baseline_metrics
        if accuracy is None or not labelled:
            return False
        return concept_drift_test(
            float(baseline["accuracy"]),
            float(accuracy),
            labelled,
            alpha=self.accuracy_level if alpha is None else alpha,
            min_drop=self.alert_config.warning_accuracy_drop if min_drop is None else min_drop,
            baseline_n=int(baseline.get("accuracy_n") or 0) or None,
        ).detected

    def _accuracy_below_baseline(self, accuracy: float | None, labelled: int) -> bool:
        return self._concept_drift(accuracy, labelled, min_drop=0.0, alpha=self.accuracy_level)

    def _raise(self, inputs: AlertInputs, now: float, model_version: str | None) -> list[AlertRecord]:
        candidates = evaluate_alerts(inputs, self.alert_config)
        if not candidates:
            return []
        chosen: list[Alert] = apply_cooldown(
            candidates, self.store.last_alerts(), now, self.alert_config.cooldown_seconds
        )
        return [
            AlertRecord(ts=now, alert_type=a.alert_type, severity=a.severity, message=a.message,
                        value=a.value, threshold=a.threshold, model_version=model_version)
            for a in chosen
        ]

    # -- summaries -------------------------------------------------------------------------------

    def _window_inputs(self, since: float, until: float | None = None) -> tuple[AlertInputs, Any]:
        totals = self.store.window_totals(since, until)
        accuracy = totals.accuracy
        concept = False
        significant = None
        if accuracy is not None and self.baseline_accuracy is not None:
            concept = self._concept_drift(accuracy, totals.labelled)
            significant = self._accuracy_below_baseline(accuracy, totals.labelled)
        inputs = AlertInputs(
            accuracy_drop_significant=significant,
            accuracy=accuracy,
            labelled_count=totals.labelled,
            baseline_accuracy=self.baseline_accuracy,
            error_rate=totals.error_rate,
            latency_ms=totals.latency_ms,
            drift_score=totals.drift_score,
            concept_drift_detected=concept,
            data_quality_score=totals.data_quality,
        )
        return inputs, totals

    def get_monitoring_summary(self, hours: float = 24) -> dict[str, Any]:
        """Totals and prediction-weighted averages over the last ``hours``.

        ``status`` is the worst of the alerts raised in the last ``status_window_seconds`` (capped
        at the period) and of the alert rules applied to the period's pooled metrics:
        CRITICAL, DEGRADED (a warning) or HEALTHY. Averages with nothing to average are ``None``.
        """
        if not hours > 0:
            raise ValueError(f"hours must be positive, got {hours!r}")
        now = self.clock()
        since = now - hours * 3600.0
        inputs, totals = self._window_inputs(since)
        alert_counts = self.store.alert_counts(since)
        recent_since = now - min(hours * 3600.0, self.status_window_seconds)
        recent = self.store.alert_counts(recent_since)
        severities = [s for s, c in recent.items() if c] + [a.severity for a in evaluate_alerts(inputs, self.alert_config)]
        return {
            "period_hours": hours,
            "total_predictions": totals.predictions,
            "total_batches": totals.batches,
            "labelled_predictions": totals.labelled,
            "failed_predictions": totals.errors,
            "avg_accuracy": totals.accuracy,
            "avg_precision": totals.precision,
            "avg_recall": totals.recall,
            "avg_f1_score": totals.f1_score,
            "avg_latency_ms": totals.latency_ms,
            "avg_error_rate": totals.error_rate,
            "avg_drift_score": totals.drift_score,
            "drift_incidents": totals.drift_incidents,
            "avg_data_quality": totals.data_quality,
            "baseline_accuracy": self.baseline_accuracy,
            "alerts": {severity: int(alert_counts.get(severity, 0)) for severity in (CRITICAL, WARNING, INFO)},
            "status": status_from_severities(severities),
        }

    def get_alert_history(self, hours: float = 24, limit: int = 1000) -> list[dict[str, Any]]:
        """Alerts raised in the last ``hours``, newest first."""
        rows = self.store.alerts(self.clock() - hours * 3600.0, limit)
        for row in rows:
            row["timestamp"] = _iso(row["ts"])
        return rows

    # -- background checks -----------------------------------------------------------------------

    def check_window(self, seconds: float) -> list[dict[str, Any]]:
        """Evaluate the alert rules on the pooled metrics of the last ``seconds`` (what the
        background thread does each interval); raises, records and dispatches the alerts that pass
        the cooldown. Catches slow degradation spread over batches too small to judge alone."""
        with self._lock:
            now = self.clock()
            inputs, totals = self._window_inputs(now - seconds, now)
            if totals.batches == 0:
                return []
            raised = self._raise(inputs, now, None)
            if raised:
                self.store.record_alerts(raised)
            self.store.prune(now)
        alerts = [_alert_dict(a) for a in raised]
        if alerts:
            metrics = {
                "timestamp": _iso(now), "model_version": None, "accuracy": inputs.accuracy,
                "latency_ms": inputs.latency_ms, "error_rate": inputs.error_rate, "drift_score": inputs.drift_score,
                "data_quality_score": inputs.data_quality_score, "prediction_count": totals.predictions,
                "labelled_count": totals.labelled, "concept_drift_detected": inputs.concept_drift_detected,
                "window_seconds": seconds,
            }
            self._dispatch(alerts, metrics)
        return alerts

    def start_monitoring(self, interval_seconds: float = 300) -> None:
        """Start a daemon thread that calls :meth:`check_window` every ``interval_seconds``."""
        if not (isinstance(interval_seconds, int | float) and math.isfinite(interval_seconds) and interval_seconds > 0):
            raise ValueError(f"interval_seconds must be a positive number, got {interval_seconds!r}")
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, args=(float(interval_seconds),), name=f"mlops-monitor-{self.model_name}",
                daemon=True,
            )
            self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.check_window(interval)
            except Exception:
                logger.exception("monitoring check for %s failed", self.model_name)

    def stop_monitoring(self, timeout: float = 10.0) -> None:
        """Stop the background thread (returns once it has exited, or after ``timeout``)."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        self._thread = None

    @property
    def is_monitoring(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def close(self) -> None:
        self.stop_monitoring()
        self.tracker.close()
        self.store.close()


def create_production_monitor(
    model_name: str,
    baseline_data: Any = None,
    baseline_labels: Any = None,
    alert_config: AlertConfig | Mapping[str, Any] | None = None,
    *,
    baseline_predictions: Any = None,
    **kwargs: Any,
) -> ProductionMonitor:
    """A :class:`ProductionMonitor` for ``model_name``; with ``baseline_data`` its baseline is set
    (see :meth:`ProductionMonitor.set_baseline_metrics`). ``alert_config`` may be a plain dict (a
    YAML section); unknown keys or wrong types raise :class:`mlops.core.config.ConfigError`."""
    monitor = ProductionMonitor(model_name, alert_config=alert_config, **kwargs)
    if baseline_data is not None:
        monitor.set_baseline_metrics(baseline_data, baseline_labels, baseline_predictions=baseline_predictions)
    return monitor
