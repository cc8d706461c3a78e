"""The error every layer of the model server raises: a status class, a stable code, one sentence
and the field at fault.

Why a module of its own: the data plane (mlops.serving.dataplane) raises it without knowing about
HTTP; mlops.serving.errors is the one place that turns it into a response.
"""

from __future__ import annotations


class ApiError(Exception):
    """``status`` is the HTTP status the error maps to (4xx for the caller's mistakes, 503 when no model
    is loaded); ``code`` is the machine-readable reason (the ``error`` field of the JSON body)."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
