"""The lifecycle of an ABExperiment as pure functions: ramp, analysis, decisions, status, sentence.

Why it exists: the operator must decide, at every collection, what an experiment's phase, traffic
split and verdict are, and those decisions must be testable without a cluster or a clock. So the
operator fetches (the experiment, its ModelDeployment, the other experiments, the merged per-arm
counts), calls :func:`evaluate` with ``now`` passed in, and applies what it returns (status, route,
promotion, Events). Everything here is a function of its inputs.

State machine (``docs/operator.md`` has the diagram)::

    Pending --(ModelDeployment and both versions exist, no other experiment holds it)--> Running
    Running <--(spec.paused)--> Paused
    Running --(significant winner, no SRM, guardrails not breached)--> Concluded   [autoPromote]
    Running --(guardrail breached and autoRollback)--> Terminated                  [share 0 at once]
    Running --(durationDays reached without a winner)--> Completed                 [share 0]

Concluded, Completed and Terminated are final: the treatment share goes to 0 (the experiment leaves
the routing table) and the status keeps the last analysis. ``startedAt`` is written once.

Statistics (per user, per ramp phase):

- **Unit of analysis = unit of randomisation.** Each arm's rate (accuracy = correct / labelled,
  error rate = errors / predictions) is a ratio of per-user sums; its variance comes from the delta
  method over users (Deng, Knoblich & Lu 2018) using K, sum n, sum s, sum n^2, sum s^2, sum n s
  (``mlops.core.arm_counts``), floored at the binomial variance so it is never optimistic.
- **Ramps are stratified**: each ramp phase (a step of the split) is analysed on its own and the
  per-phase differences are combined with weights proportional to the phase's outcomes, so a base
  rate that drifts while the split grows cannot create a winner (Simpson's paradox).
- **Decision**: the always-valid mixture SPRT of ``mlops.core.ab_stats`` on the combined
  difference; p-values are carried over between looks (never rise), so looking at every collection
  keeps the false-positive rate at ``significanceLevel``.
- **SRM** on *distinct users* (HyperLogLog estimates) per phase against that phase's share, at
  0.001 with a Bonferroni correction over phases; while flagged no winner is declared.
- **Guardrails** as always-valid one-sided non-inferiority: *breached* when the always-valid
  confidence sequence shows the treatment worse by more than ``maxDegradation``; *passed* when it
  shows it is not; otherwise pending. A promotion needs every guardrail passed.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mlops.core.ab_stats import (
    PhaseCounts,
    RatioSums,
    design_effect,
    msprt,
    msprt_half_width,
    sequential_ratio,
    sequential_sample_size,
    sequential_srm,
)
from mlops.core.arm_counts import ArmCounts, ArmKey, UserSums
from mlops.core.counters import histogram_quantile

PENDING, RUNNING, PAUSED = "Pending", "Running", "Paused"
CONCLUDED, COMPLETED, TERMINATED = "Concluded", "Completed", "Terminated"
FINAL = frozenset({CONCLUDED, COMPLETED, TERMINATED})
ACTIVE = frozenset({RUNNING, PAUSED})
SRM_ALPHA = 0.001
LOWER_IS_BETTER = {"accuracy": False, "errorRate": True, "latency": True}
CONDITION_TYPES = ("Running", "Conflict", "SampleRatioMismatch", "GuardrailBreached", "Concluded")


def rfc3339(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


# --------------------------------------------------------------------------------------------------
# Ramp
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RampPoint:
    share: float  # treatment share of in-segment users now
    phase: int  # 0 for immediate; for steps, 0 before the first step and k from step k on
    next_step_at: float | None  # epoch seconds of the next step, None when ramping is done


def ramp(spec: Mapping[str, Any], started_at: float, now: float) -> RampPoint:
    """The split in force at ``now``: ``trafficSplit`` for ``immediate``; for ``steps`` the split of
    the last step whose ``afterHours`` has passed since ``started_at`` (0 before the first step).
    Shares never decrease over time (the CRD rejects decreasing steps), so assignment is monotone."""
    ramping = spec.get("ramping") or {}
    if ramping.get("strategy", "immediate") != "steps" or not ramping.get("steps"):
        return RampPoint(float(spec.get("trafficSplit", 0.5)), 0, None)
    steps = sorted(ramping["steps"], key=lambda s: float(s["afterHours"]))
    elapsed_hours = max(0.0, (now - started_at) / 3600.0)
    reached = 0
    for i, step in enumerate(steps, start=1):
        if elapsed_hours >= float(step["afterHours"]):
            reached = i
    share = float(steps[reached - 1]["split"]) if reached else 0.0
    next_at = started_at + float(steps[reached]["afterHours"]) * 3600.0 if reached < len(steps) else None
    return RampPoint(share, reached, next_at)


def phase_shares(spec: Mapping[str, Any]) -> dict[int, float]:
    """Ramp phase index -> its treatment share (for the per-phase SRM check)."""
    ramping = spec.get("ramping") or {}
    if ramping.get("strategy", "immediate") != "steps" or not ramping.get("steps"):
        return {0: float(spec.get("trafficSplit", 0.5))}
    steps = sorted(ramping["steps"], key=lambda s: float(s["afterHours"]))
    return {0: 0.0, **{i: float(s["split"]) for i, s in enumerate(steps, start=1)}}


# --------------------------------------------------------------------------------------------------
# Analysis
# --------------------------------------------------------------------------------------------------


def ratio_sums(sums: UserSums) -> RatioSums:
    """The sidecar's per-user sums as ``mlops.core.ab_stats.RatioSums`` (users are the units)."""
    return RatioSums(int(round(sums.users)), sums.n, sums.s, sums.nn, sums.ss, sums.ns)


