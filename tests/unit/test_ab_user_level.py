"""Seeded simulations: A/B analysis with users (the unit of randomisation) as the unit, ramps, SRM
under repeated looks and always-valid guardrails.

Users have their own accuracy (a beta random effect, intra-user correlation ``rho``), so a user's
predictions are correlated; assignment is sticky per user. The heavy loops are vectorised over
experiments with the engine's own functions (``ratio_variance``, ``proportion_difference_variance``,
``msprt_log_lambda``, ``srm_log_bayes_factor``); a replay through ``decide`` proves the vectorised
decision is the engine's.

Print the figures with:  python -m pytest -q -s tests/unit/test_ab_user_level.py
"""

from __future__ import annotations

import numpy as np
import pytest

from mlops.core import ab_stats
from mlops.core.ab_stats import (
    PhaseCounts,
    RatioSums,
    decide,
    msprt_log_lambda,
    proportion_difference_variance,
    ratio_variance,
    sequential_non_inferiority,
    sequential_srm,
)
from mlops.core.assignment import assignment_bucket, ramp_phase

ALPHA = 0.05
MDE = 0.03


def _user_rates(rng, shape, p, rho):
    """Per-user accuracies with mean ``p`` and intra-user correlation ``rho`` (beta random effect)."""
    k = (1 - rho) / rho
    return rng.beta(p * k, (1 - p) * k, size=shape)


def _arm_sums(rng, reps, looks, users_per_look, m, p, rho):
    """Cumulative per-look RatioSums arrays (units, n, s, nn, ss, ns), each of shape (reps, looks)."""
    rates = _user_rates(rng, (reps, looks, users_per_look), p, rho)
    s = rng.binomial(m, rates).astype(float)
    n = np.full_like(s, float(m))
    per_look = [n.sum(2), s.sum(2), (n * n).sum(2), (s * s).sum(2), (n * s).sum(2)]
    units = np.cumsum(np.full((reps, looks), users_per_look), axis=1)
    return (units, *[np.cumsum(x, axis=1) for x in per_look])


def _user_level_p(a, b, tau):
    """Always-valid p-values per look (running minimum), exactly as ``sequential_ratio`` computes them."""
    va, vb = ratio_variance(*a), ratio_variance(*b)
    floor = proportion_difference_variance(a[2], a[1], b[2], b[1])
    v = np.maximum(va + vb, floor)
    theta = b[2] / b[1] - a[2] / a[1]
    log_lr = msprt_log_lambda(theta, v, tau * tau)
    return np.minimum.accumulate(np.minimum(1.0, np.exp(-np.maximum(log_lr, 0.0))), axis=1), theta


def _prediction_level_p(a, b, tau):
    """What the engine did before: every prediction treated as independent."""
    v = proportion_difference_variance(a[2], a[1], b[2], b[1])
    theta = b[2] / b[1] - a[2] / a[1]
    log_lr = msprt_log_lambda(theta, v, tau * tau)
    return np.minimum.accumulate(np.minimum(1.0, np.exp(-np.maximum(log_lr, 0.0))), axis=1)


def _sums_at(arrays, rep, look):
    units, n, s, nn, ss, ns = (x[rep, look] for x in arrays)
    return RatioSums(int(units), float(n), float(s), float(nn), float(ss), float(ns))


@pytest.mark.parametrize("m", [10, 50])
def test_null_false_winner_rate_with_correlated_users_and_continuous_peeking(m):
    rng = np.random.default_rng(1000 + m)
    reps, looks, users = 400, 40, 25
    a = _arm_sums(rng, reps, looks, users, m, 0.85, 0.2)
    b = _arm_sums(rng, reps, looks, users, m, 0.85, 0.2)
    p_user, _ = _user_level_p(a, b, MDE)
    p_naive = _prediction_level_p(a, b, MDE)
    false_user = float((p_user <= ALPHA).any(axis=1).mean())
    false_naive = float((p_naive <= ALPHA).any(axis=1).mean())
    print(f"\nm={m} rho=0.2: false winners user-level {false_user:.3f}, prediction-level {false_naive:.3f}")
    assert false_naive > 0.2  # the defect this replaces
    assert false_user <= 0.05

    # the vectorised decision is the engine's: replay some experiments look by look through decide()
    for rep in range(8):
        prior = None
        for look in range(looks):
            v = decide(0, 0, 0, 0, alpha=ALPHA, mde=MDE, prior_p_value=prior,
                       sums_a=_sums_at(a, rep, look), sums_b=_sums_at(b, rep, look))
            prior = v.sequential.p_value
            assert v.sequential.p_value == pytest.approx(p_user[rep, look], rel=1e-9, abs=1e-12)


