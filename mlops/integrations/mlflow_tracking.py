"""Log what the engines measure to an MLflow tracking server, when (and only when) one is given.

Why it exists: the constructors of the original system took ``mlflow_tracking_uri``; teams running
MLflow expect the production monitor's batch metrics, the A/B manager's experiment results and each
retraining run to show up there next to their training runs. The engines call a :class:`Tracker`;
without a URI it is a no-op that never imports MLflow, so nothing changes for anyone else.

Tracking is a side channel: a tracking server that is down must not fail a prediction batch, an
experiment stop or a retrain. Each failure is logged as a warning and counted (``failures``,
``last_error``) rather than raised. Every call goes through an ``MlflowClient`` bound to the given
server, so the process-global ``mlflow.set_tracking_uri`` of the user's own code is left alone.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

logger = logging.getLogger(__name__)

MAX_PARAM_CHARS = 6000
MAX_TAG_CHARS = 5000
# After a failure (MLflow's client has already retried with backoff by then), calls within this
# many seconds are skipped and counted instead of each waiting for a dead server again.
RETRY_SECONDS = 60.0


def mlflow_installed() -> bool:
    return importlib.util.find_spec("mlflow") is not None


def end_run(client: Any, run_id: str, status: str) -> None:
    """``set_terminated`` without MLflow's "View run ... at" lines on stdout (they would corrupt
    ``--json`` output and the stdout of the user's program); they go to stderr instead."""
    with contextlib.redirect_stdout(sys.stderr):
        client.set_terminated(run_id, status=status)


def _finite(metrics: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, bool):
            value = float(value)
        if isinstance(value, int | float) and math.isfinite(float(value)):
            out[key] = float(value)
        elif hasattr(value, "item"):  # numpy scalar
            item = value.item()
            if isinstance(item, int | float) and math.isfinite(float(item)):
                out[key] = float(item)
    return out


