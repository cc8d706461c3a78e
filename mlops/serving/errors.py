"""The one place where errors become HTTP responses.

Why it exists: the original server answered 500 with raw exception text. Every error here is a JSON
body ``{"error": <code>, "message": <one sentence>, "field": <dotted path or null>}`` with a 4xx
status naming the problem (400 malformed JSON, 401/403 admin auth, 404 unknown resource, 413 body
too large, 415 wrong content type, 422 invalid field, 503 no model loaded); anything unexpected is
logged with its traceback and answered 500 with a generic message.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from mlops.serving.api_error import ApiError

logger = logging.getLogger(__name__)


def error_response(status: int, code: str, message: str, field: str | None = None, headers: Any = None) -> Response:
    body = orjson.dumps({"error": code, "message": message, "field": field})
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def _loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts)


def validation_error(errors: list[dict[str, Any]]) -> ApiError:
    """Turn pydantic errors into one ApiError naming the first offending field."""
    if any(e.get("type") == "json_invalid" for e in errors):
        detail = next(e for e in errors if e.get("type") == "json_invalid").get("ctx", {}).get("error", "")
        return ApiError(400, "malformed_json", f"request body is not valid JSON{': ' + detail if detail else ''}")
    first = errors[0]
    field = _loc(tuple(first.get("loc", ())))
    kind = first.get("type", "")
    if kind == "extra_forbidden":
        message = f"unknown field {field!r}"
    elif kind == "missing":
        message = f"missing field {field!r}"
    else:
        message = f"invalid field {field!r}: {first.get('msg', 'invalid value')}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return ApiError(422, "validation_error", message, field or None)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return error_response(exc.status, exc.code, exc.message, exc.field)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request: Request, exc: RequestValidationError) -> Response:
        err = validation_error(list(exc.errors()))
        return error_response(err.status, err.code, err.message, err.field)

    @app.exception_handler(ValidationError)
    async def _pydantic_validation(request: Request, exc: ValidationError) -> Response:
        err = validation_error(list(exc.errors()))
        return error_response(err.status, err.code, err.message, err.field)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        codes = {404: "not_found", 405: "method_not_allowed"}
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        return error_response(exc.status_code, codes.get(exc.status_code, "http_error"), message,
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal server error; see the server log")


__all__ = ["ApiError", "error_response", "install_error_handlers", "validation_error"]