@pytest.mark.slow
def test_power_at_the_engines_own_user_level_sample_size():
    """True user-level effect +0.03 (0.80 -> 0.83), 10 predictions per user, rho 0.2: stop at the first
    look where the engine's planned sample size (inflated by the observed design effect) is reached."""
    rng = np.random.default_rng(7)
    reps, looks, users, m = 300, 30, 100, 10
    a = _arm_sums(rng, reps, looks, users, m, 0.80, 0.2)
    b = _arm_sums(rng, reps, looks, users, m, 0.83, 0.2)
    detected = 0
    reached = 0
    needed_seen = []
    for rep in range(reps):
        prior = None
        for look in range(looks):
            v = decide(0, 0, 0, 0, alpha=ALPHA, mde=MDE, prior_p_value=prior,
                       sums_a=_sums_at(a, rep, look), sums_b=_sums_at(b, rep, look))
            prior = v.sequential.p_value
            if v.winner == "model_b":
                detected += 1
                reached += 1
                break
            if v.more_samples_needed == 0:
                reached += 1
                needed_seen.append(v.samples_needed_per_variant)
                break
    power = detected / reps
    print(f"\npower {power:.3f}; plan reached in {reached}/{reps}; median planned n "
          f"{np.median(needed_seen) if needed_seen else 'n/a'} (binomial plan "
          f"{ab_stats.sequential_sample_size(0.8, MDE).n_control})")
    assert reached == reps  # the horizon is long enough for the plan
    assert power >= 0.75


def _ramp_experiment_batch(rng, reps, population, salt_base):
    """Gradual ramp (5%, 10%, 25%, then 50%) over 7 days with a base accuracy rising 0.75 -> 0.90,
    identical models; users persist across days. Returns per-look (phase sums, pooled sums)."""
    day = 86_400.0
    buckets = np.array([[assignment_bucket(f"{salt_base}-{r}", f"user-{u}") for u in range(population)]
                        for r in range(reps)])
    user_effect = rng.normal(0, 0.8, size=(reps, population))
    strategy = "gradual"
    looks_per_day = 4
    n_phase: dict[int, np.ndarray] = {}
    s_phase: dict[int, np.ndarray] = {}
    arm_phase: dict[int, np.ndarray] = {}
    n_all = {v: np.zeros((reps, population)) for v in ("a", "b")}
    s_all = {v: np.zeros((reps, population)) for v in ("a", "b")}
    looks = []
    for d in range(7):
        for q in range(looks_per_day):
            t = (d + q / looks_per_day) * day
            ph = ramp_phase(strategy, 0.5, 0.0, t)
            share = ph.share
            base = 0.75 + 0.15 * t / (7 * day)
            logit = np.log(base / (1 - base)) + user_effect
            prob = 1 / (1 + np.exp(-logit))
            active = rng.random((reps, population)) < 0.15
            m = np.where(active, rng.poisson(3, size=(reps, population)), 0)
            succ = rng.binomial(m, prob)
            treat = buckets < share
            n_phase.setdefault(ph.index, np.zeros((reps, population)))
            s_phase.setdefault(ph.index, np.zeros((reps, population)))
            n_phase[ph.index] += m
            s_phase[ph.index] += succ
            arm_phase[ph.index] = treat  # constant inside a phase
            n_all["b"] += np.where(treat, m, 0)
            s_all["b"] += np.where(treat, succ, 0)
            n_all["a"] += np.where(treat, 0, m)
            s_all["a"] += np.where(treat, 0, succ)
            looks.append(({k: (n_phase[k].copy(), s_phase[k].copy(), arm_phase[k]) for k in n_phase},
                          {v: (n_all[v].copy(), s_all[v].copy()) for v in n_all}))
    return looks


def _sums_from_users(n, s, mask):
    n_ = np.where(mask, n, 0.0)
    s_ = np.where(mask, s, 0.0)
    units = (n_ > 0).sum(axis=1)
    return units, n_.sum(1), s_.sum(1), (n_ * n_).sum(1), (s_ * s_).sum(1), (n_ * s_).sum(1)