def delta_ratio(sums: UserSums) -> tuple[float, float] | None:
    """(ratio S/N, its delta-method variance over users, floored at the binomial variance of the
    shrunk rate); None with fewer than 2 users or no outcomes."""
    rs = ratio_sums(sums)
    v = rs.ratio_variance()
    if v is None or rs.n <= 0:
        return None
    shrunk = (rs.s + 1) / (rs.n + 2)
    return rs.s / rs.n, max(v, shrunk * (1 - shrunk) / rs.n)


def _latency_moments(arm: ArmCounts) -> tuple[float, float, float] | None:
    """(mean seconds, variance, n) from the histogram (bucket midpoints) and the exact sum."""
    n = arm.latency_count
    if n < 2 or not arm.latency_buckets:
        return None
    mean = arm.latency_sum / n
    prev_le, prev_c, second = 0.0, 0.0, 0.0
    for le, cum in sorted(arm.latency_buckets.items()):
        mid = prev_le * 2 if math.isinf(le) else (prev_le + le) / 2
        second += (cum - prev_c) * mid * mid
        prev_le, prev_c = (prev_le if math.isinf(le) else le), cum
    var = max(0.0, second / n - mean * mean)
    return mean, max(var, 1e-12), n


@dataclass
class ArmSummary:
    users: int = 0
    predictions: int = 0
    labelled: int = 0
    correct: int = 0
    errors: int = 0
    accuracy: float | None = None
    error_rate: float | None = None
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None


@dataclass
class GuardrailResult:
    metric: str
    max_degradation: float
    degradation: float | None
    lower: float | None
    upper: float | None
    result: str  # "passed", "breached" or "pending"


@dataclass
class Analysis:
    arms: dict[str, ArmSummary]
    metric: str
    estimate: float | None  # treatment minus control on the primary metric (stratified)
    variance: float | None
    p_value: float
    ci_low: float | None
    ci_high: float | None
    significant: bool
    srm_p_value: float
    srm: bool
    srm_shares: dict[str, float | None]
    required_per_arm: int | None
    samples: dict[str, int]
    guardrails: list[GuardrailResult] = field(default_factory=list)
    final_phase_reached: bool = True
    srm_running: list[float] = field(default_factory=list)
    final_samples: dict[str, ArmCounts] = field(default_factory=dict)

    @property
    def final_min_samples(self) -> int:
        """Samples of the smaller arm in the final allocation phase (what the verdict is based on)."""
        if not self.final_samples:
            return 0
        attr = "labelled" if self.metric == "accuracy" else "predictions"
        return int(min(getattr(c, attr) for c in self.final_samples.values()))

    @property
    def improvement(self) -> float | None:
        """Positive when the treatment is better on the primary metric."""
        if self.estimate is None:
            return None
        return -self.estimate if LOWER_IS_BETTER[self.metric] else self.estimate


