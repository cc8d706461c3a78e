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
from collections import deque
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
    def write(self, predictions: list[PredictionRecord], feedback: list[FeedbackEvent],
              batch_key: str | None = None) -> int | None:
        """Write one batch; return how many records were refused as invalid (dropped alone, the rest
        written), or None. Raise when the batch could not be written (it is retried): before raising,
        remove from the lists what *was* written, so a retry never writes it twice. ``batch_key`` is
        the same on every retry of one batch."""
        ...

    def close(self) -> None: ...


class NullSink:
    """Monitoring disabled: records are counted and discarded."""

    def write(self, predictions: list[PredictionRecord], feedback: list[FeedbackEvent],
              batch_key: str | None = None) -> int | None:
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

    def write(self, predictions: list[PredictionRecord], feedback: list[FeedbackEvent],
              batch_key: str | None = None) -> int | None:
        import pandas as pd

        by_version: dict[str, list[PredictionRecord]] = {}
        for record in predictions:
            by_version.setdefault(record.model_version, []).append(record)
        for version, records in by_version.items():
            ok = [r for r in records if not r.error]
            errors = len(records) - len(ok)
            if ok:
                frame = pd.DataFrame([r.features for r in ok], columns=self.feature_names(version))
                kwargs: dict[str, Any] = {
                    "model_version": version,
                    "latency_ms": 1000.0 * sum(r.latency_seconds for r in ok) / len(ok),
                }
                if self._error_kw:
                    kwargs[self._error_kw] = errors
                self.monitor.log_prediction_batch(frame, [r.prediction for r in ok], **kwargs)
            # Written (durable): a retry after a later group fails must not count these again.
            written = {id(r) for r in records}
            predictions[:] = [r for r in predictions if id(r) not in written]
        if feedback and self._feedback is not None:
            feedback_by_version: dict[str, list[FeedbackEvent]] = {}
            for event in feedback:
                feedback_by_version.setdefault(event.model_version, []).append(event)
            for version, events in feedback_by_version.items():
                self._feedback([e.prediction for e in events], [e.true_label for e in events], model_version=version)
                done = {id(e) for e in events}
                feedback[:] = [e for e in feedback if id(e) not in done]
        return None

    def close(self) -> None:
        return None


