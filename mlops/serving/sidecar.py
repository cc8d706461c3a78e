"""The monitoring sidecar: the process next to each model server replica that turns events into counts.

The model server answers predictions first and ships what it saw, in batches, to
``POST /v1/events`` on localhost (wire format: ``mlops.serving.events``). The sidecar keeps only
counts that add up across replicas (``mlops.serving.sidecar_metrics``) and exposes them:

- ``GET /metrics``: Prometheus text (scraped by Prometheus or directly by the operator's collector);
- ``GET /summary``: the numbers computed from this sidecar's counts alone (``?version=`` for one
  version) -- handy for humans; the operator merges ``/metrics`` of all replicas instead;
- ``GET /v1/arms``: per experiment-arm counts for a running ABExperiment (events tagged by the
  router, see ``mlops.core.arm_tag``): counters, per-user sums and user sketches, with this
  process's instance id so the operator detects restarts;
- ``GET /healthz``: liveness/readiness.

Keeping this out of the model server keeps the drift binning and the scrape work off the serving
process, and lets the server stay a thin, fast prediction loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections import OrderedDict
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from pydantic import ValidationError

from mlops.core.arm_counts import table_to_list
from mlops.serving.events import EVENTS_PATH, EventEnvelope, FeedbackEvent, PredictionEvent
from mlops.serving.sidecar_metrics import SidecarRecorder, SnapshotCollector, profile_binner, summarize

logger = logging.getLogger(__name__)

ARMS_PATH = "/v1/arms"
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
# A server retries a batch within seconds; at one flush a second per replica this remembers hours.
DEFAULT_BATCH_ID_MEMORY = 10_000


class RecentIds:
    """The last ``capacity`` ids seen (insertion order; the oldest is forgotten first)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, item: str) -> bool:
        return item in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, item: str) -> None:
        self._ids[item] = None
        self._ids.move_to_end(item)
        while len(self._ids) > self.capacity:
            self._ids.popitem(last=False)


class _ORJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def _error(status: int, message: str, **extra: Any) -> _ORJSONResponse:
    return _ORJSONResponse({"error": message, **extra}, status_code=status)


