"""A/B statistics over counts and sums: fixed-horizon tests, an always-valid sequential test,
sample sizes, the sample-ratio-mismatch check, guardrails and the verdict that combines them.

Why it exists: the operator analyses counters merged from many sidecars, the manager analyses its
SQLite counters, and the CLI analyses numbers typed by a user; all three must reach the same
verdict, so the statistics are pure functions of counts, sums and sums of squares (O(1), never a
scan of outcome rows).

Design choices (see docs/ab-testing.md):

* **Fixed-horizon** results (reported beside the decision): pooled two-proportion z-test, the
  **unpooled** Wald interval for ``p_b - p_a``, relative lift and Cohen's h; Welch's t-test and
  interval for continuous metrics. They are valid only when looked at once, at a planned n.
* **Decision** by a mixture sequential probability ratio test (mSPRT, Johari et al. 2017, the
  "always-valid inference" used by Optimizely): with a normal mixing distribution of variance
  ``tau**2`` over the difference, ``Lambda_n = sqrt(V/(V+tau2)) * exp(theta**2 tau2 / (2 V (V+tau2)))``
  where ``theta`` is the observed difference and ``V`` its variance. ``p_n = min(p_{n-1}, 1/Lambda_n)``
  is an always-valid p-value: looking after every batch and stopping at the first ``p <= alpha``
  keeps the false-positive rate at ``alpha``. ``tau`` defaults to the minimum detectable effect,
  which is close to the value that minimises the sample size needed at that effect.
* **Sample size for the sequential design**: the smallest n at which, looking only once at n, the
  mSPRT boundary is crossed with probability ``power`` when the true difference is the MDE. Looks
  before n only add rejections, so the power with continuous monitoring is at least that. It is
  about twice the fixed-horizon n (0.85 vs 0.88, alpha 0.05, power 0.8: 3,950 vs 2,036 per arm),
  the price of being allowed to peek.
* **Sample-ratio mismatch**: chi-square goodness of fit of the arm sizes against the configured
  split, at ``alpha=0.001``; a failure blocks the verdict.
* **Guardrails** are one-sided non-inferiority tests (treatment not worse than control by more than
  a margin); secondary metrics are corrected with Holm's step-down method.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import stats


def _plain(value: Any) -> Any:
    """numpy scalars/arrays and tuples -> JSON-serialisable Python values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        value = float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class _ToDict:
    def to_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))  # type: ignore[call-overload]


def _check_counts(successes: float, n: float, name: str) -> None:
    if n < 0 or successes < 0:
        raise ValueError(f"{name}: counts must be non-negative")
    if successes > n:
        raise ValueError(f"{name}: successes ({successes}) exceed total ({n})")


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")


# --------------------------------------------------------------------------- fixed horizon


@dataclass(frozen=True)
class ProportionTest(_ToDict):
    """Fixed-horizon comparison of two proportions; differences are B minus A."""

    n_a: int
    n_b: int
    rate_a: float | None
    rate_b: float | None
    difference: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float
    z: float | None
    relative_lift: float | None
    cohens_h: float | None
    alpha: float


def analyze_proportions(
    successes_a: int, n_a: int, successes_b: int, n_b: int, alpha: float = 0.05
) -> ProportionTest:
    """Pooled z-test of ``p_a == p_b`` and the unpooled (Wald) ``1-alpha`` interval for ``p_b - p_a``."""
    _check_alpha(alpha)
    _check_counts(successes_a, n_a, "control")
    _check_counts(successes_b, n_b, "treatment")
    if n_a == 0 or n_b == 0:
        rate_a = successes_a / n_a if n_a else None
        rate_b = successes_b / n_b if n_b else None
        return ProportionTest(int(n_a), int(n_b), rate_a, rate_b, None, None, None, 1.0, None, None, None, alpha)
    p_a, p_b = successes_a / n_a, successes_b / n_b
    diff = p_b - p_a
    pooled = (successes_a + successes_b) / (n_a + n_b)
    se_pooled = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if se_pooled > 0:
        z = diff / se_pooled
        p_value = float(2 * stats.norm.sf(abs(z)))
    else:
        z, p_value = 0.0, 1.0
    se = math.sqrt(p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b)
    half = float(stats.norm.ppf(1 - alpha / 2)) * se
    lift = diff / p_a if p_a > 0 else None
    h = 2 * math.asin(math.sqrt(p_b)) - 2 * math.asin(math.sqrt(p_a))
    return ProportionTest(
        int(n_a), int(n_b), p_a, p_b, diff, max(-1.0, diff - half), min(1.0, diff + half),
        p_value, z, lift, h, alpha,
    )


