"""The wire format between the model server and its monitoring sidecar.

The server answers a prediction first and ships what it saw afterwards, in batches, as
``POST /v1/events`` to the sidecar on localhost (see mlops.serving.sinks); the sidecar answers
``202 {"accepted": n}``. Both sides import these models so the shape is defined once.

``prediction_id_key`` is kept for callers of the old API; the key's sources are in
mlops.serving.signing.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_INT = 2**63 - 1

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

    @field_validator("true_label")
    @classmethod
    def _finite_label(cls, value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("true_label must be a finite number")
        if isinstance(value, int) and abs(value) > MAX_INT:
            raise ValueError("true_label is an integer outside the 64-bit range")
        if isinstance(value, str) and len(value) > 200:
            raise ValueError("true_label is longer than 200 characters")
        return value


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


class EventEnvelope(BaseModel):
    """The batch's shape only: events are then validated one by one (a bad one is dropped alone)."""

    model_config = ConfigDict(extra="forbid")

    predictions: list[Any] = Field(default_factory=list)
    feedback: list[Any] = Field(default_factory=list)
    batch_id: str | None = Field(default=None, min_length=1, max_length=128)


class EventsAccepted(BaseModel):
    accepted: int


EVENTS_PATH = "/v1/events"

def prediction_id_key(environ: dict[str, str] | None = None) -> bytes:
    """The key new prediction ids are signed with (see mlops.serving.signing)."""
    from mlops.serving.signing import signing_keys

    return signing_keys(environ).current