def _metric_diff(metric: str, control: ArmCounts, treatment: ArmCounts) -> tuple[float, float] | None:
    """(treatment - control, variance) for one phase; latency as a *relative* difference."""
    if metric in ("accuracy", "errorRate"):
        c, t = delta_ratio(control.sums[metric]), delta_ratio(treatment.sums[metric])
        if c is None or t is None:
            return None
        return t[0] - c[0], t[1] + c[1]
    c_m, t_m = _latency_moments(control), _latency_moments(treatment)
    if c_m is None or t_m is None or c_m[0] <= 0:
        return None
    return (t_m[0] - c_m[0]) / c_m[0], (t_m[1] / t_m[2] + c_m[1] / c_m[2]) / (c_m[0] ** 2)


def _stratified(metric: str, phases: Mapping[int, Mapping[str, ArmCounts]], shares: Mapping[int, float]):
    weighted, weights, var = 0.0, 0.0, 0.0
    parts = []
    for phase, arms in sorted(phases.items()):
        share = shares.get(phase)
        if share is None or not 0.0 < share < 1.0 or "control" not in arms or "treatment" not in arms:
            continue
        diff = _metric_diff(metric, arms["control"], arms["treatment"])
        if diff is None:
            continue
        c, t = arms["control"], arms["treatment"]
        size = (c.labelled + t.labelled) if metric == "accuracy" else (c.predictions + t.predictions)
        parts.append((size, diff))
    total = math.fsum(size for size, _ in parts)
    if total <= 0:
        return None
    for size, (d, v) in parts:
        w = size / total
        weighted += w * d
        weights += w
        var += w * w * v
    return weighted, var


def _summaries(arms: Mapping[str, ArmCounts]) -> ArmSummary:
    merged = ArmCounts()
    for counts in arms.values():
        merged.add(counts)
    return _summary(merged)


def _summary(arm: ArmCounts) -> ArmSummary:
    ms = None if not arm.latency_buckets else histogram_quantile(0.5, arm.latency_buckets)
    p95 = None if not arm.latency_buckets else histogram_quantile(0.95, arm.latency_buckets)
    return ArmSummary(
        users=int(round(arm.user_sketch.estimate())),
        predictions=int(round(arm.predictions)),
        labelled=int(round(arm.labelled)),
        correct=int(round(arm.correct)),
        errors=int(round(arm.errors)),
        accuracy=(arm.correct / arm.labelled) if arm.labelled > 0 else None,
        error_rate=(arm.errors / arm.predictions) if arm.predictions > 0 else None,
        latency_p50_ms=None if ms is None else ms * 1000.0,
        latency_p95_ms=None if p95 is None else p95 * 1000.0,
    )


def final_phase(spec: Mapping[str, Any]) -> int:
    """The ramp phase at the target allocation: 0 for immediate, the number of steps for steps."""
    return max(phase_shares(spec))


