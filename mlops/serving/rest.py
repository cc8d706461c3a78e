"""The HTTP layer of the model server: FastAPI routes and the raw ASGI ``POST /predict`` path.

Why it exists: it only decodes (headers, body limits and timeouts, pydantic validation), calls the
:class:`mlops.serving.dataplane.DataPlane` and encodes (orjson); errors raised by either side are
:class:`ApiError` and mapped to HTTP by mlops.serving.errors. The raw path and the FastAPI route
answer identically (tests/unit compare them).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI, Query, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from mlops.core.arm_tag import HEADER as ARM_HEADER
from mlops.serving.dataplane import ADMIN_TOKEN_ENV, MODEL_ROOT_ENV, MODEL_SUFFIXES, DataPlane, _iso, _plain
from mlops.serving.errors import ApiError, install_error_handlers, validation_error
from mlops.serving.http_timeouts import body_timeout as default_body_timeout
from mlops.serving.http_timeouts import read_with_timeout
from mlops.serving.model_store import ModelLoadError
from mlops.serving.schemas import (
    REQUEST_MODELS,
    BatchPredictRequest,
    FeedbackRequest,
    LoadModelRequest,
    PredictRequest,
    RollbackRequest,
)

logger = logging.getLogger("mlops.serving.production_server")

_JSON = "application/json"
_ARM_HEADER_BYTES = ARM_HEADER.encode()


def _json(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status, media_type=_JSON)


class RestApi:
    """The HTTP layer over a :class:`DataPlane`: checks headers, reads and validates bodies, calls the
    plane and encodes the answer; the admin routes need the bearer token."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self.body_timeout = plane.body_timeout if plane.body_timeout is not None else default_body_timeout()

    def _check_headers(self, content_type: str, declared: str | None) -> None:
        media = content_type.split(";", 1)[0].strip().lower()
        if media != _JSON and not media.endswith("+json"):
            raise ApiError(415, "unsupported_media_type",
                           f"Content-Type must be application/json, got {content_type or 'none'!r}")
        if declared is not None:
            try:
                too_big = int(declared) > self.plane.max_body_bytes
            except ValueError:
                raise ApiError(400, "bad_request", "invalid Content-Length header") from None
            if too_big:
                raise ApiError(413, "body_too_large", f"request body over {self.plane.max_body_bytes} bytes")

    def _validate(self, body: bytes, model: type[BaseModel]) -> Any:
        if len(body) > self.plane.max_body_bytes:
            raise ApiError(413, "body_too_large", f"request body over {self.plane.max_body_bytes} bytes")
        if not body:
            raise ApiError(400, "malformed_json", "request body is empty; expected a JSON object")
        try:
            return model.model_validate_json(body)
        except ValidationError as exc:
            raise validation_error(list(exc.errors(include_url=False))) from None

    async def _body(self, request: Request, model: type[BaseModel]) -> Any:
        declared = request.headers.get("content-length")
        self._check_headers(request.headers.get("content-type", ""), declared)

        async def read() -> bytes:
            if declared is not None:
                return await request.body()
            chunks = bytearray()
            async for chunk in request.stream():
                chunks.extend(chunk)
                if len(chunks) > self.plane.max_body_bytes:
                    raise ApiError(413, "body_too_large", f"request body over {self.plane.max_body_bytes} bytes")
            return bytes(chunks)

        try:
            body = await asyncio.wait_for(read(), self.body_timeout)
        except TimeoutError:
            raise ApiError(408, "request_timeout",
                           f"request body not received within {self.body_timeout:g} s") from None
        return self._validate(body, model)

    async def _asgi_predict(self, scope: dict, receive: Callable, send: Callable) -> None:
        """``POST /predict`` as a raw ASGI handler: the same validation, errors and answer as the
        documented FastAPI route, without the middleware and dependency machinery around it."""
        self.plane.request_count += 1
        start = time.perf_counter()
        try:
            content_type, declared, arm_tag = "", None, None
            for name, value in scope["headers"]:
                if name == b"content-type":
                    content_type = value.decode("latin-1")
                elif name == b"content-length":
                    declared = value.decode("latin-1")
                elif name == _ARM_HEADER_BYTES:
                    arm_tag = value.decode("latin-1")
            self._check_headers(content_type, declared)
            body = await _read_body(receive, self.plane.max_body_bytes, self.body_timeout)
            if body is None:
                return  # the client went away
            result = await self.plane.predict_request(self._validate(body, PredictRequest), arm_tag)
            result["latency_ms"] = round((time.perf_counter() - start) * 1000.0, 3)
            result["timestamp"] = _iso(self.plane.clock())
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

    def _is_admin(self, request: Request) -> bool:
        try:
            self._check_admin(request)
        except ApiError:
            return False
        return True

    def _check_admin(self, request: Request) -> None:
        if not self.plane._admin_token:
            raise ApiError(403, "admin_disabled", f"admin API disabled: set {ADMIN_TOKEN_ENV} to enable it")
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.plane._admin_token.encode()):
            raise ApiError(401, "unauthorized", "missing or wrong bearer token")

    def _check_admin_uri(self, uri: str) -> None:
        """The admin API loads local model files only under the configured model root (never an
        arbitrary path it would read and hash), and remote ones over http(s) only."""
        from mlops.serving.model_store import _path_from_uri

        path = _path_from_uri(uri)
        if path is None:
            scheme = uri.split(":", 1)[0].lower()
            if scheme not in ("http", "https"):
                raise ApiError(422, "model_refused", f"unsupported artifact URI scheme {scheme!r} (http, https, "
                               "or a file under the model root)", "uri")
            return
        if self.plane.model_root is None:
            raise ApiError(403, "model_root_unset", f"loading local files through the admin API needs a model "
                           f"root: start the server with --model-root (or {MODEL_ROOT_ENV})", "uri")
        resolved = Path(os.path.realpath(path))
        if not resolved.is_relative_to(self.plane.model_root) or not resolved.name.endswith(MODEL_SUFFIXES):
            raise ApiError(403, "path_refused", f"only model files ({', '.join(MODEL_SUFFIXES)}) under the model "
                           "root can be loaded", "uri")


    def build_app(self) -> FastAPI:
        server, api = self.plane, self

        @asynccontextmanager
        async def lifespan(app: FastAPI):
            yield
            await run_in_threadpool(server.close)

        app = _ServerApp(
            title=f"mlops model server: {self.plane.model_name}",
            description="Predictions with monitoring, A/B experiments and signed prediction ids.",
            version="1",
            lifespan=lifespan,
            # Served below: the schema lists the admin routes only to a caller holding the admin token.
            openapi_url=None,
            docs_url=None,
            redoc_url=None,
        )
        install_error_handlers(app)
        app.observe = self.plane._observe_request
        if self.plane.fast_path:
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
            req = await api._body(request, PredictRequest)
            result = await server.predict_request(req, request.headers.get(ARM_HEADER))
            result["latency_ms"] = round((time.perf_counter() - start) * 1000.0, 3)
            result["timestamp"] = _iso(server.clock())
            return _json(result)

        @app.post("/predict/batch", openapi_extra=body_doc("BatchPredictRequest"))
        async def predict_batch(request: Request) -> Response:
            server.request_count += 1
            start = time.perf_counter()
            req = await api._body(request, BatchPredictRequest)
            n = len(req.batch_features)
            if req.user_ids is not None and len(req.user_ids) != n:
                raise ApiError(422, "validation_error",
                               f"user_ids has {len(req.user_ids)} entries for {n} rows", "user_ids")
            ids = list(req.user_ids) if req.user_ids is not None else [None] * n
            server.batch_rows.observe(n)
            results = await run_in_threadpool(server._predict_rows, req.batch_features, ids, req.experiment_name,
                                              batch=True)
            return _json({
                "predictions": results,
                "count": len(results),
                "model_version": server.current_model_version,
                "latency_ms": round((time.perf_counter() - start) * 1000.0, 3),
                "timestamp": _iso(server.clock()),
            })

        @app.post("/feedback", openapi_extra=body_doc("FeedbackRequest"))
        async def feedback(request: Request) -> Response:
            req = await api._body(request, FeedbackRequest)
            items = [(f.prediction_id, f.true_label) for f in (req.feedback or [])]
            if req.prediction_id is not None or req.true_label is not None:
                if req.prediction_id is None or req.true_label is None:
                    field = "true_label" if req.true_label is None else "prediction_id"
                    raise ApiError(422, "validation_error", f"missing field {field!r}", field)
                items.insert(0, (req.prediction_id, req.true_label))
            if not items:
                raise ApiError(422, "validation_error", "give prediction_id and true_label, or feedback",
                               "prediction_id")
            fields = [f"feedback.{i}" for i in range(len(req.feedback or []))]
            if req.prediction_id is not None:
                fields.insert(0, "prediction_id")
            result = await run_in_threadpool(server.record_feedback, items, fields)
            if result["rejected"]:
                # Good items were recorded; the refused ones are named (the first one in error/field).
                first = result["rejected"][0]
                n_bad = len(result["rejected"])
                message = first["message"] + (f" (and {n_bad - 1} more refused item(s))" if n_bad > 1 else "")
                return _json({"error": first["error"], "message": message, "field": first["field"], **result},
                             first["status"])
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
            api._check_admin(request)
            req = await api._body(request, LoadModelRequest)
            api._check_admin_uri(req.uri)
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
            api._check_admin(request)
            req = await api._body(request, RollbackRequest)
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

        @app.get("/openapi.json", include_in_schema=False)
        async def openapi_json(request: Request) -> Response:
            schema = app.openapi()
            if not api._is_admin(request):
                schema = {**schema, "paths": {p: v for p, v in schema["paths"].items() if not p.startswith("/admin")}}
            return _json(schema)

        @app.get("/docs", include_in_schema=False)
        async def docs() -> Response:
            from fastapi.openapi.docs import get_swagger_ui_html

            return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - docs")

        return app

