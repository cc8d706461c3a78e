"""`mlops route`: the sticky weighted router in front of a model's versions.

Why a separate process: in a cluster each model version runs in its own Deployment (``mlops serve``
+ ``mlops sidecar``), and something must decide, per user, which version answers. The router:

- reads the routing table (``mlops.serving.routing_table``) from a file -- the operator's ConfigMap
  mounted as a volume -- and reloads it when the file changes. Kubernetes updates a mounted ConfigMap
  by swapping a symlink, so the watcher compares the *resolved* file's inode, mtime and size every
  ``poll_interval`` seconds; an invalid new table is refused (counted, logged) and the old one stays;
- assigns each request with the A/B engine's salted hash of the user key (header ``X-User-ID`` or
  the body's ``user_id``), honouring segment rules and ``paused`` (``choose_version``);
- proxies to the chosen version over pooled keep-alive connections (one ``httpx.AsyncClient``) with
  timeouts; an unreachable upstream is a 502 JSON error, a slow one a 504;
- forwards ``POST /feedback`` to the version encoded in the HMAC-signed prediction id, so true
  outcomes reach the counters of the version that made the prediction; forged ids are refused (403);
- exports ``mlops_router_*`` metrics per version and variant on ``/metrics``.

``/predict/batch`` with ``user_ids`` is split by assigned version, sent concurrently, and the rows are
put back in request order, so a user is served by the same version in single and batch calls.

A raw ASGI app (no framework): the router adds one hop to every prediction, so it does only the work
routing needs -- parse the body once, hash, forward bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from mlops.core.arm_tag import HEADER as ARM_HEADER
from mlops.core.prediction_id import InvalidPredictionId, verify_prediction_id
from mlops.serving.http_timeouts import HeaderTimeoutProtocol, body_timeout, read_with_timeout
from mlops.serving.routing_table import RoutingTable, arm_tag, choose_version, load_routing_table

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

ROUTER_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
)
# Hop-by-hop headers (RFC 9110 7.6.1) and those httpx recomputes are never forwarded.
_HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"host", b"content-length",
})
# Set by the router only: a client-supplied arm tag is dropped, never forwarded.
_FROM_ROUTER = frozenset({*_HOP_BY_HOP, ARM_HEADER.encode()})
_RESPONSE_DROP = frozenset({*_HOP_BY_HOP, b"content-encoding", b"date", b"server"})
_JSON = [(b"content-type", b"application/json")]


@dataclass(frozen=True)
class RouterSettings:
    """Timeouts (seconds) and pool sizes of the upstream client; body limit for requests."""

    connect_timeout: float = 2.0
    read_timeout: float = 30.0
    pool_timeout: float = 5.0
    max_connections: int = 200
    max_keepalive: int = 100
    # Idle pooled connections are dropped before the upstream's keep-alive timeout (uvicorn: 5 s), so a
    # request is never sent on a connection the server is closing at that moment (a 502 ReadError).
    keepalive_expiry: float = 2.0
    max_body_bytes: int = 16 * 1024 * 1024
    poll_interval: float = 1.0


class TableWatcher:
    """Holds the current table and reloads it when the (possibly symlinked) file changes."""

    def __init__(self, path: str | Path, on_reload: Callable[[str], None] | None = None) -> None:
        self.path = Path(path)
        self._on_reload = on_reload or (lambda result: None)
        self._signature = self._stat()
        self.table: RoutingTable = load_routing_table(self.path)
        self.last_error: str | None = None

    def _stat(self) -> tuple[int, int, int, int] | None:
        try:
            st = os.stat(self.path)  # follows the ConfigMap's ..data symlink to the real file
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)

    def check(self) -> bool:
        """Reload if the file changed; True when a new table was installed."""
        signature = self._stat()
        if signature is None or signature == self._signature:
            return False
        self._signature = signature
        try:
            table = load_routing_table(self.path)
        except ValueError as exc:
            self.last_error = str(exc)
            logger.error("routing table not reloaded, keeping the previous one: %s", exc)
            self._on_reload("error")
            return False
        self.table = table
        self.last_error = None
        logger.info("routing table reloaded from %s", self.path)
        self._on_reload("ok")
        return True


class _RouterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("mlops_router_requests", "Requests routed, by serving version and variant.",
                                ["version", "variant"], registry=registry)
        self.latency = Histogram("mlops_router_request_duration_seconds",
                                 "Time from request received to upstream answer relayed.",
                                 ["version", "variant"], buckets=ROUTER_LATENCY_BUCKETS, registry=registry)
        self.upstream_errors = Counter("mlops_router_upstream_errors", "Upstream failures (502/504 answers).",
                                       ["version", "reason"], registry=registry)
        self.feedback = Counter("mlops_router_feedback", "Feedback items forwarded to the version that "
                                "served the prediction.", ["version"], registry=registry)
        self.feedback_rejected = Counter("mlops_router_feedback_rejected", "Feedback refused.", ["reason"],
                                         registry=registry)
        self.reloads = Counter("mlops_router_table_reloads", "Routing table reloads.", ["result"],
                               registry=registry)
        self.treatment_share = Gauge("mlops_router_treatment_share",
                                     "Treatment share of the running experiment (0 without one).",
                                     registry=registry)


class RouterApp:
    """The router's ASGI application. ``transport`` lets tests inject an httpx transport."""

    def __init__(
        self,
        table_path: str | Path,
        *,
        key: bytes | tuple[bytes, ...],
        registry: CollectorRegistry | None = None,
        settings: RouterSettings | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.perf_counter,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings or RouterSettings()
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = _RouterMetrics(self.registry)
        self.watcher = TableWatcher(table_path, on_reload=lambda r: self.metrics.reloads.labels(r).inc())
        self._key = key
        self._rng = rng or random.Random()
        self._clock = clock
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._poller: asyncio.Task | None = None
        self._update_gauges()

    # ---------------------------------------------------------------- lifecycle
    @property
    def table(self) -> RoutingTable:
        return self.watcher.table

    def _update_gauges(self) -> None:
        experiment = self.table.experiment
        self.metrics.treatment_share.set(experiment.treatment_share if experiment and not experiment.paused else 0.0)

    async def startup(self) -> None:
        s = self.settings
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(s.read_timeout, connect=s.connect_timeout, pool=s.pool_timeout),
            limits=httpx.Limits(max_connections=s.max_connections, max_keepalive_connections=s.max_keepalive,
                                keepalive_expiry=s.keepalive_expiry),
            transport=self._transport,
        )
        self._poller = asyncio.create_task(self._poll())

    async def shutdown(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        if self._client is not None:
            await self._client.aclose()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_interval)
            if self.watcher.check():
                self._update_gauges()

    # ---------------------------------------------------------------- ASGI entry
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        if path == "/metrics" and method == "GET":
            await _respond(send, 200, generate_latest(self.registry), [(b"content-type", CONTENT_TYPE_LATEST.encode())])
            return
        if path == "/healthz" and method == "GET":
            await self._healthz(send)
            return
        if path == "/routing" and method == "GET":
            await _respond(send, 200, self.table.to_json().encode(), _JSON)
            return
        started = False

        async def tracked_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self._http(scope, receive, tracked_send)
        except Exception:
            # Never a plain-text 500 from the server underneath: a JSON error like every other answer.
            logger.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await _error(send, 500, "internal router error; see the router log")

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        try:
            body = await _read_body(receive, self.settings.max_body_bytes, body_timeout())
        except TimeoutError:
            await _error(send, 408, f"request body not received within {body_timeout():g} s")
            return
        if body is None:
            await _error(send, 413, f"request body larger than {self.settings.max_body_bytes} bytes")
            return
        if method == "POST" and path == "/feedback":
            await self._feedback(scope, body, send)
        elif method == "POST" and path == "/predict/batch":
            await self._predict_batch(scope, body, send)
        elif method == "POST" and path == "/predict":
            await self._predict(scope, body, send)
        else:
            # Everything else (/health, /models, /monitoring/status, /docs, ...) is the stable version's.
            await self._proxy(scope, body, send, self.table.stable_version, "stable")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _healthz(self, send: Send) -> None:
        table = self.table
        experiment = table.experiment
        payload = {
            "status": "ok",
            "model": table.model,
            "stable_version": table.stable_version,
            "versions": sorted(table.versions),
            "experiment": None if experiment is None else {
                "name": experiment.name, "treatment_share": experiment.treatment_share, "paused": experiment.paused,
            },
            "last_reload_error": self.watcher.last_error,
        }
        await _respond(send, 200, orjson.dumps(payload), _JSON)

    # ---------------------------------------------------------------- routing
    def _user_key(self, scope: Scope, payload: Any) -> str | None:
        header = self.table.user_key_header.lower().encode("latin-1")
        for name, value in scope["headers"]:
            if name == header and value:
                return value.decode("latin-1")
        if isinstance(payload, dict):
            user = payload.get("user_id")
            if isinstance(user, str | int) and not isinstance(user, bool) and str(user):
                return str(user)
        return None

    async def _predict(self, scope: Scope, body: bytes, send: Send) -> None:
        payload = _loads(body)
        features = payload.get("features") if isinstance(payload, dict) else None
        user = self._user_key(scope, payload)
        table = self.table
        feats = features if isinstance(features, dict) else None
        version, variant = choose_version(table, user, feats, rng=self._rng)
        tag = arm_tag(table, user, feats, version, variant)
        await self._proxy(scope, body, send, version, variant, label_response=True, tag=tag)

    async def _predict_batch(self, scope: Scope, body: bytes, send: Send) -> None:
        payload = _loads(body)
        table = self.table
        header_user = self._user_key(scope, None)
        rows = payload.get("batch_features") if isinstance(payload, dict) else None
        users = payload.get("user_ids") if isinstance(payload, dict) else None
        if (header_user or table.experiment is None or not isinstance(rows, list) or not isinstance(users, list)
                or len(users) != len(rows)):
            # One decision for the whole batch (a header user key, or nothing per row to split on).
            version, variant = choose_version(table, header_user, None, rng=self._rng)
            await self._proxy(scope, body, send, version, variant, label_response=True)
            return
        groups: dict[str, list[int]] = {}
        variants: dict[str, str] = {}
        for index, (row, user) in enumerate(zip(rows, users, strict=True)):
            key = str(user) if user is not None and str(user) else None
            version, variant = choose_version(table, key, row if isinstance(row, dict) else None, rng=self._rng)
            groups.setdefault(version, []).append(index)
            variants[version] = variant
        if len(groups) == 1:
            version = next(iter(groups))
            await self._proxy(scope, body, send, version, variants[version], label_response=True)
            return
        await self._split_batch(scope, payload, groups, variants, send)

    async def _split_batch(self, scope: Scope, payload: dict, groups: dict[str, list[int]],
                           variants: dict[str, str], send: Send) -> None:
        started = self._clock()
        sub_requests = []
        for version, indexes in groups.items():
            sub = dict(payload)
            sub["batch_features"] = [payload["batch_features"][i] for i in indexes]
            sub["user_ids"] = [payload["user_ids"][i] for i in indexes]
            sub_requests.append(self._forward(scope, orjson.dumps(sub), version))
        results = await asyncio.gather(*sub_requests, return_exceptions=True)
        merged: list[Any] = [None] * len(payload["batch_features"])
        extra: dict[str, Any] = {}
        for (version, indexes), result in zip(groups.items(), results, strict=True):
            if isinstance(result, BaseException):
                status, message = self._upstream_failure(version, result)
                await _error(send, status, message, version=version)
                return
            status, _headers, content = result
            data = _loads(content)
            items = data.get("predictions") if isinstance(data, dict) else None
            if status >= 300 or not isinstance(items, list) or len(items) != len(indexes):
                # An upstream refused its part (e.g. 422): relay its answer as is.
                await _respond(send, status, content, _JSON)
                return
            for i, item in zip(indexes, items, strict=True):
                if isinstance(item, dict) and item.get("variant") is None and self.table.experiment is not None:
                    item["variant"] = variants[version]
                merged[i] = item
            latency_ms = max(extra.get("latency_ms", 0.0), data.get("latency_ms") or 0.0)
            extra.update({k: v for k, v in data.items() if k != "predictions"})
            if "latency_ms" in data:
                extra["latency_ms"] = latency_ms  # the parts ran concurrently: the slowest one counts
            self.metrics.requests.labels(version, variants[version]).inc()
        elapsed = self._clock() - started
        for version in groups:
            self.metrics.latency.labels(version, variants[version]).observe(elapsed)
        extra.pop("model_version", None)
        if "count" in extra:
            extra["count"] = len(merged)
        extra["predictions"] = merged
        await _respond(send, 200, orjson.dumps(extra), _JSON)

    # ---------------------------------------------------------------- feedback
    async def _feedback(self, scope: Scope, body: bytes, send: Send) -> None:
        payload = _loads(body)
        if payload is _INVALID:
            self.metrics.feedback_rejected.labels("malformed").inc()
            await _error(send, 400, "request body is not valid JSON")
            return
        items, rebuild = _feedback_items(payload)
        if not items:
            self.metrics.feedback_rejected.labels("malformed").inc()
            await _error(send, 400, "feedback needs a 'prediction_id' (or a list of items with one)")
            return
        groups: dict[str, list[Any]] = {}
        for item in items:
            pid = item.get("prediction_id")
            try:
                ref = verify_prediction_id(self._key, pid if isinstance(pid, str) else "")
            except InvalidPredictionId as exc:
                self.metrics.feedback_rejected.labels("invalid_id").inc()
                await _error(send, 403, f"prediction id rejected: {exc}", prediction_id=str(pid)[:200])
                return
            if ref.version not in self.table.versions:
                self.metrics.feedback_rejected.labels("unknown_version").inc()
                await _error(send, 409, f"version {ref.version!r} that served this prediction is no longer routed",
                             version=ref.version)
                return
            groups.setdefault(ref.version, []).append(item)
        if len(groups) == 1:
            version, group = next(iter(groups.items()))
            self.metrics.feedback.labels(version).inc(len(group))
            await self._proxy(scope, body, send, version, "feedback", count=False)
            return
        results = await asyncio.gather(
            *(self._forward(scope, orjson.dumps(rebuild(group)), version) for version, group in groups.items()),
            return_exceptions=True,
        )
        answers: dict[str, Any] = {}
        worst = 200
        for (version, group), result in zip(groups.items(), results, strict=True):
            if isinstance(result, BaseException):
                status, message = self._upstream_failure(version, result)
                answers[version] = {"status": status, "error": message}
            else:
                status = result[0]
                answers[version] = {"status": status, "response": _loads(result[2])}
                if status < 300:
                    self.metrics.feedback.labels(version).inc(len(group))
            worst = max(worst, status)
        await _respond(send, 200 if worst < 300 else 207, orjson.dumps({"results": answers}), _JSON)

    # ---------------------------------------------------------------- proxying
    async def _forward(self, scope: Scope, body: bytes, version: str,
                       extra_headers: list[tuple[bytes, bytes]] | None = None) -> tuple[int, list, bytes]:
        assert self._client is not None, "router not started (lifespan)"
        route = self.table.versions.get(version)
        if route is None:  # the table was swapped between the decision and now, dropping this version
            raise httpx.ConnectError(f"version {version} is no longer in the routing table")
        url = route.url + scope["path"]
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode("latin-1")
        headers = [(k, v) for k, v in scope["headers"] if k not in _FROM_ROUTER]
        headers.append((b"x-mlops-version", version.encode()))
        if extra_headers:
            headers.extend(extra_headers)
        response = await self._client.request(scope["method"], url, content=body, headers=headers)
        return response.status_code, response.headers.raw, response.content

    def _upstream_failure(self, version: str, exc: BaseException) -> tuple[int, str]:
        if isinstance(exc, httpx.TimeoutException):
            self.metrics.upstream_errors.labels(version, "timeout").inc()
            return 504, f"upstream version {version} timed out"
        if isinstance(exc, httpx.HTTPError):
            self.metrics.upstream_errors.labels(version, "unreachable").inc()
            return 502, f"upstream version {version} unreachable: {type(exc).__name__}"
        raise exc

    async def _proxy(self, scope: Scope, body: bytes, send: Send, version: str, variant: str, *,
                     label_response: bool = False, count: bool = True, tag: str | None = None) -> None:
        started = self._clock()
        experiment = self.table.experiment
        extra = [(b"x-mlops-variant", variant.encode())]
        if experiment is not None:
            extra.append((b"x-mlops-experiment", experiment.name.encode()))
        if tag is not None:
            extra.append((ARM_HEADER.encode(), tag.encode()))
        try:
            status, raw_headers, content = await self._forward(scope, body, version, extra)
        except httpx.HTTPError as exc:
            status, message = self._upstream_failure(version, exc)
            await _error(send, status, message, version=version)
            return
        if label_response and experiment is not None and status == 200:
            content = _label_variant(content, variant)
        headers = [(k, v) for k, v in raw_headers if k.lower() not in _RESPONSE_DROP]
        headers.append((b"x-mlops-version", version.encode()))
        headers.append((b"x-mlops-variant", variant.encode()))
        await _respond(send, status, content, headers)
        if count:
            self.metrics.requests.labels(version, variant).inc()
            self.metrics.latency.labels(version, variant).observe(self._clock() - started)


