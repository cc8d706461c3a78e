"""The wire format between the model server and its monitoring sidecar.

The server answers a prediction first and ships what it saw afterwards, in batches, as
``POST /v1/events`` to the sidecar on localhost (see mlops.serving.sinks); the sidecar answers
``202 {"accepted": n}``. Both sides import these models so the shape is defined once.

Also here: the process-wide prediction-id key (``MLOPS_PREDICTION_ID_KEY``), which the server signs
ids with and the router verifies feedback with; both must share it.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading

from pydantic import BaseModel, ConfigDict, Field

from mlops.core.prediction_id import ENV_VAR, key_from_environ

logger = logging.getLogger(__name__)

Scalar = str | int | float | bool | None


class PredictionEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prediction_id: str
    model_name: str
    model_version: str
    timestamp: float = Field(description="epoch seconds")
    latency_seconds: float
    features: dict[str, Scalar] = Field(default_factory=dict)
    prediction: str | int | float | None = None
    confidence: float | None = None
    error: bool = False


class FeedbackEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prediction_id: str
    model_version: str
    prediction: str
    true_label: str | int | float
    timestamp: float = Field(description="epoch seconds")


class EventBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    predictions: list[PredictionEvent] = Field(default_factory=list)
    feedback: list[FeedbackEvent] = Field(default_factory=list)
    batch_id: str | None = Field(
        default=None, min_length=1, max_length=128,
        description="unique per batch and kept across retries: the sidecar applies a batch id once, so a "
                    "retry after a lost response is not counted twice (optional: batches without one are "
                    "always applied)",
    )


class EventsAccepted(BaseModel):
    accepted: int


EVENTS_PATH = "/v1/events"

_key_lock = threading.Lock()
_process_key: bytes | None = None


def prediction_id_key(environ: dict[str, str] | None = None) -> bytes:
    """The key to sign/verify prediction ids with: ``MLOPS_PREDICTION_ID_KEY`` if set, otherwise one
    random key per process (with a warning: ids then cannot be verified by another process)."""
    configured = key_from_environ(dict(os.environ) if environ is None else environ)
    if configured is not None:
        return configured
    global _process_key
    with _key_lock:
        if _process_key is None:
            logger.warning(
                "%s is not set: using a random per-process key; prediction ids signed here "
                "cannot be verified by other replicas or the router", ENV_VAR,
            )
            _process_key = secrets.token_bytes(32)
        return _process_key