def create_sidecar_app(
    *,
    profile: Any = None,
    model_name: str | None = None,
    baseline_accuracy: float | None = None,
    registry: CollectorRegistry | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    batch_id_memory: int = DEFAULT_BATCH_ID_MEMORY,
    feedback_ledger: str | None = None,
    arms_state: str | None = None,
) -> FastAPI:
    """Build the sidecar's ASGI app. ``profile`` is a ``mlops.core.profile.BaselineProfile`` (or None:
    then no feature bins, drift or data quality are counted). The recorder is ``app.state.recorder``.

    ``arms_state``: a file (on a volume that outlives the container) where the per-arm state and the
    instance id are written at a clean shutdown and read back, then removed, at the next start. The
    restarted sidecar then continues the same counters under the same instance id, so counts that
    arrived after the operator's last scrape are not lost (a plain reset-detecting accumulator, like
    Prometheus' ``increase()``, loses them). After an unclean exit there is no file: a new instance
    starting from zero, which the operator's reset detection handles."""
    registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
    claim = None
    if feedback_ledger:
        # Durable first-label-wins per prediction id: a restarted sidecar still ignores replays.
        import time

        from mlops.store.feedback_store import FeedbackLedger

        ledger = FeedbackLedger(feedback_ledger)

        def claim(items: list[tuple[str, str]]) -> list[bool]:
            return ledger.claim(items, time.time())

    recorder = SidecarRecorder(model_name, profile_binner(profile) if profile is not None else None,
                               claim=claim)
    registry.register(SnapshotCollector(recorder))
    batches = Counter("mlops_sidecar_event_batches", "Event batches accepted from the model server.",
                      registry=registry)
    rejected = Counter("mlops_sidecar_rejected_batches", "Event batches refused (malformed or too large).",
                       ["reason"], registry=registry)
    invalid_events = Counter("mlops_sidecar_invalid_events", "Events dropped alone because they were invalid "
                             "(the rest of their batch was applied).", ["kind"], registry=registry)
    duplicates = Counter("mlops_sidecar_duplicate_batches", "Event batches ignored: their batch_id was already "
                         "applied (a retry after a lost response).", registry=registry)
    applied = RecentIds(batch_id_memory)
    instance = uuid.uuid4().hex
    if arms_state:
        instance = _resume_arms(arms_state, recorder) or instance

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        if arms_state:
            _persist_arms(arms_state, instance, recorder)

    app = FastAPI(title="mlops sidecar", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.recorder = recorder
    app.state.profile = profile
    app.state.registry = registry

    @app.post(EVENTS_PATH, status_code=202)
    async def events(request: Request) -> Response:
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("application/json"):
            rejected.labels("content_type").inc()
            return _error(415, "events must be sent as application/json")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_body_bytes:
            rejected.labels("too_large").inc()
            return _error(413, f"event batch larger than {max_body_bytes} bytes")
        body = await request.body()
        if len(body) > max_body_bytes:
            rejected.labels("too_large").inc()
            return _error(413, f"event batch larger than {max_body_bytes} bytes")
        try:
            batch = EventEnvelope.model_validate_json(body)
        except ValidationError as exc:
            rejected.labels("invalid").inc()
            problems = [
                {"field": ".".join(str(p) for p in e["loc"]), "problem": e["msg"]} for e in exc.errors()[:20]
            ]
            return _error(422, "invalid event batch", details=problems)
        if batch.batch_id is not None and batch.batch_id in applied:
            duplicates.inc()
            return _ORJSONResponse({"accepted": 0, "duplicate_batch": batch.batch_id}, status_code=202)
        # Each event on its own: one bad event (a NaN label, an integer beyond 64 bits) is dropped and
        # named, and never costs the good events of the same batch.
        predictions, feedback, problems = [], [], []
        for kind, raw_items, model, good in (("predictions", batch.predictions, PredictionEvent, predictions),
                                             ("feedback", batch.feedback, FeedbackEvent, feedback)):
            for i, raw in enumerate(raw_items):
                try:
                    good.append(model.model_validate(raw))
                except ValidationError as exc:
                    invalid_events.labels(kind).inc()
                    first = exc.errors()[0]
                    problems.append({"field": ".".join(str(p) for p in (kind, i, *first["loc"])),
                                     "problem": first["msg"]})
        # No await between applying and remembering: a concurrent retry cannot slip in between.
        recorder.record_predictions(predictions)
        recorder.record_feedback(feedback)
        if batch.batch_id is not None:
            applied.add(batch.batch_id)
        batches.inc()
        answer: dict[str, Any] = {"accepted": len(predictions) + len(feedback)}
        if problems:
            answer.update(invalid=len(problems), details=problems[:20])
        return _ORJSONResponse(answer, status_code=202)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/summary")
    async def summary(version: str | None = None) -> Response:
        snapshot = recorder.snapshot()
        if version is not None:
            snapshot = snapshot.for_version(version)
        return _ORJSONResponse(summarize(snapshot, profile, baseline_accuracy))

    @app.get(ARMS_PATH)
    async def arms() -> Response:
        """Per experiment-arm state (counters, per-user sums, user sketches) and this process's instance
        id, so the operator can tell a restarted sidecar from one whose counts went on growing."""
        return _ORJSONResponse({"instance": instance, "model": model_name,
                                "arms": table_to_list(recorder.arms())})

    @app.get("/healthz")
    async def healthz() -> Response:
        return _ORJSONResponse({"status": "ok", "model": model_name, "profile": profile is not None})

    return app


def _resume_arms(path: str, recorder: SidecarRecorder) -> str | None:
    """Load the per-arm state a clean shutdown left at ``path`` and remove the file; returns the
    instance id to continue under (None: nothing to resume)."""
    try:
        with open(path, "rb") as handle:
            data = orjson.loads(handle.read())
    except FileNotFoundError:
        return None
    except (OSError, orjson.JSONDecodeError) as exc:
        logger.error("cannot read the arm state %s (%s): starting from zero as a new instance", path, exc)
        _discard(path)
        return None
    try:
        instance = data["instance"]
        if not isinstance(instance, str) or not instance:
            raise ValueError("no instance id")
        recorder.restore_arms(data["arms"])
    except (KeyError, TypeError, ValueError) as exc:
        logger.error("malformed arm state %s (%s): starting from zero as a new instance", path, exc)
        _discard(path)
        return None
    # consumed: if this process dies uncleanly, the next one must not resume the same counts twice
    os.remove(path)
    logger.info("resumed per-arm counts of instance %s from %s", instance, path)
    return instance


def _discard(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.replace(path, path + ".corrupt")


def _persist_arms(path: str, instance: str, recorder: SidecarRecorder) -> None:
    """Write the state atomically (a temporary file renamed over ``path``)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as handle:
            handle.write(orjson.dumps({"instance": instance, "arms": recorder.arm_state()}))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        logger.error("cannot persist the arm state to %s: %s (the operator will see a counter reset)", path, exc)
        with contextlib.suppress(OSError):
            os.remove(tmp)


def load_profile(path: str) -> Any:
    """Read a baseline profile JSON file (written by ``mlops train`` / ``build_profile(...).to_dict()``)."""
    from mlops.core.profile import BaselineProfile

    with open(path, "rb") as handle:
        data = orjson.loads(handle.read())
    return BaselineProfile.from_dict(data)


def run_sidecar(host: str, port: int, **kwargs: Any) -> None:
    """Serve the sidecar with uvicorn until SIGTERM/SIGINT."""
    import uvicorn

    app = create_sidecar_app(**kwargs)
    from mlops.serving.http_timeouts import HeaderTimeoutProtocol

    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, http=HeaderTimeoutProtocol)