class _ServerApp(FastAPI):
    """FastAPI, except that ``POST /predict`` (the hot path) goes straight to a raw ASGI handler.

    The FastAPI route stays registered: it documents ``/predict`` in /openapi.json and serves it
    when the fast path is off (``fast_path=False``) or once middleware was added to the app (so
    middleware a user adds, e.g. CORS or auth, also sees ``/predict``)."""

    fast_predict: Callable | None = None
    observe: Callable[..., None] | None = None

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or self.observe is None:
            await super().__call__(scope, receive, send)
            return
        start = time.perf_counter()
        answer: list[Any] = [500, None]  # status, error reason

        async def observed_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                answer[0] = message["status"]
            elif answer[0] >= 400 and answer[1] is None and message["type"] == "http.response.body":
                answer[1] = _error_code(message.get("body", b""))
            await send(message)

        try:
            if (self.fast_predict is not None and not self.user_middleware and scope["method"] == "POST"
                    and (scope["path"] == "/predict" or scope["path"] == scope.get("root_path", "") + "/predict")):
                await self.fast_predict(scope, receive, observed_send)
            else:
                await super().__call__(scope, receive, observed_send)
        finally:
            arm_tag = next((v.decode("latin-1") for k, v in scope["headers"] if k == _ARM_HEADER_BYTES), None)
            self.observe(scope["path"], answer[0], answer[1], time.perf_counter() - start, arm_tag)


def _error_code(body: bytes) -> str | None:
    """The ``error`` field of one of our JSON error bodies (they are small), else None."""
    if not body or len(body) > 4096:
        return None
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    code = value.get("error") if isinstance(value, dict) else None
    return code if isinstance(code, str) else None


async def _read_body(receive: Callable, limit: int, timeout: float) -> bytes | None:
    """The whole request body (413 past ``limit``, 408 when not received within ``timeout``
    seconds), or None when the client disconnected."""
    chunks: list[bytes] = []
    size = 0
    deadline = time.monotonic() + timeout
    while True:
        try:
            message = await read_with_timeout(receive, max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise ApiError(408, "request_timeout", f"request body not received within {timeout:g} s") from None
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
