"""Sticky, salted assignment of users to A/B variants, and the ramping schedule of the split.

Why it exists: the router, the model server and ``ABTestingManager`` must all agree, in every
process and after every restart, on which variant a user gets. So the variant is a pure function
of (experiment salt, user key, treatment share):

* ``assignment_bucket`` hashes ``f"{salt}\\x00{user_key}"`` with BLAKE2b into a number in
  ``[0, 1)``. It does not depend on ``PYTHONHASHSEED``, the process or the machine.
* ``assign_variant`` puts a user in treatment iff ``bucket < treatment_share``. When the share
  grows (ramping 10% -> 30%) every user already in treatment stays there: ramping is monotone.
* A different salt per experiment (the experiment name is the convention) makes the
  assignments of two experiments independent of each other.

``ramp_share`` turns a ``ramping_strategy`` string into the treatment share at a moment ``now``
(seconds since the epoch, passed in: this module reads no clock). Supported strategies:

``immediate``
    the target split from the start.
``linear:<duration>``
    the share grows linearly from 0 to the target over the duration (``linear:48h``).
``steps:<s1>,<s2>,...@<duration>``
    absolute treatment shares, each held for one duration, then the target
    (``steps:0.05,0.1,0.25,0.5@24h`` = 5% on day 1, 10% day 2, 25% day 3, 50% day 4, then the
    target). Every share is capped at the target split.
``gradual``
    an alias of ``steps:0.05,0.1,0.25,0.5@24h``.

Durations are a number followed by ``s``, ``m``, ``h`` or ``d`` (a bare number means hours).
Before the experiment starts (``started_at`` is ``None``) or for ``now < started_at`` the elapsed
time counts as zero.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Literal

Variant = Literal["control", "treatment"]

GRADUAL_ALIAS = "steps:0.05,0.1,0.25,0.5@24h"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "": 3600.0}
_TWO_POW_53 = float(2**53)


def assignment_bucket(salt: str, user_key: str) -> float:
    """A uniform number in ``[0, 1)`` from BLAKE2b of ``salt NUL user_key`` (53 bits, exact in a float)."""
    digest = hashlib.blake2b(f"{salt}\x00{user_key}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 11) / _TWO_POW_53


def assign_variant(salt: str, user_key: str, treatment_share: float) -> Variant:
    """``"treatment"`` iff the user's bucket is below ``treatment_share`` (in ``[0, 1]``)."""
    share = float(treatment_share)
    if not 0.0 <= share <= 1.0 or math.isnan(share):
        raise ValueError(f"treatment_share must be in [0, 1], got {treatment_share!r}")
    return "treatment" if assignment_bucket(salt, user_key) < share else "control"