def _prediction_dict(r: PredictionRecord) -> dict[str, Any]:
    return {
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


def _encodable(items: list[Any], encode: Callable[[Any], Any]) -> tuple[list[Any], int]:
    """The items that serialise to JSON on their own, and how many did not."""
    good = []
    for item in items:
        try:
            orjson.dumps(encode(item))
        except (TypeError, ValueError):
            continue
        good.append(item)
    return good, len(items) - len(good)


class SidecarSink:
    """POSTs ``{"predictions": [...], "feedback": [...], "batch_id": ...}`` to ``<sidecar>/v1/events``.

    A failed POST is retried with the same body: when only the response was lost the sidecar has
    already applied the batch, and its ``batch_id`` (unique per batch, the same on every retry, also
    across the Recorder's later retries) makes the sidecar ignore the repeat instead of counting it
    twice. A record that cannot be encoded (e.g. an integer beyond 64 bits) is dropped alone and
    counted; the sidecar validates events one by one and drops only the invalid ones, too."""

    def __init__(self, base_url: str, timeout: float = 5.0, retries: int = 2) -> None:
        import httpx

        self.url = base_url.rstrip("/") + EVENTS_PATH
        self.retries = retries
        self._client = httpx.Client(timeout=timeout)
        self._batch_prefix = f"{secrets.token_hex(8)}-"
        self._batches = itertools.count()

    def write(self, predictions: list[PredictionRecord], feedback: list[FeedbackEvent],
              batch_key: str | None = None) -> int | None:
        import httpx

        batch_id = f"{self._batch_prefix}{batch_key if batch_key is not None else next(self._batches)}"
        invalid = 0
        payload = {"predictions": [_prediction_dict(r) for r in predictions],
                   "feedback": [e.model_dump() for e in feedback], "batch_id": batch_id}
        try:
            body = orjson.dumps(payload)
        except (TypeError, ValueError):
            good_p, bad_p = _encodable(predictions, _prediction_dict)
            good_f, bad_f = _encodable(feedback, lambda e: e.model_dump())
            invalid = bad_p + bad_f
            logger.warning("dropped %d monitoring record(s) that cannot be encoded as JSON", invalid)
            body = orjson.dumps({"predictions": [_prediction_dict(r) for r in good_p],
                                 "feedback": [e.model_dump() for e in good_f], "batch_id": batch_id})
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                resp = self._client.post(self.url, content=body, headers={"content-type": "application/json"})
                if resp.status_code < 300:
                    answer = resp.json() if resp.content else {}
                    return invalid + int(answer.get("invalid", 0) if isinstance(answer, dict) else 0)
                last = RuntimeError(f"sidecar answered HTTP {resp.status_code}: {resp.text[:200]}")
            except httpx.HTTPError as exc:
                last = exc
            time.sleep(0.05 * (attempt + 1))
        raise RuntimeError(f"cannot deliver events to {self.url}: {last}")

    def close(self) -> None:
        self._client.close()


class Recorder:
    """Bounded buffer + one flusher thread (group commit). Thread-safe; never blocks the caller.

    A batch the sink cannot write (disk full, read-only store, sidecar down) is kept in a bounded
    retry buffer (``retry_capacity`` records) and written first at the next flush; when the buffer
    overflows, the oldest batch is dropped and counted in ``failed_total``. ``sink_error`` holds the
    last failure until a write succeeds again (the server reports itself ``degraded`` meanwhile)."""

    def __init__(
        self,
        sink: EventSink,
        capacity: int = 100_000,
        batch_size: int = 2_000,
        flush_interval: float = 1.0,
        retry_capacity: int = 50_000,
    ) -> None:
        self.sink = sink
        self.capacity = capacity
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.retry_capacity = retry_capacity
        self._predictions: list[PredictionRecord] = []
        self._feedback: list[FeedbackEvent] = []
        self._retry: deque[tuple[str, list[PredictionRecord], list[FeedbackEvent]]] = deque()
        self._keys = itertools.count()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._flush_lock = threading.Lock()
        self.recorded_total = 0
        self.dropped_total = 0
        self.written_total = 0
        self.failed_total = 0
        self.invalid_total = 0
        self.flushes_total = 0
        self.sink_failures_total = 0
        self.sink_error: str | None = None
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

    @property
    def retry_buffered(self) -> int:
        return sum(len(p) + len(f) for _, p, f in list(self._retry))

    def flush(self) -> int:
        """Write what failed before, then everything buffered now; returns how many records were written."""
        with self._flush_lock:
            with self._lock:
                predictions, self._predictions = self._predictions, []
                feedback, self._feedback = self._feedback, []
            if predictions or feedback:
                self._retry.append((str(next(self._keys)), predictions, feedback))
            written = 0
            while self._retry:
                key, preds, fb = self._retry[0]
                size = len(preds) + len(fb)
                try:
                    invalid = self.sink.write(preds, fb, key) or 0
                except Exception as exc:  # noqa: BLE001 - kept for a retry, counted and reported; never fatal
                    self.sink_failures_total += 1
                    self.written_total += size - len(preds) - len(fb)  # what the sink managed to write
                    written += size - len(preds) - len(fb)
                    if self.sink_error is None:
                        logger.error("monitoring sink failed (%s); %d record(s) kept for a retry", exc,
                                     self.retry_buffered)
                    self.sink_error = f"{type(exc).__name__}: {exc}"[:300]
                    self._trim_retry()
                    break
                self._retry.popleft()
                self.invalid_total += invalid
                self.written_total += size - invalid
                written += size - invalid
                self.flushes_total += 1
                if self.sink_error is not None:
                    logger.warning("monitoring sink recovered")
                    self.sink_error = None
            return written

    def _trim_retry(self) -> None:
        while len(self._retry) > 1 and self.retry_buffered > self.retry_capacity:
            _, preds, fb = self._retry.popleft()
            self.failed_total += len(preds) + len(fb)
        if self._retry and self.retry_buffered > self.retry_capacity:
            key, preds, fb = self._retry[0]
            excess = self.retry_buffered - self.retry_capacity
            cut_p = min(excess, len(preds))
            self._retry[0] = (key, preds[cut_p:], fb[excess - cut_p:])
            self.failed_total += excess

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            self.flush()
            with self._lock:
                if self._stopping and not self._predictions and not self._feedback:
                    return

    def close(self, timeout: float = 30.0) -> None:
        """Stop accepting, drain everything to the sink (what it still refuses is counted as
        failed), close the sink."""
        with self._lock:
            self._stopping = True
        self._wake.set()
        self._thread.join(timeout)
        self.flush()
        lost = self.retry_buffered
        if lost:
            self.failed_total += lost
            self._retry.clear()
            logger.error("monitoring sink still failing at shutdown; %d record(s) lost", lost)
        try:
            self.sink.close()
        except Exception:  # noqa: BLE001 - closing is best effort at shutdown
            logger.exception("closing the monitoring sink failed")