def moments_from_sums(n: int, total: float, total_sq: float) -> tuple[float, float]:
    """(mean, sample variance with ddof=1) from a count, a sum and a sum of squares."""
    if n <= 0:
        return math.nan, math.nan
    mean = total / n
    if n == 1:
        return mean, 0.0
    var = max(0.0, (total_sq - n * mean * mean) / (n - 1))
    return mean, var


@dataclass(frozen=True)
class MeanTest(_ToDict):
    """Welch's t-test of two means; differences are B minus A."""

    n_a: int
    n_b: int
    mean_a: float | None
    mean_b: float | None
    difference: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float
    t: float | None
    df: float | None
    relative_lift: float | None
    alpha: float


def welch_from_moments(
    n_a: int, mean_a: float, var_a: float, n_b: int, mean_b: float, var_b: float, alpha: float = 0.05
) -> MeanTest:
    """Welch's unequal-variance t-test and ``1-alpha`` interval for ``mean_b - mean_a``."""
    _check_alpha(alpha)
    if n_a < 2 or n_b < 2:
        ma = float(mean_a) if n_a else None
        mb = float(mean_b) if n_b else None
        return MeanTest(int(n_a), int(n_b), ma, mb, None, None, None, 1.0, None, None, None, alpha)
    diff = float(mean_b - mean_a)
    va, vb = var_a / n_a, var_b / n_b
    se = math.sqrt(va + vb)
    lift = diff / mean_a if mean_a else None
    if se == 0:
        p_value = 1.0 if diff == 0 else 0.0
        return MeanTest(int(n_a), int(n_b), float(mean_a), float(mean_b), diff, diff, diff, p_value, None, None, lift, alpha)
    result = stats.ttest_ind_from_stats(
        mean_b, math.sqrt(var_b), n_b, mean_a, math.sqrt(var_a), n_a, equal_var=False
    )
    df = (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))
    half = float(stats.t.ppf(1 - alpha / 2, df)) * se
    return MeanTest(
        int(n_a), int(n_b), float(mean_a), float(mean_b), diff, diff - half, diff + half,
        float(result.pvalue), float(result.statistic), float(df), lift, alpha,
    )


# --------------------------------------------------------------------------- sequential (mSPRT)


def msprt_log_lambda(theta: Any, variance: Any, tau2: float) -> Any:
    """log of the mSPRT mixture likelihood ratio for an estimate ``theta`` with variance ``variance``.

    Works elementwise on numpy arrays, so simulations stay vectorised.
    """
    theta = np.asarray(theta, dtype=float)
    v = np.asarray(variance, dtype=float)
    return 0.5 * np.log(v / (v + tau2)) + theta**2 * tau2 / (2 * v * (v + tau2))


def msprt_half_width(variance: Any, tau2: float, alpha: float) -> Any:
    """Half-width of the always-valid ``1-alpha`` confidence sequence around the estimate."""
    v = np.asarray(variance, dtype=float)
    return np.sqrt(v * (v + tau2) / tau2 * (np.log((v + tau2) / v) - 2 * math.log(alpha)))


def proportion_difference_variance(successes_a: Any, n_a: Any, successes_b: Any, n_b: Any) -> Any:
    """Variance of ``p_b - p_a`` with rates shrunk as (s+1)/(n+2), so it is never zero (elementwise)."""
    sa, na = np.asarray(successes_a, float), np.asarray(n_a, float)
    sb, nb = np.asarray(successes_b, float), np.asarray(n_b, float)
    ra, rb = (sa + 1) / (na + 2), (sb + 1) / (nb + 2)
    return ra * (1 - ra) / na + rb * (1 - rb) / nb