@dataclass(frozen=True)
class RampSchedule:
    """A parsed ``ramping_strategy``: ``kind`` is ``immediate``, ``linear`` or ``steps``."""

    kind: Literal["immediate", "linear", "steps"]
    period_seconds: float = 0.0
    steps: tuple[float, ...] = ()

    def share(self, target_split: float, elapsed_seconds: float) -> float:
        target = float(target_split)
        elapsed = max(0.0, float(elapsed_seconds))
        if self.kind == "immediate":
            return target
        if self.kind == "linear":
            return target * min(1.0, elapsed / self.period_seconds)
        index = int(elapsed // self.period_seconds)
        if index >= len(self.steps):
            return target
        return min(target, self.steps[index])


def parse_duration(text: str) -> float:
    """``"24h"`` -> 86400.0; units s, m, h, d; a bare number is hours. Raises ValueError."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"invalid duration {text!r}: use a number with s, m, h or d (e.g. 24h)")
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"duration must be positive, got {text!r}")
    return seconds


def parse_ramping_strategy(strategy: str | None) -> RampSchedule:
    """Validate and parse a ``ramping_strategy`` string (see the module docstring). Raises ValueError."""
    text = (strategy or "immediate").strip().lower()
    if text == "gradual":
        text = GRADUAL_ALIAS
    if text == "immediate":
        return RampSchedule("immediate")
    if text.startswith("linear:"):
        return RampSchedule("linear", period_seconds=parse_duration(text[len("linear:") :]))
    if text.startswith("steps:"):
        body = text[len("steps:") :]
        if "@" not in body:
            raise ValueError(f"invalid ramping strategy {strategy!r}: steps need '@<duration>'")
        shares_text, duration_text = body.rsplit("@", 1)
        try:
            steps = tuple(float(s) for s in shares_text.split(",") if s.strip())
        except ValueError:
            raise ValueError(f"invalid ramping strategy {strategy!r}: steps must be numbers") from None
        if not steps:
            raise ValueError(f"invalid ramping strategy {strategy!r}: no steps")
        if any(not 0.0 <= s <= 1.0 for s in steps):
            raise ValueError(f"invalid ramping strategy {strategy!r}: steps must be in [0, 1]")
        if any(b < a for a, b in zip(steps, steps[1:], strict=False)):
            raise ValueError(f"invalid ramping strategy {strategy!r}: steps must not decrease")
        return RampSchedule("steps", period_seconds=parse_duration(duration_text), steps=steps)
    raise ValueError(
        f"unknown ramping strategy {strategy!r}: use 'immediate', 'gradual', 'linear:<duration>' "
        "or 'steps:<s1>,<s2>,...@<duration>'"
    )


def ramp_share(strategy: str | None, target_split: float, started_at: float | None, now: float) -> float:
    """Treatment share at ``now`` for an experiment started at ``started_at`` (epoch seconds).

    Non-decreasing in ``now`` and never above ``target_split``, so assignment stays monotone.
    """
    target = float(target_split)
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"target_split must be in [0, 1], got {target_split!r}")
    elapsed = 0.0 if started_at is None else float(now) - float(started_at)
    return parse_ramping_strategy(strategy).share(target, elapsed)


@dataclass(frozen=True)
class RampPhase:
    """One allocation phase of a ramp: ``share`` is constant inside it (None for the ramping part of
    a ``linear`` schedule, whose share moves continuously); ``final`` is the target allocation."""

    index: int
    share: float | None
    final: bool


def final_phase_index(strategy: str | None) -> int:
    """Index of the phase at the target split: 0 (immediate), 1 (linear), number of steps (steps)."""
    schedule = parse_ramping_strategy(strategy)
    if schedule.kind == "immediate":
        return 0
    if schedule.kind == "linear":
        return 1
    return len(schedule.steps)


def phase_of(strategy: str | None, target_split: float, index: int) -> RampPhase:
    """The phase ``index`` of a schedule (a step whose share is capped at the target is final)."""
    schedule = parse_ramping_strategy(strategy)
    final = final_phase_index(strategy)
    target = float(target_split)
    if index >= final:
        return RampPhase(final, target, True)
    if schedule.kind == "linear":
        return RampPhase(0, None, False)
    return RampPhase(index, min(target, schedule.steps[index]), False)


def ramp_phase(strategy: str | None, target_split: float, started_at: float | None, now: float) -> RampPhase:
    """The allocation phase at ``now``. Steps whose share already equals the target belong to the
    final phase, so the final phase is one stretch of constant allocation.

    Why phases: with a ramp the treatment share grows over time, so pooling all data compares a
    treatment arm weighted towards late traffic with a control arm weighted towards early traffic;
    when the base rate moves over time that difference looks like an effect (Simpson's paradox).
    Inside one phase both arms are sampled at the same time at a constant share.
    """
    schedule = parse_ramping_strategy(strategy)
    target = float(target_split)
    elapsed = 0.0 if started_at is None else max(0.0, float(now) - float(started_at))
    if schedule.kind == "immediate":
        return RampPhase(0, target, True)
    if schedule.kind == "linear":
        return RampPhase(1, target, True) if elapsed >= schedule.period_seconds else RampPhase(0, None, False)
    index = int(elapsed // schedule.period_seconds)
    if index >= len(schedule.steps) or schedule.steps[index] >= target:
        return RampPhase(len(schedule.steps), target, True)
    return RampPhase(index, schedule.steps[index], False)