# -------------------------------------------------------------------- helpers

_INVALID = object()


def _loads(body: bytes) -> Any:
    try:
        return orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return _INVALID


def _label_variant(content: bytes, variant: str) -> bytes:
    """Fill the guide's ``variant`` field of a single-prediction answer when the server left it empty
    (a single-version server does not know about the experiment; the router does)."""
    data = _loads(content)
    if isinstance(data, dict) and data.get("variant") is None and "prediction" in data:
        data["variant"] = variant
        return orjson.dumps(data)
    if isinstance(data, dict) and isinstance(data.get("predictions"), list):
        changed = False
        for item in data["predictions"]:
            if isinstance(item, dict) and item.get("variant") is None:
                item["variant"] = variant
                changed = True
        if changed:
            return orjson.dumps(data)
    return content


def _feedback_items(payload: Any) -> tuple[list[dict], Callable[[list[dict]], Any]]:
    """The feedback items of a body and a function rebuilding a body of the same shape from a subset.

    Accepted shapes: one item ``{"prediction_id": ..., ...}``, a list of items, or an object whose
    list-valued field (e.g. ``"feedback"``) holds the items.
    """
    if isinstance(payload, dict) and "prediction_id" in payload:
        return [payload], lambda items: items[0]
    if isinstance(payload, list) and payload and all(isinstance(i, dict) for i in payload):
        return payload, lambda items: items
    if isinstance(payload, dict):
        for field, value in payload.items():
            if isinstance(value, list) and value and all(isinstance(i, dict) and "prediction_id" in i for i in value):
                return value, lambda items, field=field: {**payload, field: items}
    return [], lambda items: items


async def _read_body(receive: Receive, limit: int, timeout: float) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    more = True
    deadline = time.monotonic() + timeout
    while more:
        message = await read_with_timeout(receive, max(0.0, deadline - time.monotonic()))
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _error(send: Send, status: int, message: str, **extra: Any) -> None:
    await _respond(send, status, orjson.dumps({"error": message, **extra}), _JSON)


def run_router(table_path: str, host: str, port: int, *, key: bytes | tuple[bytes, ...], settings: RouterSettings | None = None) -> None:
    """Serve the router with uvicorn until SIGTERM/SIGINT."""
    import uvicorn

    app = RouterApp(table_path, key=key, settings=settings)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on",
                http=HeaderTimeoutProtocol)
