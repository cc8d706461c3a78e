"""Per-experiment-arm counts: what a sidecar keeps for a running A/B experiment, how counts from
many sidecars merge, and how the operator accumulates them safely across restarts.

Why it exists: an experiment's analysis needs counts per *arm*, not per version (users outside the
segment are served by the control version but belong to neither arm), per ramp *phase* (so a ramp
does not pool allocations, see ``mlops.core.experiment``), and per *user* (users are randomised, so
the variance of a rate is a per-user quantity: the delta method needs, per arm, the number of users
K and the sums of n_i, s_i, n_i^2, s_i^2 and n_i s_i over users i, where n_i counts the user's
outcomes and s_i the successes). All of these are sums, so they merge across replicas by addition;
distinct users are a HyperLogLog sketch (``mlops.core.hll``) that merges by register maximum.

Counter resets: a sidecar that restarts starts again from zero. :func:`accumulate` keeps, per
source (one sidecar endpoint), the counts last seen and the sidecar's instance id; an increase is
``current - last``, and a new instance id or any counter going down is a reset, after which the
whole current value is the increase (what Prometheus' ``increase()`` does). Totals therefore only
ever grow. Limits (documented in docs/operator.md): events a sidecar received after the last scrape
and before it died are lost, as with ``increase()``; a user whose outcomes span a sidecar restart
(or two replicas) counts as two users in the per-user sums, which slightly *under*states the
within-user correlation the delta method corrects for.

Pure: no clock, no I/O; the sidecar guards its own instance with a lock.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mlops.core.counters import LATENCY_BUCKETS
from mlops.core.hll import DEFAULT_PRECISION, HyperLogLog

ARMS = ("control", "treatment")
ArmKey = tuple[str, int, str]  # (experiment, ramp phase index, arm)
RATIO_METRICS = ("accuracy", "errorRate")
_SUM_FIELDS = ("users", "n", "s", "nn", "ss", "ns")
_SCALARS = ("predictions", "errors", "labelled", "correct", "latency_sum", "latency_count")


@dataclass
class UserSums:
    """Sums over users of one arm for a ratio metric: K users with n_i > 0, and sum n, s, n^2, s^2, n s."""

    users: float = 0.0
    n: float = 0.0
    s: float = 0.0
    nn: float = 0.0
    ss: float = 0.0
    ns: float = 0.0

    def add_user_delta(self, n_before: int, s_before: int, dn: int, ds: int) -> None:
        """One user's (n, s) moved from (n_before, s_before) by (dn, ds): update the sums incrementally."""
        n1, s1 = n_before + dn, s_before + ds
        if n_before == 0 and n1 > 0:
            self.users += 1
        self.n += dn
        self.s += ds
        self.nn += n1 * n1 - n_before * n_before
        self.ss += s1 * s1 - s_before * s_before
        self.ns += n1 * s1 - n_before * s_before

    def as_dict(self) -> dict[str, float]:
        return {f: getattr(self, f) for f in _SUM_FIELDS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> UserSums:
        data = data or {}
        return cls(**{f: float(data.get(f, 0.0)) for f in _SUM_FIELDS})


@dataclass
class ArmCounts:
    """Counts of one (experiment, phase, arm) as seen by one sidecar, or merged."""

    predictions: float = 0.0
    errors: float = 0.0
    labelled: float = 0.0
    correct: float = 0.0
    latency_sum: float = 0.0
    latency_count: float = 0.0
    latency_buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count
    user_sketch: HyperLogLog = field(default_factory=lambda: HyperLogLog(DEFAULT_PRECISION))
    sums: dict[str, UserSums] = field(default_factory=lambda: {m: UserSums() for m in RATIO_METRICS})

    def copy(self) -> ArmCounts:
        return ArmCounts.from_dict(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return {
            **{f: getattr(self, f) for f in _SCALARS},
            "latency_buckets": [[("+Inf" if math.isinf(le) else le), c] for le, c in sorted(self.latency_buckets.items())],
            "users": self.user_sketch.to_text(),
            "sums": {m: s.as_dict() for m, s in sorted(self.sums.items())},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArmCounts:
        out = cls(**{f: float(data.get(f, 0.0)) for f in _SCALARS})
        for le, count in data.get("latency_buckets") or []:
            out.latency_buckets[math.inf if le in ("+Inf", "inf") else float(le)] = float(count)
        if data.get("users"):
            out.user_sketch = HyperLogLog.from_text(data["users"])
        sums = data.get("sums") or {}
        out.sums = {m: UserSums.from_dict(sums.get(m)) for m in RATIO_METRICS}
        return out

    def counters(self) -> dict[str, float]:
        """Every additive number, flattened (for reset detection and subtraction)."""
        flat = {f: getattr(self, f) for f in _SCALARS}
        for le, count in self.latency_buckets.items():
            flat[f"le:{le!r}"] = count
        for metric, sums in self.sums.items():
            for f in _SUM_FIELDS:
                flat[f"{metric}:{f}"] = getattr(sums, f)
        return flat

    def add(self, other: ArmCounts, sign: float = 1.0) -> None:
        """In place: add ``sign * other``'s additive counts; merge its sketch (union) when adding."""
        for f in _SCALARS:
            setattr(self, f, getattr(self, f) + sign * getattr(other, f))
        for le, count in other.latency_buckets.items():
            self.latency_buckets[le] = self.latency_buckets.get(le, 0.0) + sign * count
        for metric, sums in other.sums.items():
            mine = self.sums.setdefault(metric, UserSums())
            for f in _SUM_FIELDS:
                setattr(mine, f, getattr(mine, f) + sign * getattr(sums, f))
        if sign > 0:
            self.user_sketch.merge(other.user_sketch)


ArmTable = dict[ArmKey, ArmCounts]


def table_to_list(table: Mapping[ArmKey, ArmCounts]) -> list[dict[str, Any]]:
    return [{"experiment": e, "phase": p, "arm": a, **c.to_dict()} for (e, p, a), c in sorted(table.items())]


def table_from_list(items: Iterable[Mapping[str, Any]]) -> ArmTable:
    """Inverse of :func:`table_to_list`; ValueError naming the problem on malformed input."""
    out: ArmTable = {}
    for item in items:
        try:
            key = (str(item["experiment"]), int(item["phase"]), str(item["arm"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"arm entry without experiment/phase/arm: {exc}") from exc
        if key[2] not in ARMS:
            raise ValueError(f"unknown arm {key[2]!r}")
        out[key] = ArmCounts.from_dict(item)
    return out


def merge_tables(tables: Iterable[Mapping[ArmKey, ArmCounts]]) -> ArmTable:
    """Add tables from several sidecars (replicas): additive counts add, sketches take the union."""
    out: ArmTable = {}
    for table in tables:
        for key, counts in table.items():
            out.setdefault(key, ArmCounts()).add(counts)
    return out


def for_experiment(table: Mapping[ArmKey, ArmCounts], experiment: str) -> ArmTable:
    return {k: v for k, v in table.items() if k[0] == experiment}


# --------------------------------------------------------------------------------------------------
# Recording (what the sidecar does per event)
# --------------------------------------------------------------------------------------------------


@dataclass
class ArmRecorder:
    """Accumulates tagged prediction and feedback events into an :data:`ArmTable`.

    Per-user state (n and s for each ratio metric) is kept per (experiment, phase, arm, user hash),
    bounded by ``max_users``: beyond it the oldest users are forgotten, so a forgotten user's later
    outcomes start a new user in the sums (documented under-estimate of the correlation).
    """

    max_users: int = 1_000_000
    table: ArmTable = field(default_factory=dict)
    _users: dict[tuple[str, int, str, str], list[int]] = field(default_factory=dict)

    def _arm(self, key: ArmKey) -> ArmCounts:
        arm = self.table.get(key)
        if arm is None:
            arm = self.table[key] = ArmCounts()
        return arm

    def _user(self, key: ArmKey, user: str) -> list[int]:
        ukey = (*key, user)
        state = self._users.get(ukey)
        if state is None:
            if len(self._users) >= self.max_users:
                self._users.pop(next(iter(self._users)))
            state = self._users[ukey] = [0, 0, 0, 0]  # predictions, errors, labelled, correct
        return state

    def prediction(self, key: ArmKey, user: str, *, error: bool, latency_seconds: float) -> None:
        arm = self._arm(key)
        arm.predictions += 1
        if error:
            arm.errors += 1
        seconds = max(float(latency_seconds), 0.0)
        arm.latency_sum += seconds
        arm.latency_count += 1
        if not arm.latency_buckets:
            arm.latency_buckets = dict.fromkeys(LATENCY_BUCKETS, 0.0)
        for le in LATENCY_BUCKETS:
            if seconds <= le:
                arm.latency_buckets[le] += 1
        arm.user_sketch.add_hash(user)
        state = self._user(key, user)
        arm.sums["errorRate"].add_user_delta(state[0], state[1], 1, 1 if error else 0)
        state[0] += 1
        state[1] += 1 if error else 0

    def outcome(self, key: ArmKey, user: str, *, correct: bool) -> None:
        arm = self._arm(key)
        arm.labelled += 1
        if correct:
            arm.correct += 1
        arm.user_sketch.add_hash(user)
        state = self._user(key, user)
        arm.sums["accuracy"].add_user_delta(state[2], state[3], 1, 1 if correct else 0)
        state[2] += 1
        state[3] += 1 if correct else 0

    def snapshot(self) -> ArmTable:
        return {k: v.copy() for k, v in self.table.items()}

    def to_dict(self) -> dict[str, Any]:
        """The whole state (counts, sketches and each user's running n and s) as plain JSON data, so a
        restarted sidecar can continue exactly where it stopped (``from_dict``)."""
        return {"table": table_to_list(self.table),
                "users": [[*key, *state] for key, state in self._users.items()]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], max_users: int = 1_000_000) -> ArmRecorder:
        """Inverse of :meth:`to_dict`; raises ValueError on malformed data."""
        try:
            rec = cls(max_users=max_users, table=table_from_list(data.get("table") or []))
            for row in data.get("users") or []:
                experiment, phase, arm, user, *state = row
                if len(state) != 4:
                    raise ValueError(f"a user's state has 4 counts, got {state!r}")
                rec._users[(str(experiment), int(phase), str(arm), str(user))] = [int(x) for x in state]
        except (TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"malformed arm state: {exc}") from exc
        return rec


# --------------------------------------------------------------------------------------------------
# Reset-safe accumulation across scrapes (what the operator does per source)
# --------------------------------------------------------------------------------------------------


@dataclass
class SourceState:
    instance: str
    last: ArmTable


@dataclass
class Accumulator:
    """Totals per arm over every source and every restart, and the last counts seen per source."""

    totals: ArmTable = field(default_factory=dict)
    sources: dict[str, SourceState] = field(default_factory=dict)
    resets: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "totals": table_to_list(self.totals),
            "sources": {s: {"instance": st.instance, "last": table_to_list(st.last)} for s, st in sorted(self.sources.items())},
            "resets": self.resets,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Accumulator:
        data = data or {}
        return cls(
            totals=table_from_list(data.get("totals") or []),
            sources={s: SourceState(str(v.get("instance", "")), table_from_list(v.get("last") or []))
                     for s, v in (data.get("sources") or {}).items()},
            resets=int(data.get("resets", 0)),
        )


def _is_reset(last: Mapping[ArmKey, ArmCounts], current: Mapping[ArmKey, ArmCounts]) -> bool:
    for key, before in last.items():
        now = current.get(key)
        if now is None:
            return True  # an arm the source had counted is gone: it started again
        now_counters = now.counters()
        for name, value in before.counters().items():
            if now_counters.get(name, 0.0) < value:
                return True
    return False


def accumulate(acc: Accumulator, source: str, instance: str, current: Mapping[ArmKey, ArmCounts]) -> bool:
    """Fold one scrape of ``source`` into ``acc`` (in place). Returns True when a reset was detected.

    Increase = ``current - last`` for the same instance with no counter going down; otherwise the
    source restarted and the increase is ``current`` itself. Sketches are unioned either way.
    """
    previous = acc.sources.get(source)
    reset = previous is not None and (previous.instance != instance or _is_reset(previous.last, current))
    for key, counts in current.items():
        total = acc.totals.setdefault(key, ArmCounts())
        total.add(counts)
        if previous is not None and not reset and key in previous.last:
            total.add(previous.last[key], sign=-1.0)
    acc.sources[source] = SourceState(instance, {k: v.copy() for k, v in current.items()})
    if reset:
        acc.resets += 1
    return reset
