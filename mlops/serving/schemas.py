"""Request and response models of the model server's HTTP API (pydantic v2, unknown fields rejected).

Why it exists: the guide's request shapes with hard limits (batch size, feature count, string
lengths) so a hostile or buggy client gets a 422 naming the field instead of a crash; the same
models generate the OpenAPI document schemathesis tests against.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

MAX_FEATURES = 256
MAX_BATCH = 1000
MAX_NAME = 100
MAX_BODY_BYTES = 1024 * 1024

FeatureName = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME)]
FeatureValue = float | int | Annotated[str, StringConstraints(max_length=MAX_NAME)] | bool | None
Features = Annotated[dict[FeatureName, FeatureValue], Field(max_length=MAX_FEATURES)]
UserId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME)]
Label = int | float | Annotated[str, StringConstraints(max_length=MAX_NAME)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PredictRequest(_Strict):
    features: Features = Field(description="feature name -> value; optional features may be omitted")
    user_id: UserId | None = None
    experiment_name: Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME)] | None = None


class BatchPredictRequest(_Strict):
    batch_features: Annotated[list[Features], Field(min_length=1, max_length=MAX_BATCH)]
    user_ids: Annotated[list[UserId], Field(max_length=MAX_BATCH)] | None = None
    experiment_name: Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME)] | None = None


class FeedbackItem(_Strict):
    prediction_id: Annotated[str, StringConstraints(min_length=1, max_length=2048)]
    true_label: Label


class FeedbackRequest(_Strict):
    """One outcome (``prediction_id`` + ``true_label``) or several under ``feedback``."""

    prediction_id: Annotated[str, StringConstraints(min_length=1, max_length=2048)] | None = None
    true_label: Label | None = None
    feedback: Annotated[list[FeedbackItem], Field(max_length=MAX_BATCH)] | None = None


class LoadModelRequest(_Strict):
    version: Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME)]
    uri: Annotated[str, StringConstraints(min_length=1, max_length=2048)]
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{64}$")] | None = None
    format: Annotated[str, StringConstraints(pattern=r"^(skops|joblib)$")] | None = None
    make_current: bool = False


class RollbackRequest(_Strict):
    target: Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME)] = "previous_stable"


class ErrorResponse(BaseModel):
    error: str
    message: str
    field: str | None = None


class PredictResponse(BaseModel):
    prediction: Any
    model_version: str
    variant: str | None
    user_id: str | None
    confidence: float | None
    latency_ms: float
    timestamp: str
    prediction_id: str


REQUEST_MODELS: list[type[BaseModel]] = [
    PredictRequest, BatchPredictRequest, FeedbackRequest, LoadModelRequest, RollbackRequest, ErrorResponse,
    PredictResponse,
]