@dataclass(frozen=True)
class SequentialTest(_ToDict):
    """Always-valid result: reject when ``p_value <= alpha``, at any look."""

    estimate: float | None
    variance: float | None
    tau: float
    likelihood_ratio: float | None
    p_value: float
    ci_low: float | None
    ci_high: float | None
    alpha: float
    significant: bool
    method: str = "msprt"


def msprt(
    estimate: float, variance: float, tau: float, alpha: float = 0.05, prior_p_value: float | None = None
) -> SequentialTest:
    """mSPRT for a difference ``estimate`` with variance ``variance`` and mixing scale ``tau``.

    ``prior_p_value`` is the always-valid p-value of the previous look (the p-value never rises).
    """
    _check_alpha(alpha)
    if tau <= 0:
        raise ValueError("tau must be positive")
    prior = 1.0 if prior_p_value is None else min(1.0, max(0.0, float(prior_p_value)))
    if variance is None or not variance > 0 or estimate is None or not math.isfinite(estimate):
        return SequentialTest(None, None, tau, None, prior, None, None, alpha, prior <= alpha)
    tau2 = tau * tau
    log_lr = float(msprt_log_lambda(estimate, variance, tau2))
    p_value = min(prior, math.exp(-log_lr) if log_lr > 0 else 1.0)
    half = float(msprt_half_width(variance, tau2, alpha))
    return SequentialTest(
        float(estimate), float(variance), tau, math.exp(min(log_lr, 700.0)), p_value,
        estimate - half, estimate + half, alpha, p_value <= alpha,
    )


def sequential_proportions(
    successes_a: int, n_a: int, successes_b: int, n_b: int, alpha: float = 0.05, tau: float = 0.02,
    prior_p_value: float | None = None,
) -> SequentialTest:
    """mSPRT for ``p_b - p_a`` from counts (normal approximation)."""
    _check_counts(successes_a, n_a, "control")
    _check_counts(successes_b, n_b, "treatment")
    if n_a == 0 or n_b == 0:
        return msprt(math.nan, 0.0, tau, alpha, prior_p_value)
    estimate = successes_b / n_b - successes_a / n_a
    variance = float(proportion_difference_variance(successes_a, n_a, successes_b, n_b))
    return msprt(estimate, variance, tau, alpha, prior_p_value)


def sequential_means(
    n_a: int, mean_a: float, var_a: float, n_b: int, mean_b: float, var_b: float, tau: float,
    alpha: float = 0.05, prior_p_value: float | None = None,
) -> SequentialTest:
    """mSPRT for ``mean_b - mean_a`` from moments (normal approximation)."""
    if n_a < 2 or n_b < 2:
        return msprt(math.nan, 0.0, tau, alpha, prior_p_value)
    return msprt(mean_b - mean_a, var_a / n_a + var_b / n_b, tau, alpha, prior_p_value)


# --------------------------------------------------------------------------- sample sizes


@dataclass(frozen=True)
class SampleSizePlan(_ToDict):
    """Samples needed per arm; ``design`` is ``"msprt"`` (sequential) or ``"fixed"``."""

    n_control: int
    n_treatment: int
    n_total: int
    design: str
    p_baseline: float
    mde: float
    alpha: float
    power: float
    treatment_share: float


def _check_design(p_baseline: float, mde: float, alpha: float, power: float, share: float) -> float:
    _check_alpha(alpha)
    if not 0.0 < power < 1.0:
        raise ValueError(f"power must be in (0, 1), got {power!r}")
    if not 0.0 < p_baseline < 1.0:
        raise ValueError(f"p_baseline must be in (0, 1), got {p_baseline!r}")
    if mde == 0 or not 0.0 < p_baseline + mde < 1.0:
        raise ValueError(f"mde must be non-zero with p_baseline + mde in (0, 1), got {mde!r}")
    if not 0.0 < share < 1.0:
        raise ValueError(f"treatment_share must be in (0, 1), got {share!r}")
    return p_baseline + mde


