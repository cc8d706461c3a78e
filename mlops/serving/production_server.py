"""The production model server: the guide's ``create_production_server`` and its HTTP API.

Why it exists: this is the process users hit on every prediction (``mlops serve``; in a cluster the
``model`` container of every pod the operator creates), so it is built for speed and for safety:

* ``async def`` handlers, bodies parsed by pydantic-core straight from bytes, rows built as plain
  lists in the model's feature order (no DataFrame per request), orjson responses. Models whose
  measured single-row cost is high run in a worker thread so they never block the event loop.
* Monitoring is recorded after the answer, through the bounded ``Recorder`` (group commit by a
  background thread, drops counted, drained on shutdown; see mlops.serving.sinks): standalone into
  an in-process ProductionMonitor, in a pod to the sidecar (``sidecar_url``).
* Several versions loaded at once; a challenger never becomes current by being loaded; a tampered or
  unloadable artifact is refused and the current version keeps serving; ``rollback_model``.
* Every error goes through mlops.serving.errors (4xx JSON naming the problem, never raw 500 text).
* Each prediction gets a signed prediction id (version + predicted label inside) that ``/feedback``
  and the router verify.
"""

from __future__ import annotations

import hmac
import itertools
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI, Query, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from mlops.core.prediction_id import InvalidPredictionId, sign_prediction_id, verify_prediction_id
from mlops.serving.batching import BatchMode, MicroBatcher
from mlops.serving.errors import ApiError, error_response, install_error_handlers, validation_error
from mlops.serving.events import FeedbackEvent, prediction_id_key
from mlops.serving.model_store import FeatureError, LoadedModel, ModelLoadError, ModelMetadata, load_model
from mlops.serving.schemas import (
    MAX_BODY_BYTES,
    REQUEST_MODELS,
    BatchPredictRequest,
    FeedbackRequest,
    LoadModelRequest,
    PredictRequest,
    RollbackRequest,
)
from mlops.serving.sinks import EventSink, MonitorSink, NullSink, PredictionRecord, Recorder, SidecarSink

logger = logging.getLogger(__name__)

ADMIN_TOKEN_ENV = "MLOPS_ADMIN_TOKEN"
THREAD_OFFLOAD_SECONDS = 0.002
MAX_BATCH_ENV = "MLOPS_SERVE_MAX_BATCH"
BATCH_MODE_ENV = "MLOPS_SERVE_BATCH_MODE"
DEFAULT_MAX_BATCH = 64
DEFAULT_BATCH_MODE = "inline"
_JSON = "application/json"


def _json(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status, media_type=_JSON)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _RowModel:
    """Adapter handed to ``ABTestingManager.make_prediction``: whatever X it receives, it predicts
    the request's row in the model's own feature order (the original ordered features two ways)."""

    def __init__(self, model: LoadedModel, row: list[Any]) -> None:
        self.model = model
        self.row = row
        self.confidence: float | None = None

    def predict(self, x: Any) -> list[Any]:
        labels, confidence = self.model.predict([self.row])
        self.confidence = confidence[0]
        return labels


