"""The transport-free data plane of the model server (as KServe splits its server).

Why it exists: predicting, signing ids, recording monitoring and experiment outcomes, feedback and
the status reports are the same whatever carries the request; keeping them free of HTTP makes
them testable without a server and lets ``mlops.serving.rest`` only decode, call and encode.
Errors are raised as :class:`mlops.serving.errors.ApiError` and mapped to HTTP there, in one place.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio.to_thread

from mlops.core.arm_tag import tagged_nonce
from mlops.core.prediction_id import InvalidPredictionId, sign_prediction_id, verify_prediction_id
from mlops.serving.api_error import ApiError
from mlops.serving.batching import BatchMode, MicroBatcher
from mlops.serving.events import FeedbackEvent
from mlops.serving.model_store import FeatureError, LoadedModel, ModelLoadError, ModelMetadata, load_model
from mlops.serving.schemas import (
    MAX_BODY_BYTES,
    MAX_NAME,
    PredictRequest,
)
from mlops.serving.sidecar_metrics import label_str
from mlops.serving.signing import SigningKeys, signing_keys
from mlops.serving.sinks import EventSink, MonitorSink, NullSink, PredictionRecord, Recorder, SidecarSink
from mlops.store.ab_store import PredictionRecord as ABRecord

logger = logging.getLogger("mlops.serving.production_server")

ADMIN_TOKEN_ENV = "MLOPS_ADMIN_TOKEN"
MODEL_ROOT_ENV = "MLOPS_MODEL_ROOT"
MODEL_SUFFIXES = (".skops", ".joblib", ".pkl")
THREAD_OFFLOAD_SECONDS = 0.002
MAX_BATCH_ENV = "MLOPS_SERVE_MAX_BATCH"
BATCH_MODE_ENV = "MLOPS_SERVE_BATCH_MODE"
DEFAULT_MAX_BATCH = 64
DEFAULT_BATCH_MODE = "inline"
MAX_LABEL_INT = 2**53
_ROUTES = frozenset({"/predict", "/predict/batch", "/feedback", "/health", "/ready", "/metrics", "/models",
                     "/monitoring/status", "/admin/models", "/admin/rollback", "/openapi.json", "/docs"})
_REASON = re.compile(r"[a-z_]{1,40}")
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000)





async def _in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a slow model call in anyio's worker threads (the pool the HTTP layer uses too)."""
    return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class DataPlane:
    """The loaded versions, the monitoring and A/B engines and every operation on them, without HTTP:
    predict (one row, rows, a decoded request through the micro-batcher), feedback, models, health,
    monitoring and experiment status. Errors are :class:`ApiError` (mapped to HTTP in mlops.serving.errors)."""

    def __init__(
        self,
        model_name: str,
        enable_monitoring: bool = True,
        enable_ab_testing: bool = True,
        *,
        monitor: Any = None,
        ab_manager: Any = None,
        sidecar_url: str | None = None,
        sink: EventSink | None = None,
        admin_token: str | None = None,
        prediction_key: bytes | SigningKeys | None = None,
        registry: Any = None,
        clock: Callable[[], float] = time.time,
        flush_interval: float = 1.0,
        queue_capacity: int = 100_000,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_batch: int | None = None,
        batch_mode: BatchMode | None = None,
        fast_path: bool = True,
        feedback_ledger: Any = "auto",
        ab_state_ttl: float = 1.0,
        allow_unsafe_formats: bool = False,
        model_root: str | os.PathLike[str] | None = None,
        trusted_types: list[str] | None = None,
        body_timeout: float | None = None,
        mlflow_tracking_uri: str | None = None,
    ) -> None:
        self.model_name = model_name
        self.mlflow_tracking_uri = mlflow_tracking_uri  # registry URIs and tracking (mlops.integrations)
        self.enable_monitoring = enable_monitoring
        self.enable_ab_testing = enable_ab_testing
        self.clock = clock
        self.models: dict[str, LoadedModel] = {}
        self.current_model_version: str | None = None
        self._history: list[str] = []
        self._load_lock = threading.Lock()
        self._slow: set[str] = set()
        self.started_at = clock()
        self.request_count = 0
        self.error_count = 0
        self.predictions_by_version: dict[str, int] = {}
        self.feedback_count = 0
        self.feedback_duplicates = 0
        self.feedback_rejected = 0
        self._seen_feedback: OrderedDict[str, None] = OrderedDict()
        self._seen_lock = threading.Lock()
        self.degraded: dict[str, str] = {}
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout  # None: the HTTP layer's default (mlops.serving.http_timeouts)
        self.allow_unsafe_formats = allow_unsafe_formats
        self.trusted_types = list(trusted_types or [])
        root = model_root if model_root is not None else os.environ.get(MODEL_ROOT_ENV) or None
        self.model_root = Path(root).resolve() if root else None
        self._admin_token = admin_token if admin_token is not None else os.environ.get(ADMIN_TOKEN_ENV) or None
        if isinstance(prediction_key, SigningKeys):
            self.signing_keys = prediction_key
        elif prediction_key:
            self.signing_keys = SigningKeys(bytes(prediction_key))
        else:
            self.signing_keys = signing_keys()
        self._key = self.signing_keys.current
        self._ids = itertools.count()
        self._id_prefix = secrets.token_hex(4)
        self.baseline: dict[str, Any] | None = None

        # Durable first-label-wins per prediction id ($MLOPS_HOME/<model>/feedback.db); None: in memory only.
        self.feedback_ledger = None
        if feedback_ledger == "auto":
            try:
                from mlops.store.feedback_store import FeedbackLedger
                from mlops.store.sqlite import model_dir

                self.feedback_ledger = FeedbackLedger(model_dir(model_name) / "feedback.db")
            except Exception as exc:  # noqa: BLE001 - no durable ledger: degraded, feedback deduped in memory
                self._degrade("feedback_ledger", f"cannot open the feedback ledger: {type(exc).__name__}: {exc}")
        elif feedback_ledger is not None:
            self.feedback_ledger = feedback_ledger

        self.monitor = None
        if enable_monitoring and sidecar_url is None and sink is None:
            self.monitor = monitor if monitor is not None else self._create_monitor()
        self.ab_manager = None
        if enable_ab_testing:
            self.ab_manager = ab_manager if ab_manager is not None else self._create_ab_manager()

        if sink is None:
            if not enable_monitoring:
                sink = NullSink()
            elif sidecar_url:
                sink = SidecarSink(sidecar_url)
            elif self.monitor is not None:
                sink = MonitorSink(self.monitor, self._feature_names)
            else:
                sink = NullSink()
        self.sink = sink
        self.recorder = Recorder(sink, capacity=queue_capacity, flush_interval=flush_interval)
        # Experiment predictions are stored by their own group-commit thread, never on the request path.
        self.ab_state_ttl = ab_state_ttl
        self.ab_recorder = Recorder(_ABStoreSink(self.ab_manager) if self.ab_manager is not None else NullSink(),
                                    capacity=queue_capacity, flush_interval=flush_interval)
        self._closed = False
        max_batch = max_batch if max_batch is not None else int(os.environ.get(MAX_BATCH_ENV, DEFAULT_MAX_BATCH))
        mode = batch_mode or os.environ.get(BATCH_MODE_ENV) or DEFAULT_BATCH_MODE
        if mode not in ("inline", "thread"):
            raise ValueError(f"batch_mode must be 'inline' or 'thread', got {mode!r}")
        self.batch_mode: BatchMode = mode  # type: ignore[assignment]
        # max_batch 0 turns micro-batching off (each request predicted alone, as before).
        self.batcher = (MicroBatcher(max_batch, mode_for=self._batch_mode_for) if max_batch > 0 else None)
        self.fast_path = fast_path

        from prometheus_client import CollectorRegistry

        self.registry = registry if registry is not None else CollectorRegistry()
        self.registry.register(_ServerCollector(self))
        from prometheus_client import Histogram

        from mlops.serving.sidecar_metrics import LATENCY_BUCKETS

        self.request_duration = Histogram("mlops_server_request_duration_seconds",
                                          "Time from the request to the end of the answer, per route",
                                          ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self._duration_children: dict[str, Any] = {}
        self.request_errors: dict[tuple[str, str], int] = {}
        self.micro_batch_rows = Histogram("mlops_server_micro_batch_rows", "Rows per model call of the "
                                          "micro-batcher (concurrent /predict requests answered together)",
                                          buckets=BATCH_BUCKETS, registry=self.registry)
        self.batch_rows = Histogram("mlops_server_batch_request_rows", "Rows per /predict/batch request",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        if self.batcher is not None:
            self.batcher.on_batch = self.micro_batch_rows.observe

    def _degrade(self, component: str, reason: str) -> None:
        """Keep serving, but say so: /health reports ``degraded`` with the reason."""
        if self.degraded.get(component) != reason:
            logger.error("degraded (%s): %s", component, reason)
        self.degraded[component] = reason

    # ----------------------------------------------------------------- engines
    def _create_monitor(self) -> Any:
        try:
            from mlops.monitoring.production_monitor import create_production_monitor
        except ImportError as exc:
            logger.warning("in-process monitoring unavailable (%s); predictions will not be recorded", exc)
            return None
        return create_production_monitor(self.model_name, mlflow_tracking_uri=self.mlflow_tracking_uri)

    def _create_ab_manager(self) -> Any:
        try:
            from mlops.monitoring.ab_testing import ABTestingManager
        except ImportError as exc:
            logger.warning("A/B testing unavailable (%s)", exc)
            return None
        return ABTestingManager(self.mlflow_tracking_uri)

    def _batch_mode_for(self, model: LoadedModel) -> BatchMode:
        return "thread" if model.version in self._slow else self.batch_mode

    def _feature_names(self, version: str) -> list[str]:
        model = self.models.get(version)
        return model.names if model else []

    # ----------------------------------------------------------------- versions
    def load_model_version(
        self,
        version: str,
        uri: str | None = None,
        sha256: str | None = None,
        make_current: bool = False,
        *,
        format: str | None = None,
        model: Any = None,
        metadata: ModelMetadata | dict | None = None,
    ) -> dict[str, Any]:
        """Load ``version`` from ``uri`` (verified against ``sha256``) or from an in-memory ``model``.

        The first version loaded becomes current; later ones only when ``make_current`` is true.
        Raises ModelLoadError (nothing changes) when the artifact is refused.
        """
        if model is not None:
            if metadata is None:
                from mlops.serving.model_store import schema_from_estimator

                meta = ModelMetadata(model_name=self.model_name, version=version,
                                     feature_schema=schema_from_estimator(model))
            else:
                meta = metadata if isinstance(metadata, ModelMetadata) else ModelMetadata.model_validate(metadata)
                meta = meta.model_copy(update={"version": version})
            loaded = LoadedModel(model, meta)
        elif uri:
            loaded = load_model(uri, sha256=sha256, fmt=format, version=version or None,  # type: ignore[arg-type]
                                extra_trusted=self.trusted_types, allow_unsafe=self.allow_unsafe_formats,
                                tracking_uri=self.mlflow_tracking_uri)
            version = loaded.version
        else:
            raise ValueError("load_model_version needs a uri or a model")
        slow = self._measure(loaded)
        with self._load_lock:
            self.models[version] = loaded
            if slow:
                self._slow.add(version)
            else:
                self._slow.discard(version)
            if self.current_model_version is None or make_current:
                self._set_current(version)
        logger.info("loaded model version %s (sha256 %s)", version, loaded.metadata.sha256)
        return self._model_info(loaded)

    def _measure(self, model: LoadedModel) -> bool:
        """Warm the model up and decide whether its single-row cost deserves a worker thread."""
        row = [0.0 if f.type == "number" else (f.categories or [""])[0] for f in model.schema.features]
        try:
            model.predict([row])
            start = time.perf_counter()
            for _ in range(3):
                model.predict([row])
            return (time.perf_counter() - start) / 3 > THREAD_OFFLOAD_SECONDS
        except Exception as exc:  # noqa: BLE001 - a model failing on a synthetic row is refused outright
            raise ModelLoadError(f"model {model.version} fails to predict: {type(exc).__name__}: {exc}") from exc

    def _set_current(self, version: str) -> None:
        if self.current_model_version is not None and self.current_model_version != version:
            self._history.append(self.current_model_version)
        self.current_model_version = version

    def rollback_model(self, target: str = "previous_stable") -> dict[str, Any]:
        """Make ``target`` current: a loaded version, or ``previous_stable``/``previous`` (the one
        that was current before). Raises ValueError when there is nothing to roll back to."""
        with self._load_lock:
            before = self.current_model_version
            if target in self.models:
                chosen = target
            elif target in ("previous_stable", "previous"):
                candidates = [v for v in reversed(self._history) if v in self.models and v != before]
                if not candidates:
                    raise ValueError("no previous version to roll back to")
                chosen = candidates[0]
                # Rolling back consumes history so a second rollback goes further back, not forth.
                while self._history and self._history[-1] != chosen:
                    self._history.pop()
                if self._history:
                    self._history.pop()
                self.current_model_version = chosen
                logger.warning("rolled back from %s to %s", before, chosen)
                return {"previous_version": before, "current_model_version": chosen}
            else:
                raise ValueError(f"unknown version {target!r}; loaded: {sorted(self.models)}")
            self._set_current(chosen)
        logger.warning("rolled back from %s to %s", before, chosen)
        return {"previous_version": before, "current_model_version": chosen}

    def _model_info(self, m: LoadedModel) -> dict[str, Any]:
        return {
            "version": m.version,
            "current": m.version == self.current_model_version,
            "sha256": m.metadata.sha256,
            "format": m.metadata.format,
            "features": [f.model_dump() for f in m.schema.features],
            "classes": m.classes,
            "metrics": m.metadata.metrics,
            "offloaded_to_thread": m.version in self._slow,
        }

    # ----------------------------------------------------------------- monitoring
    def setup_baseline_monitoring(self, csv_path: str | os.PathLike[str], label_column: str | None = None) -> dict:
        """Use a CSV of reference features (and, if present, the label column) as the monitor's baseline."""
        import pandas as pd

        path = Path(csv_path)
        if not path.is_file():
            raise FileNotFoundError(f"baseline CSV not found: {path}")
        frame = pd.read_csv(path)
        model = self.models.get(self.current_model_version or "")
        label = label_column or (model.metadata.label if model else None)
        names = [c for c in (model.names if model else frame.columns) if c in frame.columns and c != label]
        features = frame[names]
        labels = frame[label].tolist() if label and label in frame.columns else None
        if self.monitor is not None and hasattr(self.monitor, "set_baseline_metrics"):
            kwargs: dict[str, Any] = {}
            if labels is not None and model is not None and names == model.names:
                # Baseline accuracy is measured: the current model on the labelled baseline rows.
                kwargs["baseline_predictions"] = model.predict(features.to_numpy(dtype=model.dtype).tolist())[0]
            self.monitor.set_baseline_metrics(features, labels, model_version=self.current_model_version or "baseline",
                                              **kwargs)
        self.baseline = {"path": str(path), "rows": len(frame), "features": names, "labelled": labels is not None}
        return self.baseline

    # ----------------------------------------------------------------- predictions
    def _nonce(self) -> str:
        return f"{self._id_prefix}{next(self._ids):x}"

    def _new_id(self, version: str, prediction: Any, nonce: str | None = None) -> str:
        """Signed id; an experiment prediction's nonce is ``<A/B prediction id>|<experiment>``."""
        return sign_prediction_id(self._key, version, str(prediction), nonce or self._nonce())

    def _model(self, version: str | None = None) -> LoadedModel:
        v = version or self.current_model_version
        model = self.models.get(v) if v else None
        if model is None:
            raise ApiError(503, "no_model", "no model version is loaded yet")
        return model

    def _ab_choice(self, name: str, user_id: str | None, features: dict) -> tuple[LoadedModel, dict[str, Any]]:
        """The loaded version that serves ``user_id`` in experiment ``name`` (sticky salted hash; the
        experiment's state is re-read at most every ``ab_state_ttl`` seconds, never per request)."""
        if self.ab_manager is None:
            raise ApiError(404, "unknown_experiment", "A/B testing is disabled on this server", "experiment_name")
        if not user_id:
            raise ApiError(422, "validation_error", "user_id is required with experiment_name", "user_id")
        try:
            plan = self.ab_manager.assign(name, user_id, features, max_age=self.ab_state_ttl)
        except KeyError as exc:
            raise ApiError(404, "unknown_experiment", f"unknown experiment {name!r}", "experiment_name") from exc
        except ValueError as exc:
            if "does not exist" in str(exc):
                raise ApiError(404, "unknown_experiment", f"unknown experiment {name!r}", "experiment_name") from exc
            raise ApiError(409, "experiment_unavailable", f"experiment {name!r}: {exc}", "experiment_name") from exc
        model = self.models.get(str(plan["model_version"]))
        if model is None:
            raise ApiError(409, "experiment_unavailable", f"experiment {name!r} assigns version "
                           f"{plan['model_version']!r}, which is not loaded here", "experiment_name")
        return model, plan

    def _ab_result(self, name: str, user_id: str, model: LoadedModel, plan: dict[str, Any], label: Any,
                   confidence: float | None, latency_seconds: float, now: float) -> dict[str, Any]:
        """Sign the answer and queue the experiment's record (written by the A/B recorder's thread)."""
        ab_id = self._nonce()
        self.ab_recorder.record(ABRecord(ab_id, name, str(user_id), plan["variant"], bool(plan["counted"]),
                                         model.version, label, latency_seconds * 1000.0, now, float(plan["share"]),
                                         int(plan["phase"])))
        return {"prediction": label, "model_version": model.version, "variant": plan["variant"], "user_id": user_id,
                "confidence": confidence, "prediction_id": self._new_id(model.version, label, f"{ab_id}|{name}")}

    def _predict_rows(
        self, feature_rows: list[dict], user_ids: list[str | None], experiment: str | None,
        arm_tag: str | None = None, *, batch: bool = False,
    ) -> list[dict[str, Any]]:
        """Predict, sign ids, queue monitoring records; raises ApiError for bad rows (the field is
        ``features.<name>``, or ``batch_features.<row>.<name>`` when ``batch``)."""
        start = time.perf_counter()
        now = self.clock()
        out: list[dict[str, Any]] = []

        def where(i: int, feature: str) -> str:
            return f"batch_features.{i}.{feature}" if batch else f"features.{feature}"

        if experiment is None:
            model = self._model()
            rows = []
            for i, f in enumerate(feature_rows):
                try:
                    rows.append(model.row(f))
                except FeatureError as exc:
                    raise ApiError(422, "invalid_feature", str(exc), where(i, exc.field)) from exc
            labels, confidence = model.predict(rows)
            for i, label in enumerate(labels):
                out.append(self._result(model.version, label, confidence[i], user_ids[i], arm_tag))
        else:
            self._model()
            chosen = []
            for i, (features, user_id) in enumerate(zip(feature_rows, user_ids, strict=True)):
                model, plan = self._ab_choice(experiment, user_id, features)
                try:
                    chosen.append((model, plan, model.row(features), user_id))
                except FeatureError as exc:
                    raise ApiError(422, "invalid_feature", str(exc), where(i, exc.field)) from exc
            for model, plan, row, user_id in chosen:
                t0 = time.perf_counter()
                labels, confidence = model.predict([row])
                out.append(self._ab_result(experiment, user_id, model, plan, labels[0], confidence[0],
                                           time.perf_counter() - t0, now))
        latency = (time.perf_counter() - start) / max(1, len(out))
        for features, r in zip(feature_rows, out, strict=True):
            self._count_and_record(r, features, now, latency)
        return out

    def _result(self, version: str, label: Any, confidence: float | None, user_id: str | None,
                arm_tag: str | None = None) -> dict[str, Any]:
        # The router's experiment-arm tag rides in the signed id's nonce (mlops.core.arm_tag), so the
        # sidecar counts the prediction and its later feedback in the right arm.
        nonce = tagged_nonce(self._nonce(), arm_tag) if arm_tag else None
        return {"prediction": label, "model_version": version, "variant": None, "user_id": user_id,
                "confidence": confidence, "prediction_id": self._new_id(version, label, nonce)}

    def _count_and_record(self, r: dict[str, Any], features: dict, now: float, latency: float) -> None:
        version = r["model_version"]
        self.predictions_by_version[version] = self.predictions_by_version.get(version, 0) + 1
        self.recorder.record(PredictionRecord(
            r["prediction_id"], self.model_name, version, now, latency, features, r["prediction"], r["confidence"]))

    def _observe_request(self, path: str, status: int, reason: str | None, seconds: float,
                         arm_tag: str | None = None) -> None:
        """Every HTTP answer, in one place: duration per route; errors by status and reason; a failed
        prediction request is also recorded for monitoring (its error rate) against the current version,
        and in its experiment arm when the router tagged the request (``arm_tag``)."""
        route = path if path in _ROUTES else ("/experiments/{name}/status" if path.startswith("/experiments/")
                                             else "other")
        child = self._duration_children.get(route)
        if child is None:
            child = self._duration_children[route] = self.request_duration.labels(route)
        child.observe(seconds)
        if status < 400:
            return
        key = (str(status), reason if reason and _REASON.fullmatch(reason) else "other")
        self.request_errors[key] = self.request_errors.get(key, 0) + 1
        self.error_count += 1
        if route in ("/predict", "/predict/batch") and self.current_model_version and status != 503:
            version = self.current_model_version
            pid = self._new_id(version, "", tagged_nonce(self._nonce(), arm_tag)) if arm_tag else ""
            self.recorder.record(PredictionRecord(pid, self.model_name, version, self.clock(),
                                                  seconds, {}, None, None, True))

    def predict(self, features: dict, user_id: str | None = None, experiment_name: str | None = None) -> dict:
        """One prediction as the HTTP endpoint returns it (also recorded for monitoring)."""
        start = time.perf_counter()
        result = self._predict_rows([features], [user_id], experiment_name)[0]
        result["latency_ms"] = (time.perf_counter() - start) * 1000.0
        result["timestamp"] = _iso(self.clock())
        return result

    def predict_batch(self, rows: Iterable[dict] | Any, user_ids: list[str] | None = None,
                      experiment_name: str | None = None) -> list[dict]:
        """Predict a list of feature dicts (or a DataFrame); one result dict per row, in order."""
        if hasattr(rows, "to_dict") and hasattr(rows, "columns"):
            rows = [{k: (None if v != v else v) for k, v in r.items()} for r in rows.to_dict(orient="records")]
        rows = [dict(r.get("features", r)) if isinstance(r, dict) else dict(r) for r in rows]
        ids = list(user_ids) if user_ids is not None else [None] * len(rows)
        if len(ids) != len(rows):
            raise ValueError("user_ids must have one entry per row")
        try:
            return self._predict_rows(rows, ids, experiment_name)
        except ApiError as exc:
            raise ValueError(exc.message) from exc

    def record_feedback(self, items: list[tuple[str, Any]], fields: list[str] | None = None) -> dict[str, Any]:
        """Validate each item on its own (signed id, finite label the model knows), record the good
        ones once per prediction id (the first label wins; later ones are counted as duplicates),
        join A/B outcomes. Returns ``{"accepted", "duplicates", "experiment_outcomes", "rejected"}``;
        ``rejected`` lists ``{"field", "error", "message", "status"}`` per refused item."""
        fields = fields or (["prediction_id"] if len(items) == 1 else [f"feedback.{i}" for i in range(len(items))])
        good: list[tuple[str, Any, Any]] = []
        rejected: list[dict[str, Any]] = []
        for (prediction_id, true_label), field in zip(items, fields, strict=True):
            id_field = field if field.endswith("prediction_id") else f"{field}.prediction_id"
            try:
                ref = verify_prediction_id(self.signing_keys.verify_keys, prediction_id)
            except InvalidPredictionId as exc:
                rejected.append({"status": 400, "error": "invalid_prediction_id", "field": id_field,
                                 "message": f"{exc}: feedback rejected"})
                continue
            problem = self._label_problem(true_label, ref.version)
            if problem:
                label_field = id_field.rsplit(".", 1)[0] + ".true_label" if "." in id_field else "true_label"
                rejected.append({"status": 422, "error": "invalid_label", "field": label_field, "message": problem})
                continue
            good.append((prediction_id, true_label, ref))
        fresh = self._claim_feedback([(pid, label) for pid, label, _ in good])
        events: list[FeedbackEvent] = []
        ab_outcomes: list[tuple[str, str, Any]] = []
        duplicates = 0
        now = self.clock()
        for (prediction_id, true_label, ref), first in zip(good, fresh, strict=True):
            if not first:
                duplicates += 1
                continue
            events.append(FeedbackEvent(prediction_id=prediction_id, model_version=ref.version,
                                        prediction=ref.prediction, true_label=true_label, timestamp=now))
            ab_id, sep, experiment = ref.nonce.partition("|")
            if sep and experiment:
                ab_outcomes.append((experiment, ab_id, true_label))
        accepted = self.recorder.record_feedback(events) if events else 0
        self.feedback_count += accepted
        self.feedback_duplicates += duplicates
        self.feedback_rejected += len(rejected)
        joined = 0
        if self.ab_manager is not None and ab_outcomes:
            self.ab_recorder.flush()  # the predictions being labelled may still be queued
            for experiment, ab_id, label in ab_outcomes:
                joined += self._join_ab_outcome(experiment, ab_id, label)
        return {"accepted": accepted, "duplicates": duplicates, "experiment_outcomes": joined, "rejected": rejected}

    def _label_problem(self, label: Any, version: str) -> str | None:
        """Why ``label`` cannot be a true outcome for ``version`` (None when it can)."""
        if isinstance(label, float) and not math.isfinite(label):
            return f"true_label must be a finite number, got {label}"
        if isinstance(label, int) and not isinstance(label, bool) and abs(label) > MAX_LABEL_INT:
            return "true_label is an integer out of range (|x| < 2**53)"
        if isinstance(label, str) and len(label) > MAX_NAME:
            return f"true_label is longer than {MAX_NAME} characters"
        model = self.models.get(version) or self.models.get(self.current_model_version or "")
        if model is not None and model.classes:
            known = model.label_index
            if label_str(label) not in known:
                shown = ", ".join(repr(c) for c in model.classes[:20])
                return f"true_label {str(label)[:40]!r} is not a label the model knows ({shown})"
        return None

    def _claim_feedback(self, items: list[tuple[str, Any]]) -> list[bool]:
        """First-label-wins per prediction id: durably in the ledger, else (no ledger, or the disk
        refuses the write) in a bounded in-memory set, so a replay is never counted twice here."""
        if not items:
            return []
        pairs = [(pid, label_str(label)) for pid, label in items]
        if self.feedback_ledger is not None:
            try:
                fresh = self.feedback_ledger.claim(pairs, self.clock())
                self.degraded.pop("feedback_ledger", None)  # the disk took the write again
                return fresh
            except Exception as exc:  # noqa: BLE001 - a full or read-only disk must not fail feedback
                self._degrade("feedback_ledger", f"feedback ledger write failed: {type(exc).__name__}: {exc}")
        out = []
        with self._seen_lock:
            for pid, _ in pairs:
                first = pid not in self._seen_feedback
                if first:
                    self._seen_feedback[pid] = None
                    if len(self._seen_feedback) > 200_000:
                        self._seen_feedback.popitem(last=False)
                out.append(first)
        return out

    def _join_ab_outcome(self, experiment: str, ab_id: str, label: Any) -> int:
        try:
            return int(bool(self.ab_manager.record_outcome(experiment, ab_id, label)))
        except (KeyError, ValueError) as exc:
            logger.warning("A/B outcome for %s not recorded: %s", experiment, exc)
            return 0

    # ----------------------------------------------------------------- status
    def health(self) -> tuple[int, dict[str, Any]]:
        ready = self.current_model_version is not None and self.current_model_version in self.models
        degraded = self.degradation()
        body = {
            "status": ("degraded" if degraded else "healthy") if ready else "unavailable",
            "degraded_reasons": degraded,
            "model_name": self.model_name,
            "current_model_version": self.current_model_version,
            "uptime_seconds": round(self.clock() - self.started_at, 3),
            "request_count": self.request_count,
            "error_count": self.error_count,
            "models_loaded": sorted(self.models),
        }
        return (200 if ready else 503), body

    def degradation(self) -> list[str]:
        """Why the server is degraded (it keeps serving): failing monitoring writes, a lost ledger."""
        reasons = [f"{k}: {v}" for k, v in sorted(self.degraded.items())]
        for what, r in (("monitoring", self.recorder), ("experiments", self.ab_recorder)):
            if r.sink_error is not None:
                reasons.append(f"{what}: {r.sink_error} ({r.retry_buffered} record(s) waiting for a retry, "
                               f"{r.failed_total} lost)")
        return reasons

    def monitoring_status(self, hours: float = 24) -> dict[str, Any]:
        body: dict[str, Any] = {"model_name": self.model_name, "period_hours": hours,
                                "monitoring_enabled": self.enable_monitoring}
        if self.monitor is not None:
            self.recorder.flush()
            body.update(self.monitor.get_monitoring_summary(hours=hours))
        body["recording"] = self.recording_stats()
        body["batching"] = ({"mode": self.batch_mode, "max_batch": self.batcher.max_batch, **self.batcher.stats()}
                            if self.batcher is not None else None)
        body["predictions_served"] = dict(self.predictions_by_version)
        body["feedback_received"] = self.feedback_count
        return body

    def recording_stats(self) -> dict[str, Any]:
        r = self.recorder
        ab = self.ab_recorder
        return {"sink": type(self.sink).__name__, "queued": r.queued, "recorded": r.recorded_total,
                "written": r.written_total, "dropped": r.dropped_total, "failed": r.failed_total,
                "invalid": r.invalid_total, "retry_buffered": r.retry_buffered, "sink_error": r.sink_error,
                "experiments": {"queued": ab.queued, "recorded": ab.recorded_total, "written": ab.written_total,
                                "dropped": ab.dropped_total, "failed": ab.failed_total,
                                "retry_buffered": ab.retry_buffered, "sink_error": ab.sink_error}}

    def close(self) -> None:
        """Drain the monitoring queue and close the sink (called on shutdown, e.g. SIGTERM)."""
        if self._closed:
            return
        self._closed = True
        if self.batcher is not None:
            self.batcher.close()
        self.recorder.close()
        self.ab_recorder.close()
        if self.feedback_ledger is not None:
            self.feedback_ledger.close()
        logger.info("monitoring drained: %s", self.recording_stats())

    # ----------------------------------------------------------------- decoded requests
    async def predict_request(self, req: PredictRequest, arm_tag: str | None = None) -> dict[str, Any]:
        """One /predict request: experiments in a worker thread, plain ones through the micro-batcher.
        Failures are counted (and recorded for monitoring, in the request's arm) by ``_observe_request``."""
        if req.experiment_name is not None:
            return await self._predict_experiment(req)
        if self.batcher is None:
            if self.current_model_version in self._slow:
                return (await _in_thread(
                    self._predict_rows, [req.features], [req.user_id], None, arm_tag))[0]
            return self._predict_rows([req.features], [req.user_id], None, arm_tag)[0]
        model = self._model()
        row = _feature_row(model, req.features)
        start = time.perf_counter()
        now = self.clock()
        label, confidence = await self.batcher.predict(model, row)
        result = self._result(model.version, label, confidence, req.user_id, arm_tag)
        self._count_and_record(result, req.features, now, time.perf_counter() - start)
        return result

    async def _predict_experiment(self, req: PredictRequest) -> dict[str, Any]:
        """The README's request: assignment from the cached experiment state, the prediction through
        the same micro-batcher as plain requests, the experiment's record written off the request
        path (group commit by the A/B recorder's thread)."""
        name, user_id = req.experiment_name or "", req.user_id
        model, plan = self._ab_choice(name, user_id, req.features)
        row = _feature_row(model, req.features)
        start = time.perf_counter()
        now = self.clock()
        if self.batcher is not None:
            label, confidence = await self.batcher.predict(model, row)
        elif model.version in self._slow:
            labels, conf = await _in_thread(model.predict, [row])
            label, confidence = labels[0], conf[0]
        else:
            labels, conf = model.predict([row])
            label, confidence = labels[0], conf[0]
        latency = time.perf_counter() - start
        result = self._ab_result(name, user_id or "", model, plan, label, confidence, latency, now)
        self._count_and_record(result, req.features, now, latency)
        return result


def _feature_row(model: LoadedModel, features: dict) -> list[Any]:
    """One request's features in the model's order; a bad feature is a 422 naming it."""
    try:
        return model.row(features)
    except FeatureError as exc:
        raise ApiError(422, "invalid_feature", str(exc), f"features.{exc.field}") from exc


class _ABStoreSink:
    """Writes queued experiment predictions into the A/B store in one transaction per flush
    (idempotent per prediction id, so a retried batch is never counted twice)."""

    def __init__(self, manager: Any) -> None:
        self.manager = manager

    def write(self, predictions: list[Any], feedback: list[Any], batch_key: str | None = None) -> int | None:
        if predictions:
            self.manager.record_served(predictions)
        return None

    def close(self) -> None:
        return None


def _plain(value: Any) -> Any:
    """Make A/B engine results JSON-ready (dataclasses, numpy scalars, datetimes)."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "value") and hasattr(value, "name"):
        return value.value
    return value


class _ServerCollector:
    """Exports the server's plain counters at scrape time (nothing is updated on the hot path)."""

    def __init__(self, server: DataPlane) -> None:
        self.server = server

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = self.server
        predictions = CounterMetricFamily("mlops_server_predictions", "Predictions served", labels=["version"])
        for version, n in sorted(s.predictions_by_version.items()):
            predictions.add_metric([version], n)
        yield predictions
        yield CounterMetricFamily("mlops_server_requests", "Prediction requests received", value=s.request_count)
        errors = CounterMetricFamily("mlops_server_request_errors", "Requests answered with an error, by HTTP "
                                     "status and reason (the error code in the JSON body)", labels=["code", "reason"])
        for (code, reason), n in sorted(s.request_errors.items()):
            errors.add_metric([code, reason], n)
        yield errors
        yield CounterMetricFamily("mlops_server_feedback", "Feedback events accepted", value=s.feedback_count)
        yield CounterMetricFamily("mlops_server_feedback_duplicates", "Feedback for an already labelled prediction "
                                  "id (ignored: the first label wins)", value=s.feedback_duplicates)
        yield CounterMetricFamily("mlops_server_feedback_rejected", "Feedback items refused (bad id or label)",
                                  value=s.feedback_rejected)
        r = s.recorder
        yield CounterMetricFamily("mlops_monitoring_records_dropped", "Monitoring records dropped (queue full)",
                                  value=r.dropped_total)
        yield CounterMetricFamily("mlops_monitoring_records_written", "Monitoring records written to the sink",
                                  value=r.written_total)
        yield CounterMetricFamily("mlops_monitoring_records_failed", "Monitoring records lost to sink errors",
                                  value=r.failed_total)
        yield GaugeMetricFamily("mlops_monitoring_queue_depth", "Monitoring records waiting", value=r.queued)
        yield GaugeMetricFamily("mlops_monitoring_retry_buffered", "Monitoring records kept for a retry after the "
                                "sink failed (disk full, read-only store, sidecar down)", value=r.retry_buffered)
        yield CounterMetricFamily("mlops_monitoring_sink_failures", "Failed writes to the monitoring sink",
                                  value=r.sink_failures_total)
        yield CounterMetricFamily("mlops_monitoring_records_invalid", "Monitoring records dropped alone because "
                                  "they were invalid (the rest of their batch was written)", value=r.invalid_total)
        yield GaugeMetricFamily("mlops_server_degraded", "1 while the server serves but cannot record durably",
                                value=1.0 if s.degradation() else 0.0)
        loaded = GaugeMetricFamily("mlops_server_model_loaded", "1 per loaded version; current=1 marks current",
                                   labels=["version", "current"])
        for version in sorted(s.models):
            loaded.add_metric([version, str(version == s.current_model_version).lower()], 1)
        yield loaded
        yield GaugeMetricFamily("mlops_server_uptime_seconds", "Seconds since start", value=s.clock() - s.started_at)