def analyse(
    spec: Mapping[str, Any], counts: Mapping[ArmKey, ArmCounts], *, prior_p_value: float | None = None,
    prior_srm: Sequence[float | None] | None = None, prior_guardrails: Sequence[Mapping[str, Any]] | None = None,
) -> Analysis:
    """Everything the status reports about the data, from merged per-arm counts of one experiment.

    The verdict uses only the final allocation phase (as ``mlops.monitoring.ab_testing`` does, see
    docs/statistics.md): while ramping it is inconclusive. SRM is always-valid per phase
    (``sequential_srm``); guardrails combine every phase that ran both arms (stratified), so harm is
    caught while the share is still small. ``prior_*`` carry the running p-values and bounds of the
    previous look (from status), so the always-valid quantities never move back.
    """
    metric = spec.get("primaryMetric", "accuracy")
    alpha = float(spec.get("significanceLevel", 0.05))
    mde = float(spec.get("minimumDetectableEffect", 0.02))
    shares = phase_shares(spec)
    final = final_phase(spec)
    phases: dict[int, dict[str, ArmCounts]] = {}
    per_arm: dict[str, dict[int, ArmCounts]] = {"control": {}, "treatment": {}}
    for (_exp, phase, arm), c in counts.items():
        phases.setdefault(phase, {})[arm] = c
        per_arm[arm][phase] = c
    arms = {arm: _summaries(per_arm[arm]) for arm in ("control", "treatment")}
    last = phases.get(final, {})
    empty = ArmCounts()
    fc, ft = last.get("control", empty), last.get("treatment", empty)

    estimate = variance = None
    if metric in ("accuracy", "errorRate"):
        a_sums, b_sums = ratio_sums(fc.sums[metric]), ratio_sums(ft.sums[metric])
        seq = sequential_ratio(a_sums, b_sums, alpha, mde, prior_p_value)
        deff = design_effect(a_sums, b_sums)
    else:
        diff = _metric_diff(metric, fc, ft)
        seq = msprt(math.nan if diff is None else diff[0], 0.0 if diff is None else diff[1], mde, alpha,
                    prior_p_value)
        deff = 1.0
    if seq.estimate is not None:
        estimate, variance = seq.estimate, seq.variance

    # SRM per phase on distinct users (HyperLogLog estimates), always-valid over looks
    phase_counts = []
    for phase in range(final + 1):
        arm_counts = phases.get(phase, {})
        n_c = int(round(arm_counts["control"].user_sketch.estimate())) if "control" in arm_counts else 0
        n_t = int(round(arm_counts["treatment"].user_sketch.estimate())) if "treatment" in arm_counts else 0
        phase_counts.append(PhaseCounts(n_c, n_t, shares.get(phase)))
    srm, srm_running = sequential_srm(phase_counts, SRM_ALPHA, prior_srm)
    total_users = arms["control"].users + arms["treatment"].users

    def sample_count(a: ArmSummary) -> int:
        return a.labelled if metric == "accuracy" else a.predictions

    samples = {arm: sample_count(arms[arm]) for arm in arms}
    required = None
    final_share = shares[final]
    baseline = arms["control"].accuracy if metric == "accuracy" else arms["control"].error_rate
    if metric != "latency" and 0.0 < final_share < 1.0:
        base = min(max(baseline if baseline is not None and 0 < baseline < 1 else 0.5, 0.01), 0.99)
        effect = mde if base + mde < 1.0 else -mde
        try:
            plan = sequential_sample_size(base, effect, alpha, float(spec.get("statisticalPower", 0.8)), final_share)
            # users are the unit: inflate by the observed design effect (correlated outcomes per user)
            required = max(math.ceil(max(plan.n_control, plan.n_treatment) * deff),
                           int(spec.get("minSamplesPerVariant", 1)))
        except ValueError:
            required = None

    priors = {g.get("metric"): g for g in prior_guardrails or []}
    guardrails = [_guardrail(g, phases, shares, alpha, priors.get(g["metric"])) for g in spec.get("guardrails") or []]
    return Analysis(
        arms=arms, metric=metric, estimate=estimate, variance=variance, p_value=float(seq.p_value),
        ci_low=seq.ci_low, ci_high=seq.ci_high, significant=bool(seq.significant), srm_p_value=float(srm.p_value),
        srm=bool(srm.mismatch), srm_shares={"expected": srm.expected_share_b, "observed": srm.observed_share_b,
                                            "users_observed": (arms["treatment"].users / total_users)
                                            if total_users else None},
        required_per_arm=required, samples=samples, guardrails=guardrails, final_phase_reached=bool(last),
        srm_running=srm_running, final_samples={"control": fc, "treatment": ft},
    )