@pytest.mark.slow
def test_gradual_ramp_with_a_trending_base_rate_declares_no_false_winner():
    rng = np.random.default_rng(99)
    reps, population = 300, 1000
    looks = _ramp_experiment_batch(rng, reps, population, "ramp")
    final = 4  # the target allocation of "gradual" at a 50% split
    p_final = np.ones(reps)
    p_pooled = np.ones(reps)
    srm_p = np.ones(reps)
    srm_prior: list = [None] * reps
    for phase_data, pooled in looks:
        # the engine's choice: the final allocation phase only, users as units
        if final in phase_data:
            n, s, treat = phase_data[final]
            a = _sums_from_users(n, s, ~treat)
            b = _sums_from_users(n, s, treat)
            if (a[0] >= 2).all() and (b[0] >= 2).all():
                p, _ = _user_level_p(tuple(x[:, None] for x in a), tuple(x[:, None] for x in b), MDE)
                p_final = np.minimum(p_final, p[:, 0])
        # the old behaviour: every phase pooled
        na, sa = pooled["a"]
        nb, sb = pooled["b"]
        pa = _sums_from_users(na, sa, np.ones_like(na, bool))
        pb = _sums_from_users(nb, sb, np.ones_like(nb, bool))
        p, _ = _user_level_p(tuple(x[:, None] for x in pa), tuple(x[:, None] for x in pb), MDE)
        p_pooled = np.minimum(p_pooled, p[:, 0])
        # SRM per phase against the phase's share, always valid over looks (first 60 experiments)
        for r in range(60):
            counts = []
            for k in range(final + 1):
                if k in phase_data:
                    n, _s, treat = phase_data[k]
                    exposed = n[r] > 0
                    counts.append(PhaseCounts(int((exposed & ~treat[r]).sum()), int((exposed & treat[r]).sum()),
                                              [0.05, 0.1, 0.25, 0.5, 0.5][k]))
            check, srm_prior[r] = sequential_srm(counts, alpha=ALPHA, prior_p_values=srm_prior[r])
            srm_p[r] = min(srm_p[r], check.p_value)
    false_final = float((p_final <= ALPHA).mean())
    false_pooled = float((p_pooled <= ALPHA).mean())
    srm_false = float((srm_p[:60] <= ALPHA).mean())
    print(f"\nramp: false winners final-phase {false_final:.3f}, pooled phases {false_pooled:.3f}; "
          f"SRM false alarms at alpha 0.05 {srm_false:.3f}")
    assert false_pooled > 0.3  # Simpson's paradox when phases are pooled
    assert false_final <= 0.05
    assert srm_false <= 0.05


def test_sequential_srm_stays_at_alpha_over_200_looks_and_finds_a_real_mismatch():
    rng = np.random.default_rng(5)
    reps, looks, step = 2000, 200, 50
    alpha = 0.05
    arms = rng.random((reps, looks * step)) < 0.5
    nb = np.cumsum(arms, axis=1)[:, step - 1::step]
    total = np.arange(1, looks + 1) * step
    na = total - nb
    log_bf = ab_stats.srm_log_bayes_factor(na, nb, 0.5)
    sequential_false = float((log_bf >= np.log(1 / alpha)).any(axis=1).mean())
    # the chi-square test repeated at every look, for comparison
    z = (nb - total * 0.5) / np.sqrt(total * 0.25)
    repeated_chi2 = float((np.abs(z) >= 1.959964).any(axis=1).mean())
    # a real mismatch: 47% instead of 50% of users in treatment
    arms_bad = rng.random((300, looks * step)) < 0.47
    nb_bad = np.cumsum(arms_bad, axis=1)[:, step - 1::step]
    found = float((ab_stats.srm_log_bayes_factor(total - nb_bad, nb_bad, 0.5) >= np.log(1 / 0.001)).any(axis=1).mean())
    print(f"\nSRM over {looks} looks: sequential {sequential_false:.4f}, repeated chi-square {repeated_chi2:.3f}; "
          f"47% vs 50% found at alpha 0.001 in {found:.3f}")
    assert repeated_chi2 > 0.2
    assert sequential_false <= alpha
    assert found >= 0.95
    # the engine's function gives the same answer as the vectorised form
    check, _ = sequential_srm([PhaseCounts(int(na[0, -1]), int(nb[0, -1]), 0.5)], alpha=alpha)
    assert check.p_value == pytest.approx(min(1.0, float(np.exp(-max(log_bf[0, -1], 0.0)))))


