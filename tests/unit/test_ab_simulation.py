"""Seeded simulations validating the A/B engine's statistics against its acceptance figures.

The heavy loops are vectorised over experiments with numpy using the same core functions the
verdict uses (``msprt_log_lambda``, ``proportion_difference_variance``); a subset of experiments
is replayed through ``decide`` look by look to prove the vectorised decision is the engine's.

Print the figures with:  python -m pytest -q -s tests/unit/test_ab_simulation.py
"""

from __future__ import annotations

import numpy as np

from mlops.core.ab_stats import (
    analyze_proportions,
    decide,
    msprt_half_width,
    msprt_log_lambda,
    proportion_difference_variance,
    required_sample_size,
    sequential_sample_size,
)

ALPHA = 0.05
MDE = 0.03


def _cumulative_successes(rng, n_experiments, p, looks, step):
    batches = rng.binomial(step, p, size=(n_experiments, looks))
    return np.cumsum(batches, axis=1)


def _first_rejection(sa, sb, n, tau):
    """Index of the first look whose always-valid p-value is <= alpha, or -1 (vectorised mSPRT)."""
    variance = proportion_difference_variance(sa, n, sb, n)
    theta = sb / n - sa / n
    log_lr = msprt_log_lambda(theta, variance, tau * tau)
    p_values = np.minimum.accumulate(np.minimum(1.0, np.exp(-np.maximum(log_lr, 0.0))), axis=1)
    rejected = p_values <= ALPHA
    first = np.where(rejected.any(axis=1), rejected.argmax(axis=1), -1)
    return first, theta


def _replay_with_decide(sa_row, sb_row, n, tau):
    prior = None
    for k in range(len(n)):
        v = decide(int(sa_row[k]), int(n[k]), int(sb_row[k]), int(n[k]), alpha=ALPHA, mde=MDE, tau=tau,
                   prior_p_value=prior)
        prior = v.sequential.p_value
        if v.statistically_significant:
            return k, v.winner
    return -1, None


def test_null_false_positive_rate_with_peeking_every_100():
    rng = np.random.default_rng(20240501)
    n_exp, step, max_n = 500, 100, 2000
    looks = max_n // step
    n = np.arange(1, looks + 1) * step
    sa = _cumulative_successes(rng, n_exp, 0.85, looks, step)
    sb = _cumulative_successes(rng, n_exp, 0.85, looks, step)
    first, _ = _first_rejection(sa, sb, n, MDE)
    fpr = float(np.mean(first >= 0))
    # same decisions through the engine's verdict, look by look, for a subset
    for i in list(np.flatnonzero(first >= 0)[:10]) + list(range(30)):
        k, _ = _replay_with_decide(sa[i], sb[i], n, MDE)
        assert k == first[i], (i, k, first[i])
    print(f"\nnull FPR (500 experiments, 0.85 vs 0.85, peek every 100 up to 2000/arm, alpha 0.05): {fpr:.3f}")
    assert fpr <= 0.06
    # the naive fixed-horizon z-test peeked the same way is what the original system did: far above alpha
    z_sig = np.zeros(n_exp, dtype=bool)
    for k in range(looks):
        p_a, p_b = sa[:, k] / n[k], sb[:, k] / n[k]
        pooled = (sa[:, k] + sb[:, k]) / (2 * n[k])
        z = (p_b - p_a) / np.sqrt(pooled * (1 - pooled) * 2 / n[k])
        z_sig |= np.abs(z) > 1.959964
    naive = float(np.mean(z_sig))
    print(f"naive z-test peeked the same way: {naive:.3f}")
    assert naive > 0.12


def test_power_at_the_engines_sequential_sample_size():
    plan = sequential_sample_size(0.85, MDE, alpha=ALPHA, power=0.8)
    fixed = required_sample_size(0.85, MDE, alpha=ALPHA, power=0.8)
    assert plan.n_control > fixed.n_control
    rng = np.random.default_rng(7)
    n_exp, step = 1000, 100
    looks = int(np.ceil(plan.n_control / step))
    n = np.minimum(np.arange(1, looks + 1) * step, plan.n_control)
    batches_a = rng.binomial(np.diff(n, prepend=0), 0.85, size=(n_exp, looks))
    batches_b = rng.binomial(np.diff(n, prepend=0), 0.88, size=(n_exp, looks))
    sa, sb = np.cumsum(batches_a, axis=1), np.cumsum(batches_b, axis=1)
    first, theta = _first_rejection(sa, sb, n, MDE)
    rows = np.arange(n_exp)
    b_wins = (first >= 0) & (theta[rows, np.maximum(first, 0)] > 0)
    power = float(np.mean(b_wins))
    wrong = float(np.mean((first >= 0) & ~b_wins))
    for i in range(20):
        k, winner = _replay_with_decide(sa[i], sb[i], n, MDE)
        assert k == first[i]
        assert (winner == "model_b") == bool(b_wins[i])
    print(f"\nsequential plan {plan.n_control}/arm (fixed-horizon {fixed.n_control}/arm); "
          f"simulated power 0.85 vs 0.88 peeking every 100: {power:.3f}; wrong-direction wins {wrong:.3f}")
    assert power >= 0.75
    assert wrong <= 0.01


def test_confidence_interval_coverage_over_1000_experiments():
    rng = np.random.default_rng(11)
    n_exp, n_arm = 1000, 2000
    sa = rng.binomial(n_arm, 0.85, size=n_exp)
    sb = rng.binomial(n_arm, 0.88, size=n_exp)
    covered = 0
    for a, b in zip(sa, sb, strict=True):
        t = analyze_proportions(int(a), n_arm, int(b), n_arm, alpha=0.05)
        covered += t.ci_low <= 0.03 <= t.ci_high
    coverage = covered / n_exp
    print(f"\nfixed-horizon 95% CI coverage of p_b - p_a (1000 experiments, 2000/arm): {coverage:.3f}")
    assert 0.93 <= coverage <= 0.97


def test_always_valid_interval_covers_at_every_look():
    rng = np.random.default_rng(12)
    n_exp, step, looks = 500, 100, 20
    n = np.arange(1, looks + 1) * step
    sa = _cumulative_successes(rng, n_exp, 0.85, looks, step)
    sb = _cumulative_successes(rng, n_exp, 0.88, looks, step)
    theta = sb / n - sa / n
    half = msprt_half_width(proportion_difference_variance(sa, n, sb, n), MDE**2, ALPHA)
    covered_always = np.all(np.abs(theta - 0.03) <= half, axis=1)
    rate = float(np.mean(covered_always))
    print(f"\nalways-valid 95% CI covering the truth at all 20 looks: {rate:.3f}")
    assert rate >= 0.94


def test_sample_ratio_mismatch_blocks_the_verdict():
    rng = np.random.default_rng(3)
    n_a, n_b = 4500, 5500  # 45/55 observed, configured 50/50, 10,000 samples
    sa = int(rng.binomial(n_a, 0.85))
    sb = int(rng.binomial(n_b, 0.95))  # a huge true effect: only the SRM stops the winner
    v = decide(sa, n_a, sb, n_b, alpha=ALPHA, mde=MDE, treatment_share=0.5)
    print(f"\n45/55 at 10,000 configured 50/50: SRM p={v.srm.p_value:.2g}, winner={v.winner}")
    assert v.srm.mismatch
    assert v.status == "sample_ratio_mismatch"
    assert v.winner is None
    assert v.statistically_significant  # the effect is there; SRM is what blocks it