def _plan(n_total: float, share: float, design: str, p: float, mde: float, alpha: float, power: float):
    n_t = math.ceil(n_total * share)
    n_c = math.ceil(n_total * (1 - share))
    return SampleSizePlan(n_c, n_t, n_c + n_t, design, p, mde, alpha, power, share)


def required_sample_size(
    p_baseline: float, mde: float, alpha: float = 0.05, power: float = 0.8, treatment_share: float = 0.5,
) -> SampleSizePlan:
    """Fixed-horizon two-sided two-proportion design (pooled null variance, unpooled alternative)."""
    p_b = _check_design(p_baseline, mde, alpha, power, treatment_share)
    s = treatment_share
    z_a = stats.norm.ppf(1 - alpha / 2)
    z_b = stats.norm.ppf(power)
    p_bar = (1 - s) * p_baseline + s * p_b
    null_sd = math.sqrt(p_bar * (1 - p_bar) * (1 / (1 - s) + 1 / s))
    alt_sd = math.sqrt(p_baseline * (1 - p_baseline) / (1 - s) + p_b * (1 - p_b) / s)
    n_total = ((z_a * null_sd + z_b * alt_sd) / mde) ** 2
    return _plan(n_total, s, "fixed", p_baseline, mde, alpha, power)


def sequential_sample_size(
    p_baseline: float, mde: float, alpha: float = 0.05, power: float = 0.8, treatment_share: float = 0.5,
    tau: float | None = None,
) -> SampleSizePlan:
    """Samples at which the mSPRT detects ``mde`` with probability >= ``power`` (see module docstring)."""
    p_b = _check_design(p_baseline, mde, alpha, power, treatment_share)
    s = treatment_share
    tau2 = (tau if tau is not None else abs(mde)) ** 2
    unit_var = p_baseline * (1 - p_baseline) / (1 - s) + p_b * (1 - p_b) / s
    z_b = stats.norm.ppf(power)
    effect = abs(mde)

    def enough(n_total: float) -> bool:
        v = unit_var / n_total
        return effect - float(msprt_half_width(v, tau2, alpha)) >= z_b * math.sqrt(v)

    lo, hi = 2.0, 64.0
    while not enough(hi):
        lo, hi = hi, hi * 2
        if hi > 1e12:
            raise ValueError("effect too small for any practical sample size")
    while hi - lo > 1.0:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if enough(mid) else (mid, hi)
    return _plan(hi, s, "msprt", p_baseline, mde, alpha, power)


# --------------------------------------------------------------------------- SRM, guardrails, multiplicity


@dataclass(frozen=True)
class SRMCheck(_ToDict):
    """Sample-ratio mismatch: ``mismatch`` is True when the arm sizes contradict the split."""

    n_a: int
    n_b: int
    expected_share_b: float
    observed_share_b: float | None
    chi2: float
    p_value: float
    alpha: float
    mismatch: bool


def srm_check(n_a: int, n_b: int, expected_share_b: float, alpha: float = 0.001) -> SRMCheck:
    """Chi-square goodness of fit of ``(n_a, n_b)`` against ``(1-share, share)``."""
    _check_alpha(alpha)
    if n_a < 0 or n_b < 0:
        raise ValueError("arm sizes must be non-negative")
    if not 0.0 <= expected_share_b <= 1.0:
        raise ValueError(f"expected_share_b must be in [0, 1], got {expected_share_b!r}")
    total = n_a + n_b
    if total == 0:
        return SRMCheck(0, 0, expected_share_b, None, 0.0, 1.0, alpha, False)
    if expected_share_b in (0.0, 1.0):
        # a degenerate split: any unit in the arm that should be empty is a mismatch
        impossible = n_b if expected_share_b == 0.0 else n_a
        return SRMCheck(int(n_a), int(n_b), expected_share_b, n_b / total, math.inf if impossible else 0.0,
                        0.0 if impossible else 1.0, alpha, bool(impossible))
    expected = [total * (1 - expected_share_b), total * expected_share_b]
    result = stats.chisquare([n_a, n_b], f_exp=expected)
    p_value = float(result.pvalue)
    return SRMCheck(int(n_a), int(n_b), expected_share_b, n_b / total, float(result.statistic), p_value,
                    alpha, p_value < alpha)


