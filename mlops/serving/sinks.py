"""Where the server's monitoring events go, recorded off the request path.

Why it exists: a prediction must be answered before it is recorded. Request handlers only append a
small record to a bounded in-memory buffer (``Recorder.record``: a lock and a list append); a
background thread swaps the buffer out every ``flush_interval`` seconds (or as soon as
``batch_size`` records are waiting) and writes the whole batch at once to one sink (group commit).
When the buffer is full the record is dropped and counted, never blocking the request. ``close``
drains everything (SIGTERM loses nothing); a SIGKILL loses at most one flush interval.

One sink interface, two sinks: ``MonitorSink`` writes into an in-process ProductionMonitor
(standalone server), ``SidecarSink`` POSTs the agreed wire format (mlops.serving.events) to the
monitoring sidecar in the same pod.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from mlops.serving.events import EVENTS_PATH, FeedbackEvent

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class PredictionRecord:
    prediction_id: str
    model_name: str
    model_version: str
    timestamp: float
    latency_seconds: float
    features: dict[str, Any]
    prediction: Any
    confidence: float | None
    error: bool = False


class EventSink(Protocol):
    def write(self, predictions: list[PredictionRecord], feedback: list[FeedbackEvent]) -> None: ...

    def close(self) -> None: ...


class NullSink:
    """Monitoring disabled: records are counted and discarded."""

    def write(self, predictions: list[PredictionRecord], feedback: list[FeedbackEvent]) -> None:
        return None

    def close(self) -> None:
        return None


class MonitorSink:
    """Writes batches into an in-process ``ProductionMonitor`` (one call per model version)."""

    def __init__(self, monitor: Any, feature_names: Callable[[str], list[str]]) -> None:
        self.monitor = monitor
        self.feature_names = feature_names
        params = inspect.signature(monitor.log_prediction_batch).parameters
        self._error_kw = next((k for k in ("error_count", "errors", "n_errors") if k in params), None)
        self._feedback = getattr(monitor, "log_feedback", None) or getattr(monitor, "record_outcomes", None)

    def write(self, predictions: list[PredictionRecord], feedback: list[FeedbackEvent]) -> None:
        import pandas as pd

        by_version: dict[str, list[PredictionRecord]] = {}
        for record in predictions:
            by_version.setdefault(record.model_version, []).append(record)
        for version, records in by_version.items():
            ok = [r for r in records if not r.error]
            errors = len(records) - len(ok)
            if not ok:
                continue
            frame = pd.DataFrame([r.features for r in ok], columns=self.feature_names(version))
            kwargs: dict[str, Any] = {
                "model_version": version,
                "latency_ms": 1000.0 * sum(r.latency_seconds for r in ok) / len(ok),
            }
            if self._error_kw:
                kwargs[self._error_kw] = errors
            self.monitor.log_prediction_batch(frame, [r.prediction for r in ok], **kwargs)
        if feedback and self._feedback is not None:
            self._feedback(
                [e.prediction for e in feedback],
                [e.true_label for e in feedback],
                model_version=feedback[0].model_version,
            )

    def close(self) -> None:
        return None


class SidecarSink:
    """POSTs ``{"predictions": [...], "feedback": [...], "batch_id": ...}`` to ``<sidecar>/v1/events``.

    A failed POST is retried with the same body: when only the response was lost the sidecar has
    already applied the batch, and its ``batch_id`` (unique per batch, the same on every retry) makes
    the sidecar ignore the repeat instead of counting it twice."""

    def __init__(self, base_url: str, timeout: float = 5.0, retries: int = 2) -> None:
        import httpx

        self.url = base_url.rstrip("/") + EVENTS_PATH
        self.retries = retries
        self._client = httpx.Client(timeout=timeout)
        self._batch_prefix = f"{secrets.token_hex(8)}-"
        self._batches = itertools.count()

    def write(self, predictions: list[PredictionRecord], feedback: list[FeedbackEvent]) -> None:
        import httpx

        body = orjson.dumps(
            {
                "predictions": [
                    {
                        "prediction_id": r.prediction_id,
                        "model_name": r.model_name,
                        "model_version": r.model_version,
                        "timestamp": r.timestamp,
                        "latency_seconds": r.latency_seconds,
                        "features": r.features,
                        "prediction": r.prediction,
                        "confidence": r.confidence,
                        "error": r.error,
                    }
                    for r in predictions
                ],
                "feedback": [e.model_dump() for e in feedback],
                "batch_id": f"{self._batch_prefix}{next(self._batches)}",
            }
        )
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                resp = self._client.post(self.url, content=body, headers={"content-type": "application/json"})
                if resp.status_code < 300:
                    return
                last = RuntimeError(f"sidecar answered HTTP {resp.status_code}: {resp.text[:200]}")
            except httpx.HTTPError as exc:
                last = exc
            time.sleep(0.05 * (attempt + 1))
        raise RuntimeError(f"cannot deliver events to {self.url}: {last}")

    def close(self) -> None:
        self._client.close()


class Recorder:
    """Bounded buffer + one flusher thread (group commit). Thread-safe; never blocks the caller."""

    def __init__(
        self,
        sink: EventSink,
        capacity: int = 100_000,
        batch_size: int = 2_000,
        flush_interval: float = 1.0,
    ) -> None:
        self.sink = sink
        self.capacity = capacity
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self._predictions: list[PredictionRecord] = []
        self._feedback: list[FeedbackEvent] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._flush_lock = threading.Lock()
        self.recorded_total = 0
        self.dropped_total = 0
        self.written_total = 0
        self.failed_total = 0
        self.flushes_total = 0
        self._thread = threading.Thread(target=self._run, name="mlops-recorder", daemon=True)
        self._thread.start()

    def record(self, record: PredictionRecord) -> bool:
        with self._lock:
            if self._stopping or len(self._predictions) + len(self._feedback) >= self.capacity:
                self.dropped_total += 1
                return False
            self._predictions.append(record)
            self.recorded_total += 1
            waiting = len(self._predictions)
        if waiting >= self.batch_size:
            self._wake.set()
        return True

    def record_feedback(self, events: list[FeedbackEvent]) -> int:
        with self._lock:
            room = max(0, self.capacity - len(self._predictions) - len(self._feedback))
            if self._stopping:
                room = 0
            accepted = events[:room]
            self._feedback.extend(accepted)
            self.dropped_total += len(events) - len(accepted)
        self._wake.set()
        return len(accepted)

    @property
    def queued(self) -> int:
        with self._lock:
            return len(self._predictions) + len(self._feedback)

    def flush(self) -> int:
        """Write everything buffered now; returns how many records were written."""
        with self._flush_lock:
            with self._lock:
                predictions, self._predictions = self._predictions, []
                feedback, self._feedback = self._feedback, []
            if not predictions and not feedback:
                return 0
            try:
                self.sink.write(predictions, feedback)
            except Exception:  # noqa: BLE001 - a failing sink must not kill the flusher; counted and logged
                self.failed_total += len(predictions) + len(feedback)
                logger.exception("monitoring sink failed; %d records lost", len(predictions) + len(feedback))
                return 0
            self.written_total += len(predictions) + len(feedback)
            self.flushes_total += 1
            return len(predictions) + len(feedback)

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            self.flush()
            with self._lock:
                if self._stopping and not self._predictions and not self._feedback:
                    return

    def close(self, timeout: float = 30.0) -> None:
        """Stop accepting, drain everything to the sink, close the sink."""
        with self._lock:
            self._stopping = True
        self._wake.set()
        self._thread.join(timeout)
        self.flush()
        try:
            self.sink.close()
        except Exception:  # noqa: BLE001 - closing is best effort at shutdown
            logger.exception("closing the monitoring sink failed")