def test_guardrail_exactly_at_its_margin_is_passed_in_at_most_5_percent_under_peeking():
    """Latency worse by exactly the margin (5 ms), per-user latency sums, a look every 50 predictions."""
    rng = np.random.default_rng(11)
    reps, looks, users, m, margin = 400, 60, 10, 5, 5.0

    def arm(mean):
        per_user = rng.normal(mean, 20, size=(reps, looks, users))[..., None] + rng.normal(0, 30, (reps, looks, users, m))
        s = per_user.sum(-1)
        n = np.full_like(s, float(m))
        parts = [n.sum(2), s.sum(2), (n * n).sum(2), (s * s).sum(2), (n * s).sum(2)]
        return (np.cumsum(np.full((reps, looks), users), axis=1), *[np.cumsum(x, axis=1) for x in parts])

    a, b = arm(100.0), arm(105.0)
    diff = b[2] / b[1] - a[2] / a[1]
    var = ratio_variance(*a) + ratio_variance(*b)
    upper = np.minimum.accumulate(diff + ab_stats.msprt_half_width(var, margin * margin, ALPHA), axis=1)
    rate = float((upper < margin).any(axis=1).mean())
    fixed_upper = diff + 1.6448536 * np.sqrt(var)
    rate_fixed = float((fixed_upper < margin).any(axis=1).mean())
    print(f"\nguardrail at its margin passed: always-valid {rate:.3f}, fixed-horizon repeated {rate_fixed:.3f}")
    assert rate_fixed > 0.08
    assert rate <= 0.05
    # the vectorised bound is the engine's: replay through sequential_non_inferiority
    for rep in range(5):
        bound = None
        for look in range(looks):
            sa, sb = _sums_at(a, rep, look), _sums_at(b, rep, look)
            g = sequential_non_inferiority("latency", sb.ratio - sa.ratio,
                                           ab_stats.user_level_variance(sa, sb, proportion=False), margin,
                                           lower_is_better=True, alpha=ALPHA, prior_bound=bound)
            bound = g.bound
            assert bound == pytest.approx(upper[rep, look], rel=1e-9)
            assert g.passed == bool(upper[rep, look] < margin)


def test_ratio_sums_are_additive_and_match_the_delta_method_on_raw_users():
    rng = np.random.default_rng(3)
    n = rng.integers(1, 20, size=500)
    s = rng.binomial(n, 0.7)
    whole = RatioSums.from_units(n, s)
    parts = RatioSums.from_units(n[:200], s[:200]) + RatioSums.from_units(n[200:], s[200:])
    assert parts == whole
    # incremental updates (one outcome at a time, as the store does) reach the same sums
    inc = RatioSums()
    state: dict[int, tuple[float, float]] = {}
    for i in rng.permutation(np.repeat(np.arange(500), n)):
        k, hits = state.get(int(i), (0.0, 0.0))
        hit = 1.0 if hits < s[i] else 0.0
        inc = inc.updated(k, hits, 1.0, hit)
        state[int(i)] = (k + 1, hits + hit)
    assert inc.units == whole.units and inc.n == whole.n and inc.s == whole.s
    assert inc.nn == pytest.approx(whole.nn) and inc.ss == pytest.approx(whole.ss)
    assert inc.ns == pytest.approx(whole.ns)
    # delta method = variance of the linearised per-user residuals
    r = s.sum() / n.sum()
    resid = (s - r * n) / n.mean()
    assert whole.ratio_variance() == pytest.approx(resid.var(ddof=1) / len(n), rel=1e-9)
    # buckets of users are units too (what a sidecar can export as plain counters)
    bucket = rng.integers(0, 64, size=500)
    by_n = {int(k): float(n[bucket == k].sum()) for k in range(64)}
    by_s = {int(k): float(s[bucket == k].sum()) for k in range(64)}
    bsums = ab_stats.ratio_sums_from_buckets(by_n, by_s)
    assert bsums.n == whole.n and bsums.units == 64