@dataclass(frozen=True)
class NonInferiorityTest(_ToDict):
    """One-sided test that treatment is not worse than control by more than ``margin``."""

    metric: str
    difference: float | None
    margin: float
    bound: float | None
    p_value: float
    alpha: float
    passed: bool
    lower_is_better: bool


def non_inferiority(
    metric: str, difference: float | None, standard_error: float | None, margin: float,
    lower_is_better: bool, alpha: float = 0.05,
) -> NonInferiorityTest:
    """H0: treatment worse by at least ``margin`` (``margin`` > 0, in the metric's units).

    For a lower-is-better metric (latency) "worse" means ``difference = b - a >= margin``; for a
    higher-is-better one (accuracy) ``difference <= -margin``. Passes when H0 is rejected at ``alpha``;
    with no data it does not pass.
    """
    _check_alpha(alpha)
    if margin < 0:
        raise ValueError("margin must be non-negative")
    if difference is None or standard_error is None or not math.isfinite(difference):
        return NonInferiorityTest(metric, None, margin, None, 1.0, alpha, False, lower_is_better)
    z_a = float(stats.norm.ppf(1 - alpha))
    if lower_is_better:
        bound = difference + z_a * standard_error
        stat = (margin - difference) / standard_error if standard_error > 0 else math.inf
        passed = bound < margin
    else:
        bound = difference - z_a * standard_error
        stat = (difference + margin) / standard_error if standard_error > 0 else math.inf
        passed = bound > -margin
    p_value = float(stats.norm.sf(stat)) if math.isfinite(stat) else 0.0
    return NonInferiorityTest(metric, float(difference), margin, float(bound), p_value, alpha, bool(passed),
                              lower_is_better)


def holm_adjust(p_values: Mapping[str, float]) -> dict[str, float]:
    """Holm step-down adjusted p-values (family-wise error control) keyed like the input."""
    items = sorted(p_values.items(), key=lambda kv: kv[1])
    m = len(items)
    adjusted: dict[str, float] = {}
    running = 0.0
    for rank, (key, p) in enumerate(items):
        running = max(running, min(1.0, (m - rank) * float(p)))
        adjusted[key] = running
    return adjusted


# --------------------------------------------------------------------------- verdict


VerdictStatus = Literal["winner", "no_winner", "inconclusive", "sample_ratio_mismatch", "guardrail_failed"]


@dataclass(frozen=True)
class Verdict(_ToDict):
    """The decision for the primary metric and everything it was based on."""

    status: VerdictStatus
    winner: Literal["model_a", "model_b"] | None
    recommendation: str
    statistically_significant: bool
    practically_significant: bool
    samples_needed_per_variant: int
    more_samples_needed: int
    fixed_horizon: ProportionTest
    sequential: SequentialTest
    srm: SRMCheck
    plan: SampleSizePlan | None
    guardrails: list[NonInferiorityTest] = field(default_factory=list)