def _guardrail(g: Mapping[str, Any], phases, shares, alpha: float, prior: Mapping[str, Any] | None) -> GuardrailResult:
    """Always-valid one-sided test of the treatment's worsening against ``maxDegradation``: the
    confidence sequence's lower end is carried up and its upper end down across looks (``prior``)."""
    metric, margin = g["metric"], float(g["maxDegradation"])
    combined = _stratified(metric, phases, shares)
    enough = all(
        sum((a.labelled if metric == "accuracy" else a.predictions) for p in phases.values()
            for name, a in p.items() if name == arm) >= 20
        for arm in ("control", "treatment")
    )
    prior = prior or {}
    if combined is None or not enough:
        lower, upper = prior.get("lower"), prior.get("upper")
        result = prior.get("result") if prior.get("result") in ("breached", "passed") else "pending"
        return GuardrailResult(metric, margin, prior.get("degradation"), lower, upper, result)
    diff, var = combined
    degradation = -diff if not LOWER_IS_BETTER[metric] else diff
    tau = max(margin, 0.01)
    half = float(msprt_half_width(max(var, 1e-15), tau * tau, alpha))
    lower, upper = degradation - half, degradation + half
    if prior.get("lower") is not None:
        lower = max(lower, float(prior["lower"]))
    if prior.get("upper") is not None:
        upper = min(upper, float(prior["upper"]))
    result = "breached" if lower > margin else ("passed" if upper < margin else "pending")
    return GuardrailResult(metric, margin, degradation, lower, upper, result)


# --------------------------------------------------------------------------------------------------
# Decisions
# --------------------------------------------------------------------------------------------------


@dataclass
class Situation:
    """What the operator observed, besides the experiment itself."""

    now: float
    mdep_found: bool
    mdep_versions: Sequence[str] = ()
    mdep_generation: int | None = None
    holder: str | None = None  # the experiment that holds the ModelDeployment (None: free)
    analysis: Analysis | None = None


@dataclass
class Outcome:
    status: dict[str, Any]
    events: list[tuple[str, str, str]]  # (type, reason, message)
    route: dict[str, Any] | None  # the routing table's experiment entry, None = not routed
    promote: str | None  # version that should take all stable traffic


def holder_of(experiments: Sequence[Mapping[str, Any]], mdep: str) -> str | None:
    """Which experiment holds ``mdep``: one already Running/Paused by status, else the oldest
    not-final one (creationTimestamp, then name). Others on the same ModelDeployment wait."""
    mine = [e for e in experiments if (e.get("spec") or {}).get("modelDeployment") == mdep
            and not (e.get("metadata") or {}).get("deletionTimestamp")
            and (e.get("status") or {}).get("phase") not in FINAL]
    active = [e for e in mine if (e.get("status") or {}).get("phase") in ACTIVE]
    pool = active or mine
    if not pool:
        return None
    pool.sort(key=lambda e: (e["metadata"].get("creationTimestamp") or "", e["metadata"]["name"]))
    return pool[0]["metadata"]["name"]


def _condition(old: Sequence[Mapping[str, Any]], ctype: str, status: bool, reason: str, message: str,
               now: str, generation: int | None) -> dict[str, Any]:
    value = "True" if status else "False"
    prev = next((c for c in old if c.get("type") == ctype), None)
    since = prev["lastTransitionTime"] if prev and prev.get("status") == value else now
    cond = {"type": ctype, "status": value, "reason": reason, "message": message[:32000], "lastTransitionTime": since}
    if generation is not None:
        cond["observedGeneration"] = generation
    return cond


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _points(x: float | None, metric: str) -> str:
    if x is None:
        return "n/a"
    if metric == "latency":
        return f"{100 * x:+.1f}%"
    return f"{100 * x:+.1f} points"


def _metric_value(arm: ArmSummary, metric: str) -> str:
    if metric == "accuracy":
        return "n/a" if arm.accuracy is None else f"{arm.accuracy:.3f}"
    if metric == "errorRate":
        return _pct(arm.error_rate)
    return "n/a" if arm.latency_p50_ms is None else f"{arm.latency_p50_ms:.1f} ms (p50)"


