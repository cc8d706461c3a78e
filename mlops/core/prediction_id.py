"""Self-contained, HMAC-signed prediction ids.

A prediction id travels from the model server to the client and comes back with the true outcome
(`/feedback`). The router forwards that feedback to the version that served the prediction and the
monitor joins it to the predicted label, so the id itself carries the version and the predicted
label; the signature makes forged or edited ids (feedback for a version or label that never served
it) detectable without any shared state between replicas.

Format: ``p1.<base64url(json [version, prediction, nonce])>.<base64url(hmac-sha256[:16])>``, all
characters URL-safe. Pure: the key and the nonce are passed in (the serving layer reads the key from
``MLOPS_PREDICTION_ID_KEY``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Sequence
from typing import NamedTuple

PREFIX = "p1"
ENV_VAR = "MLOPS_PREDICTION_ID_KEY"
_SIGNATURE_BYTES = 16
MAX_ID_LENGTH = 2048


class InvalidPredictionId(ValueError):
    """The id is malformed, or its signature does not match (forged or edited)."""


class PredictionRef(NamedTuple):
    version: str
    prediction: str
    nonce: str


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(key: bytes, signed: str) -> str:
    digest = hmac.new(key, signed.encode("ascii"), hashlib.sha256).digest()
    return _b64encode(digest[:_SIGNATURE_BYTES])


def sign_prediction_id(key: bytes, version: str, prediction: str, nonce: str) -> str:
    """Return a URL-safe id encoding ``version``, the predicted label and ``nonce``, signed with ``key``."""
    if not key:
        raise ValueError("prediction id key must not be empty")
    payload = json.dumps([str(version), str(prediction), str(nonce)], separators=(",", ":"), ensure_ascii=False)
    signed = f"{PREFIX}.{_b64encode(payload.encode('utf-8'))}"
    return f"{signed}.{_signature(key, signed)}"


def verify_prediction_id(key: bytes | Sequence[bytes], prediction_id: str) -> PredictionRef:
    """Decode ``prediction_id``; raise InvalidPredictionId unless it was signed with ``key`` unmodified.

    ``key`` may be a sequence of keys (the current one first, then previous ones still accepted
    during a rotation): the id is valid when any of them produced its signature."""
    if not isinstance(prediction_id, str) or len(prediction_id) > MAX_ID_LENGTH:
        raise InvalidPredictionId("prediction id is not a string of acceptable length")
    if not prediction_id.isascii():
        # Ids we sign are pure ASCII; comparing non-ASCII text in constant time is not even possible.
        raise InvalidPredictionId("prediction id is malformed (non-ASCII characters)")
    parts = prediction_id.split(".")
    if len(parts) != 3 or parts[0] != PREFIX:
        raise InvalidPredictionId("prediction id is malformed")
    signed = f"{parts[0]}.{parts[1]}"
    keys = [key] if isinstance(key, bytes | bytearray) else list(key)
    if not keys:
        raise InvalidPredictionId("no key to verify prediction ids with")
    matched = False
    for candidate in keys:
        matched |= hmac.compare_digest(_signature(candidate, signed), parts[2])
    if not matched:
        raise InvalidPredictionId("prediction id signature does not match")
    try:
        fields = json.loads(_b64decode(parts[1]).decode("utf-8"))
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidPredictionId("prediction id payload is malformed") from exc
    if not (isinstance(fields, list) and len(fields) == 3 and all(isinstance(f, str) for f in fields)):
        raise InvalidPredictionId("prediction id payload is malformed")
    return PredictionRef(*fields)


def key_from_environ(environ: dict[str, str] | None) -> bytes | None:
    """The configured key from an environment mapping (``MLOPS_PREDICTION_ID_KEY``), or None when unset."""
    value = (environ or {}).get(ENV_VAR, "")
    return value.encode("utf-8") if value else None