def decide(
    successes_a: int, n_a: int, successes_b: int, n_b: int, *,
    alpha: float = 0.05, power: float = 0.8, mde: float = 0.02, treatment_share: float = 0.5,
    min_samples_per_variant: int = 0, practical_threshold: float = 0.0, srm_alpha: float = 0.001,
    tau: float | None = None, prior_p_value: float | None = None,
    guardrails: Sequence[NonInferiorityTest] = (), metric: str = "accuracy",
    srm_counts: tuple[int, int] | None = None, srm_expected_share: float | None = None,
) -> Verdict:
    """Combine SRM, minimum samples, the always-valid test, practical significance and guardrails.

    Order: a sample-ratio mismatch blocks everything; below ``min_samples_per_variant`` the verdict is
    inconclusive; the mSPRT decides significance; a significant improvement smaller than
    ``practical_threshold`` (absolute) or failing a guardrail is not a winner; a significant
    degradation makes control the winner; no significance before the planned sample size is
    inconclusive ("need N more samples"), after it there is no winner.

    The SRM check runs on ``srm_counts`` (units of randomisation, e.g. distinct users per arm) when
    given, else on the analysed sample sizes, against ``srm_expected_share`` (default: the split).
    """
    _check_alpha(alpha)
    if mde <= 0:
        raise ValueError("mde must be positive")
    tau = tau if tau is not None else mde
    fixed = analyze_proportions(successes_a, n_a, successes_b, n_b, alpha)
    seq = sequential_proportions(successes_a, n_a, successes_b, n_b, alpha, tau, prior_p_value)
    srm_a, srm_b = srm_counts if srm_counts is not None else (n_a, n_b)
    expected = srm_expected_share if srm_expected_share is not None else treatment_share
    srm = srm_check(srm_a, srm_b, expected, srm_alpha)
    baseline = fixed.rate_a if fixed.rate_a is not None and 0.0 < fixed.rate_a < 1.0 else 0.5
    baseline = min(max(baseline, 0.01), 0.99)
    effect = mde if baseline + mde < 1.0 else -mde
    try:
        plan: SampleSizePlan | None = sequential_sample_size(baseline, effect, alpha, power, treatment_share, tau)
    except ValueError:
        plan = None
    need_c = max(min_samples_per_variant, plan.n_control if plan else 0)
    need_t = max(min_samples_per_variant, plan.n_treatment if plan else 0)
    more = max(0, need_c - n_a, need_t - n_b)
    needed = max(need_c, need_t)
    significant = bool(seq.significant)
    diff = fixed.difference or 0.0
    practical = significant and abs(diff) >= practical_threshold
    failed = [g for g in guardrails if not g.passed]
    name = metric

    def verdict(status, winner, text, *, sig=significant, prac=practical):
        return Verdict(status, winner, text, sig, prac, needed, more, fixed, seq, srm, plan, list(guardrails))

    if srm.mismatch:
        return verdict(
            "sample_ratio_mismatch", None,
            f"Sample ratio mismatch: observed treatment share {srm.observed_share_b:.3f} vs expected "
            f"{expected:.3f} (chi-square p={srm.p_value:.2g}); assignment or logging is broken, "
            "so no verdict is given until it is fixed.",
        )
    plan_text = (f"planned {need_c} control / {need_t} treatment to detect {mde:g} at power {power:g}"
                 if plan else f"minimum {min_samples_per_variant}")
    if n_a < min_samples_per_variant or n_b < min_samples_per_variant:
        return verdict(
            "inconclusive", None,
            f"Inconclusive: need {more} more samples per variant (have {n_a} control, {n_b} treatment; "
            f"minimum {min_samples_per_variant}, {plan_text}).",
            sig=False, prac=False,
        )
    if significant and diff > 0:
        if not practical:
            return verdict(
                "no_winner", None,
                f"Treatment is significantly better on {name} (always-valid p={seq.p_value:.3g}) but the "
                f"difference {diff:+.4f} is below the practical threshold {practical_threshold}; keep control.",
            )
        if failed:
            names = ", ".join(g.metric for g in failed)
            return verdict(
                "guardrail_failed", None,
                f"Treatment is better on {name} ({diff:+.4f}, always-valid p={seq.p_value:.3g}) but fails "
                f"the guardrail(s) {names}; do not promote.",
            )
        level = f"{100 * (1 - alpha):g}%"
        return verdict(
            "winner", "model_b",
            f"Promote treatment (model B): {name} {diff:+.4f} (always-valid p={seq.p_value:.3g}, "
            f"always-valid {level} CI {seq.ci_low:+.4f} to {seq.ci_high:+.4f}).",
        )
    if significant and diff < 0:
        return verdict(
            "winner", "model_a",
            f"Keep control (model A): treatment is worse on {name} by {-diff:.4f} "
            f"(always-valid p={seq.p_value:.3g}); roll the treatment back.",
            prac=abs(diff) >= practical_threshold,
        )
    if more > 0:
        return verdict(
            "inconclusive", None,
            f"Inconclusive: need {more} more samples per variant ({plan_text}); no significant "
            f"difference yet (always-valid p={seq.p_value:.3g}).",
        )
    return verdict(
        "no_winner", None,
        f"No significant difference on {name} after the planned {needed} samples per variant "
        f"(always-valid p={seq.p_value:.3g}); keep control.",
    )
