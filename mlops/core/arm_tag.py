"""The experiment-arm tag that travels router -> model server -> prediction id -> sidecar.

Why it exists: the router is the only component that knows whether a request belongs to an arm of
the running experiment (users outside the segment, requests without a user key and every request
while paused are served by the control *version* but belong to no arm), which ramp phase it was
assigned in, and who the user is. It sends that as one header (``X-MLOps-Arm``) to the model
server, which appends it to the nonce of the signed prediction id. The sidecar reads the tag back
from the prediction id of each prediction *and* of each feedback event, so a true outcome is counted
in the arm of the prediction it labels, on whichever replica the feedback lands, with no shared
state. The user travels as a 64-bit hash (``mlops.core.hll.user_hash``), never as the key.

Format: ``x1.<phase>.<c|t>.<16 hex user hash>.<experiment name>`` (the name last: it may contain
dots). Pure.
"""

from __future__ import annotations

import base64
import json
import re
from typing import NamedTuple

HEADER = "x-mlops-arm"
NONCE_SEPARATOR = "~"
_TAG = re.compile(r"^x1\.(\d{1,4})\.([ct])\.([0-9a-f]{16})\.([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?)$")
MAX_TAG_LENGTH = 300


class ArmTag(NamedTuple):
    experiment: str
    phase: int
    arm: str  # "control" or "treatment"
    user: str  # 16 hex digits


def format_tag(tag: ArmTag) -> str:
    if tag.arm not in ("control", "treatment"):
        raise ValueError(f"arm must be control or treatment, got {tag.arm!r}")
    text = f"x1.{int(tag.phase)}.{tag.arm[0]}.{tag.user}.{tag.experiment}"
    if parse_tag(text) is None:
        raise ValueError(f"cannot tag experiment {tag.experiment!r} / user hash {tag.user!r}")
    return text


def parse_tag(text: str | None) -> ArmTag | None:
    """The tag in ``text``, or None when absent or malformed (never raises: it is request input)."""
    if not text or len(text) > MAX_TAG_LENGTH:
        return None
    match = _TAG.match(text)
    if match is None:
        return None
    phase, arm, user, experiment = match.group(1), match.group(2), match.group(3), match.group(4)
    return ArmTag(experiment, int(phase), "control" if arm == "c" else "treatment", user)


def tagged_nonce(nonce: str, tag_text: str | None) -> str:
    """The nonce to sign: ``nonce~tag`` when ``tag_text`` is a valid tag, else ``nonce`` unchanged."""
    if tag_text is None or parse_tag(tag_text) is None:
        return nonce
    return f"{nonce}{NONCE_SEPARATOR}{tag_text}"


def tag_from_prediction_id(prediction_id: str | None) -> ArmTag | None:
    """Read the tag out of a prediction id's payload *without* verifying its signature (the sidecar
    only reads ids its own model server produced; the router verifies ids that come from clients)."""
    if not isinstance(prediction_id, str) or len(prediction_id) > 2048:
        return None
    parts = prediction_id.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        fields = json.loads(payload.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(fields, list) or len(fields) != 3 or not isinstance(fields[2], str):
        return None
    _, sep, tag_text = fields[2].rpartition(NONCE_SEPARATOR)
    return parse_tag(tag_text) if sep else None
