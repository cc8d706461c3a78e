"""A/B statistics (mlops.core.ab_stats) against scipy references and textbook definitions."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from mlops.core.ab_stats import (
    analyze_proportions,
    decide,
    holm_adjust,
    moments_from_sums,
    msprt,
    non_inferiority,
    required_sample_size,
    sequential_proportions,
    sequential_sample_size,
    srm_check,
    welch_from_moments,
)


def test_proportion_test_matches_uncorrected_chi_square_and_unpooled_interval():
    sa, na, sb, nb = 830, 1000, 1790, 2000
    t = analyze_proportions(sa, na, sb, nb, alpha=0.05)
    table = [[sa, na - sa], [sb, nb - sb]]
    chi2 = stats.chi2_contingency(table, correction=False)
    assert t.p_value == pytest.approx(chi2.pvalue, rel=1e-9)
    p_a, p_b = sa / na, sb / nb
    se = math.sqrt(p_a * (1 - p_a) / na + p_b * (1 - p_b) / nb)
    z = stats.norm.ppf(0.975)
    assert t.difference == pytest.approx(p_b - p_a)
    assert (t.ci_low, t.ci_high) == pytest.approx((p_b - p_a - z * se, p_b - p_a + z * se))
    assert t.relative_lift == pytest.approx((p_b - p_a) / p_a)
    assert t.cohens_h == pytest.approx(2 * math.asin(math.sqrt(p_b)) - 2 * math.asin(math.sqrt(p_a)))
    # B minus A: a better treatment gives a positive difference (statsmodels flips this sign)
    assert t.difference > 0


def test_proportion_test_edge_cases():
    empty = analyze_proportions(0, 0, 5, 10)
    assert empty.p_value == 1.0 and empty.difference is None
    same = analyze_proportions(10, 10, 20, 20)
    assert same.p_value == 1.0 and same.difference == 0.0
    with pytest.raises(ValueError):
        analyze_proportions(11, 10, 1, 10)
    with pytest.raises(ValueError):
        analyze_proportions(1, 10, 1, 10, alpha=0)


def test_welch_from_moments_matches_scipy_on_raw_data():
    rng = np.random.default_rng(0)
    a = rng.normal(100, 10, size=300)
    b = rng.normal(103, 25, size=150)
    ma, va = moments_from_sums(len(a), a.sum(), (a**2).sum())
    mb, vb = moments_from_sums(len(b), b.sum(), (b**2).sum())
    assert va == pytest.approx(np.var(a, ddof=1))
    t = welch_from_moments(len(a), ma, va, len(b), mb, vb, alpha=0.05)
    ref = stats.ttest_ind(b, a, equal_var=False)
    assert t.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert t.t == pytest.approx(ref.statistic, rel=1e-9)
    ci = ref.confidence_interval(0.95)
    assert (t.ci_low, t.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-9)


def test_welch_needs_two_samples_per_arm():
    assert welch_from_moments(1, 1.0, 0.0, 5, 2.0, 1.0).p_value == 1.0


def test_srm_check_is_chi_square_goodness_of_fit():
    r = srm_check(4500, 5500, 0.5)
    ref = stats.chisquare([4500, 5500], [5000, 5000])
    assert r.p_value == pytest.approx(ref.pvalue)
    assert r.mismatch
    assert not srm_check(5020, 4980, 0.5).mismatch
    assert not srm_check(7000, 3000, 0.3).mismatch
    assert srm_check(5000, 5000, 0.3).mismatch


def test_fixed_horizon_sample_size_gives_nominal_power_by_simulation():
    plan = required_sample_size(0.85, 0.03, alpha=0.05, power=0.8)
    rng = np.random.default_rng(1)
    n = plan.n_control
    sa = rng.binomial(n, 0.85, size=20_000)
    sb = rng.binomial(n, 0.88, size=20_000)
    pooled = (sa + sb) / (2 * n)
    z = (sb - sa) / n / np.sqrt(pooled * (1 - pooled) * 2 / n)
    power = float(np.mean(z > stats.norm.ppf(0.975)))
    assert 0.78 <= power <= 0.82


def test_sequential_plan_is_larger_than_fixed_and_handles_splits():
    fixed = required_sample_size(0.85, 0.03)
    seq = sequential_sample_size(0.85, 0.03)
    assert seq.design == "msprt" and fixed.design == "fixed"
    assert 1.3 * fixed.n_control < seq.n_control < 3 * fixed.n_control
    uneven = sequential_sample_size(0.85, 0.03, treatment_share=0.3)
    assert uneven.n_treatment < uneven.n_control
    assert uneven.n_total > seq.n_total
    with pytest.raises(ValueError):
        sequential_sample_size(0.85, 0.2)
    with pytest.raises(ValueError):
        required_sample_size(0.85, 0.03, power=1.0)


def test_msprt_p_value_never_rises_and_matches_the_likelihood_ratio():
    first = sequential_proportions(850, 1000, 900, 1000, tau=0.03)
    assert first.p_value == pytest.approx(1 / first.likelihood_ratio)
    later = sequential_proportions(1700, 2000, 1710, 2000, tau=0.03, prior_p_value=first.p_value)
    assert later.p_value == first.p_value
    fresh = sequential_proportions(1700, 2000, 1710, 2000, tau=0.03)
    assert fresh.p_value > first.p_value
    assert fresh.ci_low < 0 < fresh.ci_high
    with pytest.raises(ValueError):
        msprt(0.1, 0.01, tau=0)


def test_non_inferiority_guardrail():
    ok = non_inferiority("latency", difference=1.0, standard_error=0.5, margin=5.0, lower_is_better=True)
    assert ok.passed and ok.p_value < 0.05
    bad = non_inferiority("latency", difference=6.0, standard_error=0.5, margin=5.0, lower_is_better=True)
    assert not bad.passed
    unsure = non_inferiority("latency", difference=4.5, standard_error=1.0, margin=5.0, lower_is_better=True)
    assert not unsure.passed
    acc = non_inferiority("accuracy", difference=-0.005, standard_error=0.002, margin=0.01, lower_is_better=False)
    assert acc.passed
    assert not non_inferiority("accuracy", None, None, 0.01, lower_is_better=False).passed


def test_holm_adjustment():
    adjusted = holm_adjust({"a": 0.01, "b": 0.04, "c": 0.03})
    assert adjusted == pytest.approx({"a": 0.03, "c": 0.06, "b": 0.06})
    assert holm_adjust({}) == {}


def test_verdict_inconclusive_below_minimum_samples_says_how_many_more():
    v = decide(120, 150, 140, 150, min_samples_per_variant=1000)
    assert v.status == "inconclusive" and v.winner is None
    assert v.more_samples_needed >= 850
    assert f"need {v.more_samples_needed} more samples" in v.recommendation
    assert not v.statistically_significant


def test_verdict_control_wins_on_a_significant_degradation():
    v = decide(4400, 5000, 4150, 5000, mde=0.03)
    assert v.winner == "model_a" and v.statistically_significant


def test_verdict_practical_threshold_and_guardrails_withhold_a_winner():
    base = decide(42_500, 50_000, 42_900, 50_000, mde=0.01)
    assert base.winner == "model_b"
    small = decide(42_500, 50_000, 42_900, 50_000, mde=0.01, practical_threshold=0.02)
    assert small.winner is None and small.status == "no_winner"
    guard = non_inferiority("latency", 20.0, 1.0, 5.0, lower_is_better=True)
    blocked = decide(42_500, 50_000, 42_900, 50_000, mde=0.01, guardrails=[guard])
    assert blocked.winner is None and blocked.status == "guardrail_failed"


def test_verdict_no_winner_after_the_planned_sample_size():
    v = decide(8500, 10_000, 8510, 10_000, mde=0.03)
    assert v.status == "no_winner" and v.more_samples_needed == 0


def test_to_dict_is_json_serialisable_with_numpy_inputs():
    v = decide(np.int64(850), np.int64(1000), np.int64(880), np.int64(1000), alpha=np.float64(0.05))
    text = json.dumps(v.to_dict())
    assert json.loads(text)["fixed_horizon"]["n_a"] == 1000