_METRIC_NAMES = {"accuracy": "accuracy", "errorRate": "error rate", "latency": "latency"}


def recommendation(spec: Mapping[str, Any], phase: str, a: Analysis | None, *, reason: str = "",
                   promoted: str | None = None, breached: Sequence[GuardrailResult] = ()) -> str:
    """One sentence a product owner understands."""
    control, treatment = spec["controlVersion"], spec["treatmentVersion"]
    if phase == PENDING:
        return f"Waiting: {reason}."
    if a is None:
        return f"Collecting data: no tagged predictions from {control} or {treatment} yet."
    name = _METRIC_NAMES[a.metric]
    c, t = a.arms["control"], a.arms["treatment"]
    values = f"{name} {_metric_value(t, a.metric)} for {treatment} vs {_metric_value(c, a.metric)} for {control}"
    ci = (f"always-valid {100 * (1 - float(spec.get('significanceLevel', 0.05))):g}% CI "
          f"{_points(a.ci_low, a.metric)} to {_points(a.ci_high, a.metric)}")
    if breached:
        g = breached[0]
        text = (f"{treatment} degrades the {_METRIC_NAMES[g.metric]} guardrail by {_points(g.degradation, g.metric)} "
                f"(at least {_points(g.lower, g.metric)} with confidence) where at most "
                f"{_points(g.max_degradation, g.metric).lstrip('+')} is allowed")
        if phase == TERMINATED:
            return f"Rolled back: {text}; all traffic is back on {control}."
        return f"Roll back {treatment}: {text} (autoRollback is off, so it keeps running)."
    if a.srm:
        return (f"Do not trust these results yet: {_pct(a.srm_shares['observed'])} of users are in the treatment "
                f"where {_pct(a.srm_shares['expected'])} were expected (sample-ratio mismatch, always-valid "
                f"p={a.srm_p_value:.2g}); "
                "fix assignment or logging before deciding.")
    if phase == CONCLUDED:
        if (a.improvement or 0) > 0:
            tail = (f" {promoted} now receives all stable traffic (recorded in status; set stableVersion: {promoted} "
                    "in Git to make it permanent)." if promoted else
                    f" Set stableVersion: {treatment} to promote it (autoPromote is off).")
            return f"Promote {treatment}: {values} ({ci}, p={a.p_value:.2g}).{tail}"
        return f"Keep {control}: {treatment} is worse, {values} ({ci}, p={a.p_value:.2g}); the treatment was stopped."
    if phase == COMPLETED:
        return (f"No significant difference on {name} after {spec.get('durationDays', 7)} days ({values}, "
                f"p={a.p_value:.2g}); keep {control}.")
    need = a.required_per_arm
    have = min(a.samples.values()) if a.samples else 0
    progress = f"{have:,} of {need:,} samples per arm ({min(100, 100 * have // max(need, 1))}%)" if need else f"{have:,} samples per arm"
    paused = "Paused (all traffic on control): " if phase == PAUSED else "Keep running: "
    if not a.final_phase_reached:
        return (f"{paused}ramping; the verdict uses only the final allocation "
                f"({phase_shares(spec)[final_phase(spec)]:g} to {treatment}), so periods "
                f"with different shares are never pooled ({values}).")
    if a.significant and (a.improvement or 0) > 0:
        pending = [g.metric for g in a.guardrails if g.result != "passed"]
        if pending:
            return (f"{paused}{treatment} is better ({values}, p={a.p_value:.2g}) but the guardrail(s) "
                    f"{', '.join(pending)} are not shown safe yet.")
        if int(spec.get("minSamplesPerVariant", 1)) > a.final_min_samples:
            return f"{paused}{treatment} looks better ({values}) but each arm needs {spec.get('minSamplesPerVariant')} samples first."
    return f"{paused}{progress}; no significant difference on {name} yet ({values}, p={a.p_value:.2g})."