class Tracker:
    """Runs and metrics on one MLflow server. ``Tracker(None)`` (or MLflow not installed) is disabled.

    ``clock`` (epoch seconds) stamps the metrics, so tests do not depend on the wall clock.
    """

    def __init__(self, tracking_uri: str | None, *, clock: Callable[[], float] = time.time,
                 component: str = "mlops", retry_seconds: float = RETRY_SECONDS) -> None:
        self.tracking_uri = tracking_uri or None
        self.component = component
        self.clock = clock
        self.retry_seconds = retry_seconds
        self.failures = 0
        self.skipped = 0
        self._retry_at = 0.0
        self.last_error: str | None = None
        self._client: Any = None
        self._experiments: dict[str, str] = {}
        self._open_runs: dict[str, str] = {}
        self._steps: dict[str, int] = {}
        self._lock = threading.Lock()
        self.enabled = bool(self.tracking_uri)
        if self.enabled and not mlflow_installed():
            logger.warning("%s: mlflow_tracking_uri=%s given but MLflow is not installed "
                           "(pip install 'mlops-operator[mlflow]'); nothing is tracked",
                           component, self.tracking_uri)
            self.enabled = False

    # ------------------------------------------------------------------ plumbing
    def _mlflow_client(self) -> Any:
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return self._client

    def _experiment_id(self, name: str) -> str:
        exp_id = self._experiments.get(name)
        if exp_id is None:
            mc = self._mlflow_client()
            found = mc.get_experiment_by_name(name)
            if found is not None:
                exp_id = found.experiment_id
            else:
                from mlflow.exceptions import MlflowException

                try:
                    exp_id = mc.create_experiment(name)
                except MlflowException:  # created concurrently by another process
                    exp_id = mc.get_experiment_by_name(name).experiment_id
            self._experiments[name] = exp_id
        return exp_id

    def _available(self) -> bool:
        if not self.enabled:
            return False
        if self.clock() < self._retry_at:
            self.skipped += 1
            return False
        return True

    def _failed(self, what: str, exc: BaseException) -> None:
        self.failures += 1
        self._retry_at = self.clock() + self.retry_seconds
        self.last_error = f"{what}: {type(exc).__name__}: {exc}"
        logger.warning("%s: MLflow tracking at %s failed (%s); continuing without it",
                       self.component, self.tracking_uri, self.last_error)

    def _log(self, run_id: str, metrics: Mapping[str, Any], params: Mapping[str, Any] | None,
             tags: Mapping[str, Any] | None, step: int) -> None:
        from mlflow.entities import Metric, Param, RunTag

        now = int(self.clock() * 1000)
        self._mlflow_client().log_batch(
            run_id,
            metrics=[Metric(k, v, now, step) for k, v in _finite(metrics).items()],
            params=[Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in (params or {}).items() if v is not None],
            tags=[RunTag(k, str(v)[:MAX_TAG_CHARS]) for k, v in (tags or {}).items() if v is not None],
        )

    # ------------------------------------------------------------------ API
    def log_run(self, experiment: str, run_name: str, *, metrics: Mapping[str, Any] | None = None,
                params: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None,
                success: bool = True) -> str | None:
        """One finished run (FINISHED, or FAILED when ``success`` is false); returns its id."""
        with self._lock:
            if not self._available():
                return None
            try:
                mc = self._mlflow_client()
                run = mc.create_run(self._experiment_id(experiment), run_name=run_name,
                                    tags={"mlops.component": self.component})
                run_id = run.info.run_id
                try:
                    self._log(run_id, metrics or {}, params, tags, 0)
                finally:
                    end_run(mc, run_id, "FINISHED" if success else "FAILED")
                return run_id
            except Exception as exc:  # noqa: BLE001 - tracking must never fail the engine; counted
                self._failed(f"log run {run_name!r}", exc)
                return None

    def log_step(self, experiment: str, key: str, run_name: str, metrics: Mapping[str, Any], *,
                 params: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None) -> str | None:
        """Append metrics as the next step of a long-lived run (one per ``key``, opened on first use,
        closed by :meth:`close`); returns the run id."""
        with self._lock:
            if not self._available():
                return None
            try:
                run_id = self._open_runs.get(key)
                first = run_id is None
                if run_id is None:
                    run = self._mlflow_client().create_run(self._experiment_id(experiment), run_name=run_name,
                                                           tags={"mlops.component": self.component})
                    run_id = run.info.run_id
                    self._open_runs[key] = run_id
                step = self._steps.get(key, 0)
                self._log(run_id, metrics, params if first else None, tags, step)
                self._steps[key] = step + 1
                return run_id
            except Exception as exc:  # noqa: BLE001 - tracking must never fail the engine; counted
                self._failed(f"log metrics to {run_name!r}", exc)
                return None

    def close(self) -> None:
        """Mark the long-lived runs FINISHED."""
        if not self.enabled:
            return
        with self._lock:
            runs, self._open_runs = self._open_runs, {}
            for run_id in runs.values():
                try:
                    end_run(self._mlflow_client(), run_id, "FINISHED")
                except Exception as exc:  # noqa: BLE001 - closing is best effort; counted
                    self._failed(f"close run {run_id}", exc)

    # ------------------------------------------------------------------ what the engines log
    def monitor_batch(self, model_name: str, metrics: Mapping[str, Any], alerts: list[Mapping[str, Any]]) -> str | None:
        """A production-monitor batch: the next step of the run ``monitor <model> <version>`` in the
        experiment ``<model>-monitoring``."""
        if not self.enabled:
            return None
        version = str(metrics.get("model_version") or "current")
        values = {k: v for k, v in metrics.items() if k not in ("timestamp", "model_version")}
        values["alerts_triggered"] = len(alerts)
        severities = sorted({str(a.get("severity")) for a in alerts})
        return self.log_step(f"{model_name}-monitoring", f"{model_name}:{version}", f"monitor {model_name} {version}",
                             values, params={"model_name": model_name, "model_version": version},
                             tags={"mlops.last_alert_severities": ",".join(severities) or "none"})

    def ab_result(self, result: Mapping[str, Any], config: Mapping[str, Any], *, status: str,
                  reason: str | None = None) -> str | None:
        """An A/B experiment's result as one run (experiment ``ab-<experiment name>``): samples, the
        metrics of each arm, p-values, confidence intervals; winner and recommendation as tags."""
        if not self.enabled:
            return None
        name = str(result.get("experiment_name"))
        metrics: dict[str, Any] = {"samples_a": result.get("samples_a"), "samples_b": result.get("samples_b")}
        for arm in ("a", "b"):
            for key, value in (result.get(f"metrics_{arm}") or {}).items():
                metrics[f"{key}_{arm}"] = value
        for key, value in (result.get("p_values") or {}).items():
            metrics[f"p_value_{key}"] = value
        for key, value in (result.get("statistical_significance") or {}).items():
            metrics[f"significant_{key}"] = bool(value)
        for key, interval in (result.get("confidence_intervals") or {}).items():
            if isinstance(interval, list | tuple) and len(interval) == 2:
                metrics[f"ci_low_{key}"], metrics[f"ci_high_{key}"] = interval
        params = {k: config.get(k) for k in ("model_a_version", "model_b_version", "traffic_split",
                                              "primary_metric", "significance_level", "min_samples_per_variant",
                                              "ramping_strategy") if k in config}
        tags = {"mlops.experiment": name, "mlops.status": status, "mlops.winner": result.get("winner") or "none",
                "mlops.recommendation": result.get("recommendation"), "mlops.end_reason": reason}
        return self.log_run(f"ab-{name}", f"{name} {status}", metrics=metrics, params=params, tags=tags)

    def retrain_run(self, model_name: str, event: Mapping[str, Any]) -> str | None:
        """One retraining run (experiment ``<model>-retraining``): trigger, reason and data size as
        parameters; performance before/after, success and duration as metrics; FAILED when it failed."""
        if not self.enabled:
            return None
        success = bool(event.get("success"))
        metrics = {"success": success, "data_size": event.get("data_size"),
                   "performance_before": event.get("performance_before"),
                   "performance_after": event.get("performance_after"),
                   "duration_seconds": event.get("duration_seconds")}
        params = {"trigger_type": event.get("trigger_type"), "trigger_reason": event.get("trigger_reason"),
                  "data_size": event.get("data_size"), "previous_model_version": event.get("previous_model_version")}
        tags = {"mlops.event_id": event.get("id"), "mlops.new_model_version": event.get("new_model_version"),
                "mlops.error_message": event.get("error_message")}
        return self.log_run(f"{model_name}-retraining", f"retrain {model_name} #{event.get('id')}",
                            metrics=metrics, params=params, tags=tags, success=success)