class ProductionModelServer:
    """Holds the loaded versions and the monitoring/A-B engines; ``.app`` is the FastAPI app."""

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
        prediction_key: bytes | None = None,
        registry: Any = None,
        clock: Callable[[], float] = time.time,
        flush_interval: float = 1.0,
        queue_capacity: int = 100_000,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_batch: int | None = None,
        batch_mode: BatchMode | None = None,
        fast_path: bool = True,
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
        self.max_body_bytes = max_body_bytes
        self._admin_token = admin_token if admin_token is not None else os.environ.get(ADMIN_TOKEN_ENV) or None
        self._key = prediction_key or prediction_id_key()
        self._ids = itertools.count()
        self._id_prefix = secrets.token_hex(4)
        self.baseline: dict[str, Any] | None = None

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
        self.app = self._build_app()

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

    def _experiment_predict(
        self, name: str, user_id: str | None, features: dict, row_for: Callable, ab_id: str
    ) -> dict:
        if self.ab_manager is None:
            raise ApiError(404, "unknown_experiment", "A/B testing is disabled on this server", "experiment_name")
        if not user_id:
            raise ApiError(422, "validation_error", "user_id is required with experiment_name", "user_id")
        adapters = {}
        for version, model in list(self.models.items()):
            adapters[version] = _RowModel(model, row_for(model))
        try:
            result = self.ab_manager.make_prediction(
                experiment_name=name, user_id=user_id, features=features, models=adapters, prediction_id=ab_id
            )
        except KeyError as exc:
            raise ApiError(404, "unknown_experiment", f"unknown experiment {name!r}", "experiment_name") from exc
        except ValueError as exc:
            if "does not exist" in str(exc):
                raise ApiError(404, "unknown_experiment", f"unknown experiment {name!r}", "experiment_name") from exc
            raise ApiError(409, "experiment_unavailable", f"experiment {name!r}: {exc}", "experiment_name") from exc
        version = str(result.get("model_version"))
        adapter = adapters.get(version)
        prediction = result.get("prediction")
        if hasattr(prediction, "item"):
            prediction = prediction.item()
        return {
            "prediction": prediction,
            "model_version": version,
            "variant": result.get("variant"),
            "confidence": adapter.confidence if adapter else None,
            "ab_prediction_id": str(result.get("prediction_id") or ab_id),
        }

    def _predict_rows(
        self, feature_rows: list[dict], user_ids: list[str | None], experiment: str | None
    ) -> list[dict[str, Any]]:
        """Predict, sign ids, queue monitoring records; raises ApiError for bad rows."""
        start = time.perf_counter()
        now = self.clock()
        out: list[dict[str, Any]] = []
        if experiment is None:
            model = self._model()
            try:
                rows = [model.row(f) for f in feature_rows]
            except FeatureError as exc:
                raise ApiError(422, "invalid_feature", str(exc), f"features.{exc.field}") from exc
            labels, confidence = model.predict(rows)
            for i, label in enumerate(labels):
                out.append(self._result(model.version, label, confidence[i], user_ids[i]))
        else:
            self._model()
            for features, user_id in zip(feature_rows, user_ids, strict=True):
                def row_for(m: LoadedModel, f: dict = features) -> list[Any]:
                    try:
                        return m.row(f)
                    except FeatureError as exc:
                        raise ApiError(422, "invalid_feature", str(exc), f"features.{exc.field}") from exc

                r = self._experiment_predict(experiment, user_id, features, row_for, self._nonce())
                r["user_id"] = user_id
                nonce = f"{r.pop('ab_prediction_id')}|{experiment}"
                r["prediction_id"] = self._new_id(r["model_version"], r["prediction"], nonce)
                out.append(r)
        latency = (time.perf_counter() - start) / max(1, len(out))
        for features, r in zip(feature_rows, out, strict=True):
            self._count_and_record(r, features, now, latency)
        return out

    def _result(self, version: str, label: Any, confidence: float | None, user_id: str | None) -> dict[str, Any]:
        return {"prediction": label, "model_version": version, "variant": None, "user_id": user_id,
                "confidence": confidence, "prediction_id": self._new_id(version, label)}

    def _count_and_record(self, r: dict[str, Any], features: dict, now: float, latency: float) -> None:
        version = r["model_version"]
        self.predictions_by_version[version] = self.predictions_by_version.get(version, 0) + 1
        self.recorder.record(PredictionRecord(
            r["prediction_id"], self.model_name, version, now, latency, features, r["prediction"], r["confidence"]))

    def _record_error(self, version: str | None, features: dict) -> None:
        self.error_count += 1
        if version:
            self.recorder.record(PredictionRecord("", self.model_name, version, self.clock(), 0.0, features,
                                                  None, None, True))

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

    def record_feedback(self, items: list[tuple[str, Any]]) -> dict[str, Any]:
        """Verify each prediction id, queue a feedback event, and join A/B outcomes."""
        events: list[FeedbackEvent] = []
        ab_outcomes: list[tuple[str, str, Any]] = []
        for i, (prediction_id, true_label) in enumerate(items):
            try:
                ref = verify_prediction_id(self._key, prediction_id)
            except InvalidPredictionId as exc:
                field = "prediction_id" if len(items) == 1 else f"feedback.{i}.prediction_id"
                raise ApiError(400, "invalid_prediction_id", f"{exc}: feedback rejected", field) from exc
            events.append(FeedbackEvent(prediction_id=prediction_id, model_version=ref.version,
                                        prediction=ref.prediction, true_label=true_label, timestamp=self.clock()))
            ab_id, sep, experiment = ref.nonce.partition("|")
            if sep and experiment:
                ab_outcomes.append((experiment, ab_id, true_label))
        accepted = self.recorder.record_feedback(events)
        self.feedback_count += accepted
        joined = 0
        if self.ab_manager is not None:
            for experiment, ab_id, label in ab_outcomes:
                joined += self._join_ab_outcome(experiment, ab_id, label)
        return {"accepted": accepted, "experiment_outcomes": joined}

    def _join_ab_outcome(self, experiment: str, ab_id: str, label: Any) -> int:
        try:
            return int(bool(self.ab_manager.record_outcome(experiment, ab_id, label)))
        except (KeyError, ValueError) as exc:
            logger.warning("A/B outcome for %s not recorded: %s", experiment, exc)
            return 0

    # ----------------------------------------------------------------- status
    def health(self) -> tuple[int, dict[str, Any]]:
        ready = self.current_model_version is not None and self.current_model_version in self.models
        body = {
            "status": "healthy" if ready else "unavailable",
            "model_name": self.model_name,
            "current_model_version": self.current_model_version,
            "uptime_seconds": round(self.clock() - self.started_at, 3),
            "request_count": self.request_count,
            "error_count": self.error_count,
            "models_loaded": sorted(self.models),
        }
        return (200 if ready else 503), body

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
        return {"sink": type(self.sink).__name__, "queued": r.queued, "recorded": r.recorded_total,
                "written": r.written_total, "dropped": r.dropped_total, "failed": r.failed_total}

    def close(self) -> None:
        """Drain the monitoring queue and close the sink (called on shutdown, e.g. SIGTERM)."""
        if self._closed:
            return
        self._closed = True
        if self.batcher is not None:
            self.batcher.close()
        self.recorder.close()
        logger.info("monitoring drained: %s", self.recording_stats())

    # ----------------------------------------------------------------- HTTP
    def _check_headers(self, content_type: str, declared: str | None) -> None:
        media = content_type.split(";", 1)[0].strip().lower()
        if media != _JSON and not media.endswith("+json"):
            raise ApiError(415, "unsupported_media_type",
                           f"Content-Type must be application/json, got {content_type or 'none'!r}")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_body_bytes
            except ValueError:
                raise ApiError(400, "bad_request", "invalid Content-Length header") from None
            if too_big:
                raise ApiError(413, "body_too_large", f"request body over {self.max_body_bytes} bytes")

    def _validate(self, body: bytes, model: type[BaseModel]) -> Any:
        if len(body) > self.max_body_bytes:
            raise ApiError(413, "body_too_large", f"request body over {self.max_body_bytes} bytes")
        if not body:
            raise ApiError(400, "malformed_json", "request body is empty; expected a JSON object")
        try:
            return model.model_validate_json(body)
        except ValidationError as exc:
            raise validation_error(list(exc.errors(include_url=False))) from None

    async def _body(self, request: Request, model: type[BaseModel]) -> Any:
        declared = request.headers.get("content-length")
        self._check_headers(request.headers.get("content-type", ""), declared)
        if declared is not None:
            body = await request.body()
        else:
            chunks = bytearray()
            async for chunk in request.stream():
                chunks.extend(chunk)
                if len(chunks) > self.max_body_bytes:
                    raise ApiError(413, "body_too_large", f"request body over {self.max_body_bytes} bytes")
            body = bytes(chunks)
        return self._validate(body, model)

    async def _predict_one(self, req: PredictRequest) -> dict[str, Any]:
        """One /predict request: experiments in a worker thread, plain ones through the micro-batcher."""
        try:
            if req.experiment_name is not None:
                return (await run_in_threadpool(
                    self._predict_rows, [req.features], [req.user_id], req.experiment_name))[0]
            if self.batcher is None:
                if self.current_model_version in self._slow:
                    return (await run_in_threadpool(self._predict_rows, [req.features], [req.user_id], None))[0]
                return self._predict_rows([req.features], [req.user_id], None)[0]
            model = self._model()
            try:
                row = model.row(req.features)
            except FeatureError as exc:
                raise ApiError(422, "invalid_feature", str(exc), f"features.{exc.field}") from exc
        except ApiError:
            self._record_error(None, req.features)
            raise
        start = time.perf_counter()
        now = self.clock()
        label, confidence = await self.batcher.predict(model, row)
        result = self._result(model.version, label, confidence, req.user_id)
        self._count_and_record(result, req.features, now, time.perf_counter() - start)
        return result

    async def _asgi_predict(self, scope: dict, receive: Callable, send: Callable) -> None:
        """``POST /predict`` as a raw ASGI handler: the same validation, errors and answer as the
        documented FastAPI route, without the middleware and dependency machinery around it."""
        self.request_count += 1
        start = time.perf_counter()
        try:
            content_type, declared = "", None
            for name, value in scope["headers"]:
                if name == b"content-type":
                    content_type = value.decode("latin-1")
                elif name == b"content-length":
                    declared = value.decode("latin-1")
            self._check_headers(content_type, declared)
            body = await _read_body(receive, self.max_body_bytes)
            if body is None:
                return  # the client went away
            result = await self._predict_one(self._validate(body, PredictRequest))
            result["latency_ms"] = round((time.perf_counter() - start) * 1000.0, 3)
            result["timestamp"] = _iso(self.clock())
            status, payload = 200, orjson.dumps(result, option=orjson.OPT_SERIALIZE_NUMPY)
        except ApiError as exc:
            status, payload = exc.status, orjson.dumps({"error": exc.code, "message": exc.message, "field": exc.field})
        except Exception:
            logger.exception("unhandled error on POST /predict")
            status, payload = 500, orjson.dumps({"error": "internal_error",
                                                 "message": "internal server error; see the server log",
                                                 "field": None})
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})

    def _check_admin(self, request: Request) -> None:
        if not self._admin_token:
            raise ApiError(403, "admin_disabled", f"admin API disabled: set {ADMIN_TOKEN_ENV} to enable it")
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._admin_token.encode()):
            raise ApiError(401, "unauthorized", "missing or wrong bearer token")

    def _build_app(self) -> FastAPI:
        server = self

        @asynccontextmanager
        async def lifespan(app: FastAPI):
            yield
            await run_in_threadpool(server.close)

        app = _ServerApp(
            title=f"mlops model server: {self.model_name}",
            description="Predictions with monitoring, A/B experiments and signed prediction ids.",
            version="1",
            lifespan=lifespan,
        )
        install_error_handlers(app)
        if self.fast_path:
            app.fast_predict = self._asgi_predict
        body_doc = _body_doc

        @app.get("/health")
        async def health() -> Response:
            status, body = server.health()
            return _json(body, status)

        @app.get("/ready")
        async def ready() -> Response:
            status, body = server.health()
            return _json({"ready": status == 200, "current_model_version": body["current_model_version"]}, status)

        @app.post("/predict", openapi_extra=body_doc("PredictRequest", "PredictResponse"))
        async def predict(request: Request) -> Response:
            server.request_count += 1
            start = time.perf_counter()
            req = await server._body(request, PredictRequest)
            result = await server._predict_one(req)
            result["latency_ms"] = round((time.perf_counter() - start) * 1000.0, 3)
            result["timestamp"] = _iso(server.clock())
            return _json(result)

        @app.post("/predict/batch", openapi_extra=body_doc("BatchPredictRequest"))
        async def predict_batch(request: Request) -> Response:
            server.request_count += 1
            start = time.perf_counter()
            req = await server._body(request, BatchPredictRequest)
            n = len(req.batch_features)
            if req.user_ids is not None and len(req.user_ids) != n:
                raise ApiError(422, "validation_error",
                               f"user_ids has {len(req.user_ids)} entries for {n} rows", "user_ids")
            ids = list(req.user_ids) if req.user_ids is not None else [None] * n
            try:
                results = await run_in_threadpool(server._predict_rows, req.batch_features, ids, req.experiment_name)
            except ApiError:
                server.error_count += 1
                raise
            return _json({
                "predictions": results,
                "count": len(results),
                "model_version": server.current_model_version,
                "latency_ms": round((time.perf_counter() - start) * 1000.0, 3),
                "timestamp": _iso(server.clock()),
            })

        @app.post("/feedback", openapi_extra=body_doc("FeedbackRequest"))
        async def feedback(request: Request) -> Response:
            req = await server._body(request, FeedbackRequest)
            items = [(f.prediction_id, f.true_label) for f in (req.feedback or [])]
            if req.prediction_id is not None or req.true_label is not None:
                if req.prediction_id is None or req.true_label is None:
                    field = "true_label" if req.true_label is None else "prediction_id"
                    raise ApiError(422, "validation_error", f"missing field {field!r}", field)
                items.insert(0, (req.prediction_id, req.true_label))
            if not items:
                raise ApiError(422, "validation_error", "give prediction_id and true_label, or feedback",
                               "prediction_id")
            result = await run_in_threadpool(server.record_feedback, items)
            return _json(result, 202)

        @app.get("/monitoring/status")
        async def monitoring_status(hours: float = Query(24, gt=0, le=24 * 366)) -> Response:
            return _json(await run_in_threadpool(server.monitoring_status, hours))

        @app.get("/experiments/{name}/status")
        async def experiment_status(name: str) -> Response:
            if server.ab_manager is None:
                raise ApiError(404, "unknown_experiment", "A/B testing is disabled on this server")
            try:
                status = await run_in_threadpool(server.ab_manager.get_experiment_status, name)
            except (KeyError, ValueError) as exc:
                raise ApiError(404, "unknown_experiment", f"unknown experiment {name!r}") from exc
            if not status:
                raise ApiError(404, "unknown_experiment", f"unknown experiment {name!r}")
            return _json(_plain(status))

        @app.get("/models")
        async def models() -> Response:
            return _json({"model_name": server.model_name, "current_model_version": server.current_model_version,
                          "models": [server._model_info(m) for m in list(server.models.values())]})

        @app.get("/metrics")
        async def metrics() -> Response:
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            return Response(generate_latest(server.registry), media_type=CONTENT_TYPE_LATEST)

        @app.post("/admin/models", openapi_extra=body_doc("LoadModelRequest"))
        async def admin_load(request: Request) -> Response:
            server._check_admin(request)
            req = await server._body(request, LoadModelRequest)
            try:
                info = await run_in_threadpool(
                    lambda: server.load_model_version(req.version, uri=req.uri, sha256=req.sha256,
                                                      make_current=req.make_current, format=req.format))
            except ModelLoadError as exc:
                raise ApiError(422, "model_refused", f"{exc}; still serving {server.current_model_version}",
                               "uri") from exc
            return _json({"loaded": info, "current_model_version": server.current_model_version}, 201)

        @app.post("/admin/rollback", openapi_extra=body_doc("RollbackRequest"))
        async def admin_rollback(request: Request) -> Response:
            server._check_admin(request)
            req = await server._body(request, RollbackRequest)
            try:
                return _json(server.rollback_model(req.target))
            except ValueError as exc:
                raise ApiError(409, "rollback_impossible", str(exc), "target") from exc

        def openapi() -> dict[str, Any]:
            if app.openapi_schema:
                return app.openapi_schema
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in REQUEST_MODELS:
                js = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(js.pop("$defs", {}))
                components[model.__name__] = js
            app.openapi_schema = schema
            return schema

        app.openapi = openapi  # type: ignore[method-assign]
        return app

    def run(self, host: str = "0.0.0.0", port: int = 5000, log_level: str = "info") -> None:
        """Serve with uvicorn until SIGINT/SIGTERM, then drain the monitoring queue."""
        import uvicorn

        freeze_startup_heap()
        try:
            uvicorn.run(self.app, host=host, port=port, log_level=log_level, access_log=False)
        finally:
            self.close()


