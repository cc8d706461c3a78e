"""Sticky salted assignment and ramp schedules (mlops.core.assignment), checked over 100,000 ids."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from mlops.core.assignment import (
    assign_variant,
    assignment_bucket,
    parse_ramping_strategy,
    ramp_share,
)

N_USERS = 100_000
USERS = [f"user-{i}" for i in range(N_USERS)]


def _buckets(salt: str) -> np.ndarray:
    return np.fromiter((assignment_bucket(salt, u) for u in USERS), dtype=float, count=N_USERS)


@pytest.fixture(scope="module")
def buckets_a() -> np.ndarray:
    return _buckets("exp-a")


def test_bucket_is_in_unit_interval_and_deterministic():
    b = assignment_bucket("exp", "alice")
    assert 0.0 <= b < 1.0
    assert assignment_bucket("exp", "alice") == b
    assert assignment_bucket("exp2", "alice") != b
    # the separator keeps ("ab", "c") and ("a", "bc") apart
    assert assignment_bucket("ab", "c") != assignment_bucket("a", "bc")


@pytest.mark.parametrize("share", [0.1, 0.3, 0.5])
def test_treatment_share_within_one_percent_over_100k(buckets_a, share):
    observed = float(np.mean(buckets_a < share))
    print(f"\ntreatment share over 100,000 ids at split {share}: {observed:.4f}")
    assert abs(observed - share) <= 0.01, observed


def test_buckets_are_uniform(buckets_a):
    from scipy import stats

    assert stats.kstest(buckets_a, "uniform").pvalue > 0.001


def test_assign_variant_matches_bucket(buckets_a):
    for i in range(0, N_USERS, 997):
        expected = "treatment" if buckets_a[i] < 0.3 else "control"
        assert assign_variant("exp-a", USERS[i], 0.3) == expected


def test_same_variant_in_a_fresh_process(buckets_a):
    sample = USERS[:2000]
    code = (
        "import json,sys\n"
        "from mlops.core.assignment import assign_variant\n"
        "users=json.load(sys.stdin)\n"
        "print(json.dumps([assign_variant('exp-a',u,0.5) for u in users]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(sample),
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"},
    )
    fresh = json.loads(out.stdout)
    here = ["treatment" if b < 0.5 else "control" for b in buckets_a[:2000]]
    assert fresh == here


def test_experiments_are_independent(buckets_a):
    buckets_b = _buckets("exp-b")
    in_a = buckets_a < 0.5
    in_b = buckets_b < 0.5
    p_a, p_b = in_a.mean(), in_b.mean()
    expected_agreement = p_a * p_b + (1 - p_a) * (1 - p_b)
    agreement = float(np.mean(in_a == in_b))
    print(f"\nagreement between two experiments at 50/50: {agreement:.4f} (independence predicts "
          f"{expected_agreement:.4f})")
    assert abs(agreement - expected_agreement) <= 0.01, (agreement, expected_agreement)
    assert abs(float(np.corrcoef(buckets_a, buckets_b)[0, 1])) < 0.02


def test_ramp_10_to_30_percent_is_monotone(buckets_a):
    at_10 = buckets_a < 0.10
    at_30 = buckets_a < 0.30
    assert at_10.sum() > 0
    assert np.all(at_30[at_10]), "a user in treatment at 10% left treatment at 30%"
    print(f"\nusers in treatment at 10%: {int(at_10.sum())}, of them still in treatment at 30%: "
          f"{int(at_30[at_10].sum())}")
    for i in np.flatnonzero(at_10)[:500]:
        assert assign_variant("exp-a", USERS[i], 0.10) == "treatment"
        assert assign_variant("exp-a", USERS[i], 0.30) == "treatment"


@pytest.mark.parametrize("share", [-0.1, 1.1, float("nan")])
def test_assign_variant_rejects_bad_share(share):
    with pytest.raises(ValueError):
        assign_variant("exp", "u", share)


def test_immediate_strategy_is_the_target():
    assert ramp_share("immediate", 0.3, started_at=1000.0, now=1000.0) == 0.3
    assert ramp_share(None, 0.3, started_at=None, now=0.0) == 0.3


def test_step_schedule():
    hour = 3600.0
    s = "steps:0.05,0.1,0.25,0.5@24h"
    t0 = 1_000_000.0
    assert ramp_share(s, 0.5, t0, t0) == 0.05
    assert ramp_share(s, 0.5, t0, t0 + 23.9 * hour) == 0.05
    assert ramp_share(s, 0.5, t0, t0 + 24 * hour) == 0.1
    assert ramp_share(s, 0.5, t0, t0 + 50 * hour) == 0.25
    assert ramp_share(s, 0.5, t0, t0 + 80 * hour) == 0.5
    assert ramp_share(s, 0.5, t0, t0 + 1000 * hour) == 0.5
    # capped at the target split
    assert ramp_share(s, 0.2, t0, t0 + 50 * hour) == 0.2
    assert ramp_share("gradual", 0.5, t0, t0) == 0.05
    # before start: elapsed counts as zero
    assert ramp_share(s, 0.5, None, t0) == 0.05
    assert ramp_share(s, 0.5, t0, t0 - 10) == 0.05


def test_linear_schedule_and_monotonicity():
    t0 = 0.0
    times = np.linspace(-3600, 200 * 3600, 400)
    for strategy in ("linear:48h", "steps:0.05,0.1,0.25,0.5@24h", "gradual", "linear:2d", "linear:30m"):
        shares = [ramp_share(strategy, 0.4, t0, t) for t in times]
        assert all(b >= a for a, b in zip(shares, shares[1:], strict=False)), strategy
        assert max(shares) == pytest.approx(0.4)
        assert min(shares) >= 0.0
    assert ramp_share("linear:48h", 0.4, 0.0, 24 * 3600) == pytest.approx(0.2)


@pytest.mark.parametrize(
    "bad",
    ["sometimes", "linear:", "linear:-3h", "linear:abc", "steps:0.1,0.2", "steps:@24h", "steps:0.5,0.1@1h",
     "steps:0.1,2@1h", "steps:a,b@1h"],
)
def test_bad_strategies_raise(bad):
    with pytest.raises(ValueError):
        parse_ramping_strategy(bad)