def evaluate(
    name: str, spec: Mapping[str, Any], old_status: Mapping[str, Any] | None, situation: Situation, *,
    generation: int | None = None, salt: str | None = None,
) -> Outcome:
    """The new status, the Events, the routing entry and the promotion for one experiment."""
    old = dict(old_status or {})
    old_phase = old.get("phase")
    now = situation.now
    stamp = rfc3339(now)
    old_conditions = old.get("conditions") or []
    status: dict[str, Any] = {k: v for k, v in old.items() if k != "conditions"}
    status["observedGeneration"] = generation
    control, treatment = spec["controlVersion"], spec["treatmentVersion"]
    mdep = spec["modelDeployment"]
    events: list[tuple[str, str, str]] = []

    def conds(**flags: tuple[bool, str, str]) -> list[dict[str, Any]]:
        out = []
        for ctype in CONDITION_TYPES:
            if ctype in flags:
                value, reason, message = flags[ctype]
                out.append(_condition(old_conditions, ctype, value, reason, message, stamp, generation))
            else:
                prev = next((c for c in old_conditions if c.get("type") == ctype), None)
                if prev is not None:
                    out.append(dict(prev))
        return out

    if old_phase in FINAL:
        status["conditions"] = [dict(c) for c in old_conditions]
        return Outcome(status, events, None, status.get("promotedVersion"))

    # ---- can it run at all?
    wait_reason = None
    if not situation.mdep_found:
        wait_reason, cond_reason = f"ModelDeployment {mdep!r} was not found in this namespace", "ModelDeploymentNotFound"
    else:
        missing = [v for v in (control, treatment) if v not in situation.mdep_versions]
        if missing:
            wait_reason = f"version(s) {', '.join(missing)} are not served by ModelDeployment {mdep!r}"
            cond_reason = "VersionNotFound"
        elif situation.holder not in (None, name):
            wait_reason = f"experiment {situation.holder!r} is already running on ModelDeployment {mdep!r}"
            cond_reason = "Conflict"
    if wait_reason is not None:
        status.update(phase=PENDING, currentSplit=0.0, winner="none",
                      recommendation=recommendation(spec, PENDING, None, reason=wait_reason))
        status["conditions"] = conds(
            Running=(False, cond_reason, wait_reason),
            Conflict=(cond_reason == "Conflict", cond_reason if cond_reason == "Conflict" else "NoConflict",
                      wait_reason if cond_reason == "Conflict" else "no other experiment holds the ModelDeployment"),
        )
        if old_phase != PENDING or (old.get("recommendation") != status["recommendation"]):
            events.append(("Warning", cond_reason, wait_reason))
        return Outcome(status, events, None, None)

    started = parse_rfc3339(old.get("startedAt"))
    if started is None:
        started = now
        status["startedAt"] = stamp
        events.append(("Normal", "Started", f"experiment started: {control} vs {treatment} on {mdep}"))
    if salt:
        status["salt"] = status.get("salt") or salt
    point = ramp(spec, started, now)
    status["rampStep"] = point.phase
    status["nextStepAt"] = rfc3339(point.next_step_at) if point.next_step_at else None
    a = situation.analysis
    paused = bool(spec.get("paused"))
    phase = PAUSED if paused else RUNNING
    winner = "none"
    promote = None
    breached: list[GuardrailResult] = []
    if a is not None:
        breached = [g for g in a.guardrails if g.result == "breached"]
        if breached and spec.get("autoRollback"):
            phase = TERMINATED
        elif (not a.srm and a.significant and a.final_phase_reached
              and a.final_min_samples >= int(spec.get("minSamplesPerVariant", 1))):
            better = (a.improvement or 0) > 0
            if not better:
                winner, phase = "control", CONCLUDED
            elif not breached and all(g.result == "passed" for g in a.guardrails):
                winner, phase = "treatment", CONCLUDED
                if spec.get("autoPromote"):
                    promote = treatment
    if phase in (RUNNING, PAUSED) and now - started >= float(spec.get("durationDays", 7)) * 86400.0:
        phase = COMPLETED

    share = point.share if phase == RUNNING else 0.0
    status.update(phase=phase, currentSplit=share, winner=winner)
    if phase in FINAL:
        status["completedAt"] = stamp
        status["nextStepAt"] = None
    if promote:
        status["promotedVersion"] = promote
        status["promotion"] = {"version": promote, "modelDeploymentGeneration": situation.mdep_generation, "at": stamp}
    if a is not None:
        status.update(_analysis_status(a))
    status["recommendation"] = recommendation(spec, phase, a, promoted=promote, breached=breached)

    srm = bool(a and a.srm)
    status["conditions"] = conds(
        Running=(phase in (RUNNING, PAUSED), phase if phase != RUNNING else "Running",
                 {RUNNING: f"treatment share {share:g}", PAUSED: "paused: every request goes to control"}.get(
                     phase, f"experiment {phase.lower()}")),
        Conflict=(False, "NoConflict", "no other experiment holds the ModelDeployment"),
        SampleRatioMismatch=(srm, "SampleRatioMismatch" if srm else "RatioAsExpected",
                             status.get("recommendation", "") if srm else "arm sizes agree with the split"),
        GuardrailBreached=(bool(breached), "GuardrailBreached" if breached else "GuardrailsHold",
                           status["recommendation"] if breached else "no guardrail breached"),
        Concluded=(phase in FINAL, phase if phase in FINAL else "InProgress",
                   status["recommendation"] if phase in FINAL else "no verdict yet"),
    )
    # ---- Events on transitions
    was = {c["type"]: c["status"] for c in old_conditions}
    if phase != old_phase and (phase in FINAL or old_phase in ACTIVE or phase == PAUSED):
        reason = {RUNNING: "Resumed", PAUSED: "Paused", CONCLUDED: "Concluded", COMPLETED: "Completed",
                  TERMINATED: "RolledBack"}[phase]
        events.append(("Warning" if phase == TERMINATED else "Normal", reason, status["recommendation"]))
    if srm and was.get("SampleRatioMismatch") != "True":
        events.append(("Warning", "SampleRatioMismatch", status["recommendation"]))
    if breached and was.get("GuardrailBreached") != "True":
        events.append(("Warning", "GuardrailBreached", status["recommendation"]))
    if promote:
        events.append(("Normal", "Promoted", f"{promote} now receives all stable traffic of {mdep}"))
    route = None
    if phase in (RUNNING, PAUSED):
        route = {
            "name": name,
            "salt": status.get("salt") or name,
            "control": control,
            "treatment": treatment,
            "treatment_share": point.share,
            "segment": spec.get("segmentCriteria") or None,
            "paused": paused,
            "phase": point.phase,
        }
    return Outcome(status, events, route, promote)


