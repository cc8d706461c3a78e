"""Segment criteria (mlops.core.segments): the guide's ranges and value lists, missing features."""

from __future__ import annotations

import pytest

from mlops.core.segments import segment_matches, validate_segment_criteria

GUIDE = {
    "age": {"min": 65, "max": 85},
    "education": {"min": 8},
    "region": ["north", "south"],
}


def test_guide_criteria_include_a_matching_user():
    assert segment_matches(GUIDE, {"age": 70, "education": 12, "region": "north"})


@pytest.mark.parametrize(
    "features",
    [
        {"age": 64, "education": 12, "region": "north"},
        {"age": 86, "education": 12, "region": "north"},
        {"age": 70, "education": 7, "region": "north"},
        {"age": 70, "education": 12, "region": "east"},
        {"education": 12, "region": "north"},  # missing age
        {"age": None, "education": 12, "region": "north"},
        {"age": float("nan"), "education": 12, "region": "north"},
        {"age": "old", "education": 12, "region": "north"},
        {"age": True, "education": 12, "region": "north"},
    ],
)
def test_guide_criteria_exclude(features):
    assert not segment_matches(GUIDE, features)


def test_bounds_are_inclusive():
    assert segment_matches(GUIDE, {"age": 65, "education": 8, "region": "south"})
    assert segment_matches(GUIDE, {"age": 85.0, "education": 8, "region": "south"})


def test_empty_criteria_include_everyone():
    assert segment_matches(None, {})
    assert segment_matches({}, {"x": 1})


def test_scalar_criterion_is_equality():
    assert segment_matches({"tier": "gold"}, {"tier": "gold"})
    assert not segment_matches({"tier": "gold"}, {"tier": "silver"})


@pytest.mark.parametrize(
    "bad",
    [
        {"age": {"low": 3}},
        {"age": {}},
        {"age": {"min": 9, "max": 3}},
        {"age": {"min": "a"}},
        {"region": []},
        ["age"],
    ],
)
def test_validate_rejects_malformed(bad):
    with pytest.raises(ValueError):
        validate_segment_criteria(bad)


def test_validate_accepts_guide():
    validate_segment_criteria(GUIDE)
    validate_segment_criteria(None)