class _ServerApp(FastAPI):
    """FastAPI, except that ``POST /predict`` (the hot path) goes straight to a raw ASGI handler.

    The FastAPI route stays registered: it documents ``/predict`` in /openapi.json and serves it
    when the fast path is off (``fast_path=False``) or once middleware was added to the app (so
    middleware a user adds, e.g. CORS or auth, also sees ``/predict``)."""

    fast_predict: Callable | None = None

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if (self.fast_predict is not None and not self.user_middleware and scope["type"] == "http"
                and scope["method"] == "POST"
                and (scope["path"] == "/predict" or scope["path"] == scope.get("root_path", "") + "/predict")):
            await self.fast_predict(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


async def _read_body(receive: Callable, limit: int) -> bytes | None:
    """The whole request body (413 past ``limit``), or None when the client disconnected."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body_too_large", f"request body over {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _body_doc(request_model: str, response_model: str | None = None) -> dict[str, Any]:
    errors = {
        str(code): {"description": text,
                    "content": {_JSON: {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
        for code, text in [(400, "malformed JSON"), (413, "body too large"), (415, "wrong content type"),
                           (422, "invalid field"), (503, "no model loaded")]
    }
    doc: dict[str, Any] = {
        "requestBody": {"required": True,
                        "content": {_JSON: {"schema": {"$ref": f"#/components/schemas/{request_model}"}}}},
        "responses": errors,
    }
    if response_model:
        doc["responses"]["200"] = {"description": "OK", "content": {
            _JSON: {"schema": {"$ref": f"#/components/schemas/{response_model}"}}}}
    return doc


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

    def __init__(self, server: ProductionModelServer) -> None:
        self.server = server

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = self.server
        predictions = CounterMetricFamily("mlops_server_predictions", "Predictions served", labels=["version"])
        for version, n in sorted(s.predictions_by_version.items()):
            predictions.add_metric([version], n)
        yield predictions
        yield CounterMetricFamily("mlops_server_requests", "Prediction requests received", value=s.request_count)
        yield CounterMetricFamily("mlops_server_request_errors", "Prediction requests refused", value=s.error_count)
        yield CounterMetricFamily("mlops_server_feedback", "Feedback events accepted", value=s.feedback_count)
        r = s.recorder
        yield CounterMetricFamily("mlops_monitoring_records_dropped", "Monitoring records dropped (queue full)",
                                  value=r.dropped_total)
        yield CounterMetricFamily("mlops_monitoring_records_written", "Monitoring records written to the sink",
                                  value=r.written_total)
        yield CounterMetricFamily("mlops_monitoring_records_failed", "Monitoring records lost to sink errors",
                                  value=r.failed_total)
        yield GaugeMetricFamily("mlops_monitoring_queue_depth", "Monitoring records waiting", value=r.queued)
        loaded = GaugeMetricFamily("mlops_server_model_loaded", "1 per loaded version; current=1 marks current",
                                   labels=["version", "current"])
        for version in sorted(s.models):
            loaded.add_metric([version, str(version == s.current_model_version).lower()], 1)
        yield loaded
        yield GaugeMetricFamily("mlops_server_uptime_seconds", "Seconds since start", value=s.clock() - s.started_at)


class ProductionServer(ProductionModelServer):
    """The original system's server class name and argument order: ``ProductionServer(model_name,
    mlflow_tracking_uri, enable_monitoring, enable_ab_testing)``. Versions given by name only are
    found by a :class:`mlops.serving.model_loader.ModelLoader` (registry first, then ``models_dir``);
    ``run()`` loads the latest version when none is loaded yet."""

    def __init__(self, model_name: str = "alzheimer_classifier", mlflow_tracking_uri: str | None = None,
                 enable_monitoring: bool = True, enable_ab_testing: bool = True, *,
                 models_dir: str | os.PathLike[str] = "models", **options: Any) -> None:
        from mlops.serving.model_loader import ModelLoader

        super().__init__(model_name, enable_monitoring, enable_ab_testing, mlflow_tracking_uri=mlflow_tracking_uri,
                         **options)
        self.model_loader = ModelLoader(mlflow_tracking_uri, models_dir)

    def load_model_version(self, version: str, uri: str | None = None, sha256: str | None = None,
                           make_current: bool = False, **kwargs: Any) -> dict[str, Any]:
        if uri is None and kwargs.get("model") is None:
            found = self.model_loader.load(self.model_name, version, sha256=sha256)
            return super().load_model_version(version, make_current=make_current, model=found.estimator,
                                              metadata=found.metadata)
        return super().load_model_version(version, uri, sha256, make_current, **kwargs)

    def load_latest_model(self) -> bool:
        """Load (and make current) the newest version the model loader finds; False when there is none."""
        version = self.model_loader.get_latest_model_version(self.model_name)
        if version is None:
            return False
        self.load_model_version(version, make_current=True)
        return True

    def start_monitoring(self, interval_seconds: float = 300) -> None:
        if self.monitor is not None:
            self.monitor.start_monitoring(interval_seconds)

    def run(self, host: str = "0.0.0.0", port: int = 5000, log_level: str = "info", debug: bool = False) -> None:
        if not self.models:
            self.load_latest_model()
        self.start_monitoring()
        super().run(host=host, port=port, log_level="debug" if debug else log_level)

    def close(self) -> None:
        super().close()
        if self.monitor is not None:
            self.monitor.stop_monitoring()
            self.monitor.tracker.close()


def create_production_server(
    model_name: str,
    enable_monitoring: bool = True,
    enable_ab_testing: bool = True,
    **options: Any,
) -> ProductionModelServer:
    """The guide's factory. Options: ``monitor``, ``ab_manager``, ``sidecar_url``, ``admin_token``,
    ``prediction_key``, ``registry``, ``clock``, ``flush_interval``, ``queue_capacity``,
    ``model_uri``/``sha256``/``model_version``/``model_format`` (load one version right away)."""
    model_uri = options.pop("model_uri", None)
    sha256 = options.pop("sha256", None)
    version = options.pop("model_version", None)
    fmt = options.pop("model_format", None)
    server = ProductionModelServer(model_name, enable_monitoring, enable_ab_testing, **options)
    if model_uri:
        server.load_model_version(version or "", uri=model_uri, sha256=sha256, format=fmt, make_current=True)
    return server


def app_from_env() -> FastAPI:
    """uvicorn factory for ``mlops serve --workers N``: rebuilds the server in each worker from the
    JSON options the command put in ``MLOPS_SERVE_OPTIONS``."""
    from mlops.serving.app import build_server_from_options

    options = orjson.loads(os.environ["MLOPS_SERVE_OPTIONS"])
    app = build_server_from_options(options).app
    freeze_startup_heap()
    return app


def freeze_startup_heap() -> None:
    """Move everything allocated at start-up (libraries, models) out of the garbage collector's
    reach: otherwise every full collection walks those ~10^6 objects, a pause that shows up as
    the p99 latency. Called by the server processes we start (``run``, ``app_from_env``) only."""
    import gc

    gc.collect()
    gc.freeze()


__all__ = ["ProductionModelServer", "ProductionServer", "create_production_server", "ModelLoadError", "error_response"]
