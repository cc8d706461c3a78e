"""Pure experiment machinery: HyperLogLog, arm tags, per-arm counts with reset-safe accumulation,
the delta method, the ramp, and the lifecycle decisions (with an injected clock)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from mlops.core.arm_counts import Accumulator, ArmCounts, ArmRecorder, UserSums, accumulate, merge_tables
from mlops.core.arm_tag import ArmTag, format_tag, parse_tag, tag_from_prediction_id, tagged_nonce
from mlops.core.experiment import (
    COMPLETED,
    CONCLUDED,
    PAUSED,
    PENDING,
    RUNNING,
    TERMINATED,
    Situation,
    analyse,
    delta_ratio,
    evaluate,
    holder_of,
    ramp,
)
from mlops.core.hll import HyperLogLog, merge_all, user_hash
from mlops.core.prediction_id import sign_prediction_id

T0 = 1_800_000_000.0
SPEC = {
    "modelDeployment": "m", "controlVersion": "v1", "treatmentVersion": "v2", "trafficSplit": 0.5,
    "minSamplesPerVariant": 50, "significanceLevel": 0.05, "statisticalPower": 0.8,
    "minimumDetectableEffect": 0.05, "primaryMetric": "accuracy", "durationDays": 7,
    "autoPromote": True, "autoRollback": True, "ramping": {"strategy": "immediate"},
}


# ---------------------------------------------------------------------------------------- HLL
@pytest.mark.parametrize("n", [10, 1_000, 5_000, 30_000, 200_000])
def test_hll_accuracy_seeded(n):
    rng = random.Random(n)
    sketch = HyperLogLog()
    for _ in range(n):
        sketch.add(f"user-{rng.getrandbits(64)}")
    rel = abs(sketch.estimate() - n) / n
    # linear counting below 2.5 m is far tighter than the 0.8% standard error of the raw estimate
    assert rel < (0.01 if n <= 30_000 else 0.03), (n, sketch.estimate())


def test_hll_merge_is_union_and_round_trips():
    a, b = HyperLogLog(), HyperLogLog()
    a.update(f"u{i}" for i in range(0, 3000))
    b.update(f"u{i}" for i in range(2000, 5000))  # 1000 users seen by both replicas
    union = merge_all([a, b])
    assert abs(union.estimate() - 5000) < 50
    assert HyperLogLog.from_text(union.to_text()) == union
    with pytest.raises(ValueError):
        HyperLogLog.from_text("14:not-base64!")
    with pytest.raises(ValueError):
        a.merge(HyperLogLog(10))


# ---------------------------------------------------------------------------------------- tags
def test_arm_tag_travels_in_the_prediction_id():
    tag = ArmTag("exp-1.a", 2, "treatment", user_hash("alice"))
    text = format_tag(tag)
    assert parse_tag(text) == tag
    pid = sign_prediction_id(b"k" * 32, "v2", "1", tagged_nonce("abc", text))
    assert tag_from_prediction_id(pid) == tag
    assert tag_from_prediction_id(sign_prediction_id(b"k" * 32, "v2", "1", "abc")) is None
    for bad in ("", "x1.0.c.zz.exp", "x1.0.q.0123456789abcdef.exp", "x1.0.c.0123456789abcdef.EXP", "x" * 400):
        assert parse_tag(bad) is None
        assert tagged_nonce("n", bad) == "n"


# ---------------------------------------------------------------------------------------- counts
def _brute_delta(users):
    n = np.array([u[0] for u in users], float)
    s = np.array([u[1] for u in users], float)
    r = s.sum() / n.sum()
    k = len(users)
    cov = np.cov(np.vstack([s, n]), ddof=1)
    var = (cov[0, 0] - 2 * r * cov[0, 1] + r * r * cov[1, 1]) / (k * n.mean() ** 2)
    return r, var


def test_recorder_user_sums_give_the_delta_method_variance():
    rng = np.random.default_rng(1)
    rec = ArmRecorder()
    users = []
    key = ("e", 0, "control")
    for u in range(300):
        p = rng.beta(8, 2)  # correlated outcomes within a user
        n = int(rng.integers(1, 20))
        s = int(rng.binomial(n, p))
        users.append((n, s))
        h = user_hash(f"u{u}")
        outcomes = [True] * s + [False] * (n - s)
        rng.shuffle(outcomes)
        for ok in outcomes:
            rec.prediction(key, h, error=False, latency_seconds=0.001)
            rec.outcome(key, h, correct=bool(ok))
    r, var = delta_ratio(rec.table[key].sums["accuracy"])
    br, bvar = _brute_delta(users)
    assert r == pytest.approx(br)
    assert var == pytest.approx(max(bvar, ((sum(s for _, s in users) + 1) / (sum(n for n, _ in users) + 2))
                                    * (1 - (sum(s for _, s in users) + 1) / (sum(n for n, _ in users) + 2))
                                    / sum(n for n, _ in users)), rel=1e-9)
    assert bvar > 0.8 * var  # the clustered variance is what is used, not the (smaller) binomial one
    assert rec.table[key].labelled == sum(n for n, _ in users)


def _counts(pred, lab, corr, users=()):
    c = ArmCounts(predictions=pred, labelled=lab, correct=corr)
    c.sums["accuracy"] = UserSums(users=len(users) or 1, n=lab, s=corr, nn=lab, ss=corr, ns=corr)
    for u in users:
        c.user_sketch.add(u)
    return c


def test_accumulate_detects_resets_and_totals_only_grow():
    acc = Accumulator()
    k = ("e", 0, "control")
    accumulate(acc, "a", "i1", {k: _counts(10, 5, 4, ["x"])})
    accumulate(acc, "b", "j1", {k: _counts(7, 7, 7, ["y"])})
    accumulate(acc, "a", "i1", {k: _counts(30, 15, 12, ["x"])})
    assert acc.totals[k].predictions == 37 and acc.totals[k].labelled == 22
    # sidecar a restarts: new instance id, counts start again (even when a counter happens to be higher)
    assert accumulate(acc, "a", "i2", {k: _counts(40, 1, 1, ["z"])})
    assert acc.totals[k].predictions == 77 and acc.totals[k].labelled == 23
    # a restart without an instance change is detected by a counter going down
    assert accumulate(acc, "b", "j1", {k: _counts(2, 2, 2)})
    assert acc.totals[k].predictions == 79
    assert not accumulate(acc, "b", "j1", {k: _counts(2, 2, 2)})  # no news: no increase
    assert acc.totals[k].predictions == 79
    assert round(acc.totals[k].user_sketch.estimate()) == 3
    again = Accumulator.from_dict(acc.to_dict())  # what the operator persists survives a restart
    assert again.totals[k].predictions == 79 and again.sources["a"].instance == "i2"
    assert again.totals[k].user_sketch == acc.totals[k].user_sketch
    merged = merge_tables([{k: _counts(1, 1, 1)}, {k: _counts(2, 1, 0)}])
    assert merged[k].predictions == 3 and merged[k].correct == 1


# ---------------------------------------------------------------------------------------- ramp
def test_ramp_steps_follow_after_hours_with_an_injected_clock():
    spec = {**SPEC, "ramping": {"strategy": "steps", "steps": [
        {"split": 0.1, "afterHours": 0}, {"split": 0.25, "afterHours": 24}, {"split": 0.5, "afterHours": 48}]}}
    assert ramp(spec, T0, T0).share == 0.1 and ramp(spec, T0, T0).phase == 1
    assert ramp(spec, T0, T0 + 23.9 * 3600).share == 0.1
    p = ramp(spec, T0, T0 + 24 * 3600)
    assert (p.share, p.phase, p.next_step_at) == (0.25, 2, T0 + 48 * 3600)
    assert ramp(spec, T0, T0 + 1000 * 3600).share == 0.5 and ramp(spec, T0, T0 + 1000 * 3600).next_step_at is None
    late = {**spec, "ramping": {"strategy": "steps", "steps": [{"split": 0.2, "afterHours": 2}]}}
    assert ramp(late, T0, T0).share == 0.0
    assert ramp(SPEC, T0, T0).share == 0.5


# ---------------------------------------------------------------------------------------- decisions
def _table(acc_c, acc_t, users_c, users_t, per_user=4, seed=0, err_c=0.0, err_t=0.0):
    rng = np.random.default_rng(seed)
    rec = ArmRecorder()
    for arm, acc, n_users, err in (("control", acc_c, users_c, err_c), ("treatment", acc_t, users_t, err_t)):
        for u in range(n_users):
            h = user_hash(f"{arm}{u}")
            for _ in range(per_user):
                rec.prediction(("x", 0, arm), h, error=bool(rng.random() < err), latency_seconds=0.002)
                rec.outcome(("x", 0, arm), h, correct=bool(rng.random() < acc))
    return rec.snapshot()


def _situation(now, analysis=None, holder=None):
    return Situation(now=now, mdep_found=True, mdep_versions=["v1", "v2"], mdep_generation=3, holder=holder,
                     analysis=analysis)


def test_true_effect_concludes_with_treatment_and_promotes():
    a = analyse(SPEC, _table(0.80, 0.92, 600, 600))
    assert a.significant and a.p_value < 0.05 and not a.srm
    out = evaluate("x", SPEC, {"startedAt": "2027-01-15T08:00:00Z", "phase": RUNNING}, _situation(T0, a))
    assert out.status["phase"] == CONCLUDED and out.status["winner"] == "treatment"
    assert out.promote == "v2" and out.status["promotion"]["modelDeploymentGeneration"] == 3
    assert out.route is None and out.status["currentSplit"] == 0.0
    assert "Promote v2" in out.status["recommendation"]
    assert {e[1] for e in out.events} >= {"Concluded", "Promoted"}
    # final phases never change again
    again = evaluate("x", SPEC, out.status, _situation(T0 + 10, None))
    assert again.status["phase"] == CONCLUDED and again.route is None


def test_no_effect_runs_then_completes_at_duration():
    a = analyse(SPEC, _table(0.85, 0.85, 300, 300, seed=3))
    out = evaluate("x", SPEC, {}, _situation(T0, a))
    assert out.status["phase"] == RUNNING and out.route["treatment_share"] == 0.5
    assert out.status["startedAt"] and out.events[0][:2] == ("Normal", "Started")
    later = evaluate("x", SPEC, out.status, _situation(T0 + 7 * 86400, a))
    assert later.status["phase"] == COMPLETED and later.status["winner"] == "none"
    assert later.status["startedAt"] == out.status["startedAt"]
    assert "No significant difference" in later.status["recommendation"] and later.route is None


def test_srm_blocks_the_winner():
    a = analyse(SPEC, _table(0.80, 0.92, 850, 1150, per_user=2))
    assert a.srm and a.significant
    out = evaluate("x", SPEC, {}, _situation(T0, a))
    assert out.status["phase"] == RUNNING and out.status["winner"] == "none" and out.promote is None
    cond = {c["type"]: c["status"] for c in out.status["conditions"]}
    assert cond["SampleRatioMismatch"] == "True"
    assert any(e[1] == "SampleRatioMismatch" for e in out.events)


def test_guardrail_breach_rolls_back():
    spec = {**SPEC, "guardrails": [{"metric": "errorRate", "maxDegradation": 0.01}]}
    a = analyse(spec, _table(0.85, 0.85, 300, 300, err_c=0.02, err_t=0.10))
    assert a.guardrails[0].result == "breached"
    out = evaluate("x", spec, {"phase": RUNNING, "startedAt": "2027-01-15T08:00:00Z"}, _situation(T0, a))
    assert out.status["phase"] == TERMINATED and out.route is None and out.status["currentSplit"] == 0.0
    assert ("Warning", "RolledBack") in {e[:2] for e in out.events}
    assert "Rolled back" in out.status["recommendation"]
    # without autoRollback: condition and Event, but it keeps running
    keep = evaluate("x", {**spec, "autoRollback": False}, {}, _situation(T0, a))
    assert keep.status["phase"] == RUNNING and ("Warning", "GuardrailBreached") in {e[:2] for e in keep.events}


def test_paused_sends_everyone_to_control_and_keeps_the_share():
    out = evaluate("x", {**SPEC, "paused": True}, {}, _situation(T0))
    assert out.status["phase"] == PAUSED and out.status["currentSplit"] == 0.0
    assert out.route["paused"] is True and out.route["treatment_share"] == 0.5


def test_conflict_and_missing_references_wait_with_a_condition():
    exps = [
        {"metadata": {"name": "b", "creationTimestamp": "2027-01-01T00:00:02Z"}, "spec": {"modelDeployment": "m"}},
        {"metadata": {"name": "a", "creationTimestamp": "2027-01-01T00:00:01Z"}, "spec": {"modelDeployment": "m"}},
    ]
    assert holder_of(exps, "m") == "a"
    exps[0]["status"] = {"phase": RUNNING}
    assert holder_of(exps, "m") == "b"  # a running one keeps its slot
    out = evaluate("a", SPEC, {}, _situation(T0, holder="b"))
    assert out.status["phase"] == PENDING and out.route is None
    cond = {c["type"]: c for c in out.status["conditions"]}
    assert cond["Conflict"]["status"] == "True" and "'b'" in cond["Conflict"]["message"]
    gone = evaluate("a", SPEC, {}, Situation(now=T0, mdep_found=False))
    assert gone.status["phase"] == PENDING and "'m' was not found" in gone.status["recommendation"]
    nov = evaluate("a", SPEC, {}, Situation(now=T0, mdep_found=True, mdep_versions=["v1"]))
    assert {c["type"]: c["reason"] for c in nov.status["conditions"]}["Running"] == "VersionNotFound"
    assert "v2" in nov.status["recommendation"]


def test_ramp_verdict_uses_only_the_final_allocation():
    spec = {**SPEC, "ramping": {"strategy": "steps", "steps": [{"split": 0.1, "afterHours": 0},
                                                               {"split": 0.5, "afterHours": 24}]}}
    strong = _table(0.70, 0.95, 900, 100)  # a huge difference, but seen in phase 1 (10%) only
    ramping = {(e, 1, a): c for (e, _p, a), c in strong.items()}
    a = analyse(spec, ramping)
    assert not a.final_phase_reached and a.p_value == 1.0
    out = evaluate("x", spec, {}, _situation(T0, a))
    assert out.status["phase"] == RUNNING and out.status["winner"] == "none"
    assert "only the final allocation" in out.status["recommendation"]
    # Simpson: identical models, base rate rising over time, treatment share rising with it -> no winner
    rng = np.random.default_rng(9)
    rec = ArmRecorder()
    for phase, share, base in ((1, 0.1, 0.70), (2, 0.5, 0.90)):
        for u in range(1500):
            arm = "treatment" if rng.random() < share else "control"
            h = user_hash(f"{phase}-{u}")
            rec.prediction(("x", phase, arm), h, error=False, latency_seconds=0.001)
            rec.outcome(("x", phase, arm), h, correct=bool(rng.random() < base))
    a = analyse(spec, rec.snapshot())
    assert a.final_phase_reached and not a.significant and not a.srm
    pooled_c = sum(c.correct for (e, p, arm), c in rec.table.items() if arm == "control") / sum(
        c.labelled for (e, p, arm), c in rec.table.items() if arm == "control")
    pooled_t = sum(c.correct for (e, p, arm), c in rec.table.items() if arm == "treatment") / sum(
        c.labelled for (e, p, arm), c in rec.table.items() if arm == "treatment")
    assert pooled_t - pooled_c > 0.04  # what pooling the phases would have "found"
