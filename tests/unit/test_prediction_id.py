"""Prediction ids round-trip, stay URL-safe, and reject any edit or a different key."""

from __future__ import annotations

import re

import pytest

from mlops.core.prediction_id import (
    InvalidPredictionId,
    PredictionRef,
    key_from_environ,
    sign_prediction_id,
    verify_prediction_id,
)

KEY = b"test-secret"


def test_round_trip_carries_version_and_label():
    pid = sign_prediction_id(KEY, "v2.0.0", "Demented", "abc123")
    assert verify_prediction_id(KEY, pid) == PredictionRef("v2.0.0", "Demented", "abc123")


def test_id_is_url_safe_without_spaces():
    pid = sign_prediction_id(KEY, "v 1/ü", "label with spaces & ?", "n")
    assert re.fullmatch(r"[A-Za-z0-9_.\-]+", pid)
    assert verify_prediction_id(KEY, pid).prediction == "label with spaces & ?"


def test_other_key_rejected():
    pid = sign_prediction_id(KEY, "v1.0.0", "Nondemented", "n1")
    with pytest.raises(InvalidPredictionId):
        verify_prediction_id(b"other", pid)


def test_edited_payload_rejected():
    pid = sign_prediction_id(KEY, "v1.0.0", "Nondemented", "n1")
    forged_payload = sign_prediction_id(b"other", "v2.0.0", "Demented", "n1").split(".")[1]
    prefix, _, signature = pid.split(".")
    with pytest.raises(InvalidPredictionId):
        verify_prediction_id(KEY, f"{prefix}.{forged_payload}.{signature}")


@pytest.mark.parametrize("bad", ["", "p1", "p1.x.y", "p2.a.b", "p1.a.b.c", "ü.ü.ü", "x" * 5000])
def test_malformed_rejected_as_value_error(bad):
    with pytest.raises(ValueError):
        verify_prediction_id(KEY, bad)


def test_empty_key_refused():
    with pytest.raises(ValueError):
        sign_prediction_id(b"", "v", "p", "n")


def test_key_from_environ():
    assert key_from_environ({"MLOPS_PREDICTION_ID_KEY": "s3"}) == b"s3"
    assert key_from_environ({}) is None


def test_non_ascii_signature_is_invalid_not_a_crash():
    """Reproduced: a non-ASCII character in the signature made hmac.compare_digest raise TypeError (500)."""
    pid = sign_prediction_id(KEY, "v1", "0", "n")
    forged = pid[:-1] + "é"
    with pytest.raises(InvalidPredictionId, match="non-ASCII"):
        verify_prediction_id(KEY, forged)
    with pytest.raises(InvalidPredictionId):
        verify_prediction_id(KEY, "p1.ü.ü")


def test_previous_key_accepted_during_rotation():
    old, new = b"o" * 32, b"n" * 32
    pid = sign_prediction_id(old, "v1", "1", "n")
    assert verify_prediction_id([new, old], pid).version == "v1"
    with pytest.raises(InvalidPredictionId):
        verify_prediction_id([new], pid)