def _analysis_status(a: Analysis) -> dict[str, Any]:
    def arm(s: ArmSummary) -> dict[str, Any]:
        out = {"users": s.users, "predictions": s.predictions, "labelled": s.labelled,
               "accuracy": s.accuracy, "errorRate": s.error_rate,
               "latencyP50Ms": s.latency_p50_ms, "latencyP95Ms": s.latency_p95_ms}
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in out.items() if v is not None}

    def r(x: float | None) -> float | None:
        return None if x is None or not math.isfinite(x) else round(float(x), 6)

    need = a.required_per_arm
    have = min(a.samples.values()) if a.samples else 0
    return {
        "samples": dict(a.samples),
        "users": {k: v.users for k, v in a.arms.items()},
        "metrics": {k: arm(v) for k, v in a.arms.items()},
        "primaryMetric": a.metric,
        "effectSize": r(a.estimate),
        "confidenceInterval": {"lower": r(a.ci_low), "upper": r(a.ci_high)},
        "pValue": r(a.p_value),
        "srmPValue": r(a.srm_p_value),
        "srmPhasePValues": [r(p) for p in a.srm_running],
        "sampleRatioMismatch": a.srm,
        "requiredSampleSize": need,
        "progress": None if not need else r(min(1.0, have / need)),
        "guardrails": [
            {"metric": g.metric, "maxDegradation": g.max_degradation, "degradation": r(g.degradation),
             "lower": r(g.lower), "upper": r(g.upper), "result": g.result}
            for g in a.guardrails
        ],
    }
