"""Which users an experiment is about: ``segment_criteria`` evaluated against a user's features.

Why it exists: the router, the server and ``ABTestingManager`` must include and exclude exactly
the same users, and users outside the segment are served by control and counted in neither arm.

Criteria (the guide's format), all of which must hold:

* ``{"age": {"min": 65, "max": 85}}`` -- numeric range, both bounds inclusive, either optional;
* ``{"region": ["north", "south"]}`` -- the value must be one of the listed values;
* ``{"tier": "gold"}`` -- a single value: must be equal.

A user whose features lack a criterion's key (or hold ``None``/NaN for it) is **not** in the
segment: we cannot tell, so the user is served by control and kept out of the analysis. A
non-numeric value for a range criterion also excludes the user. Empty or ``None`` criteria
include everyone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

_RANGE_KEYS = frozenset({"min", "max"})


def validate_segment_criteria(criteria: Mapping[str, Any] | None) -> None:
    """Raise ValueError when criteria are malformed (unknown range keys, min > max, empty lists)."""
    if criteria is None:
        return
    if not isinstance(criteria, Mapping):
        raise ValueError(f"segment_criteria must be a mapping, got {type(criteria).__name__}")
    for key, rule in criteria.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"segment_criteria keys must be non-empty strings, got {key!r}")
        if isinstance(rule, Mapping):
            unknown = set(rule) - _RANGE_KEYS
            if unknown or not rule:
                raise ValueError(f"segment criterion {key!r}: a range takes only 'min' and/or 'max'")
            bounds = {}
            for bound in ("min", "max"):
                if bound in rule:
                    value = rule[bound]
                    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
                        raise ValueError(f"segment criterion {key!r}: {bound} must be a number")
                    bounds[bound] = float(value)
            if "min" in bounds and "max" in bounds and bounds["min"] > bounds["max"]:
                raise ValueError(f"segment criterion {key!r}: min is greater than max")
        elif isinstance(rule, list | tuple | set | frozenset) and not rule:
            raise ValueError(f"segment criterion {key!r}: the list of allowed values is empty")


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def segment_matches(criteria: Mapping[str, Any] | None, features: Mapping[str, Any] | None) -> bool:
    """True when ``features`` satisfy every criterion; a missing feature never matches."""
    if not criteria:
        return True
    features = features or {}
    for key, rule in criteria.items():
        value = features.get(key)
        if _is_missing(value):
            return False
        if isinstance(rule, Mapping):
            number = _as_number(value)
            if number is None:
                return False
            if "min" in rule and number < float(rule["min"]):
                return False
            if "max" in rule and number > float(rule["max"]):
                return False
        elif isinstance(rule, list | tuple | set | frozenset):
            if not any(value == allowed for allowed in rule):
                return False
        elif value != rule:
            return False
    return True
