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
  about twice the fixed-horizon n (0.85 vs 0.88, alpha 0.05, power 0.8: 3,940 vs 2,036 per arm),
  the price of being allowed to peek.
* **Units of analysis are users** (the unit of randomisation): outcomes of one user are correlated,
  so a metric is a ratio of per-user sums (``sum s_i / sum n_i``) whose variance comes from the delta
  method (Deng, Knoblich & Lu 2018) over :class:`RatioSums`, six plain additive counters per arm
  (units, sum n, sum s, sum n^2, sum s^2, sum n*s). Counters of disjoint sets of units add, so
  replicas and restarts merge by addition. A sidecar that cannot see a user's whole history can
  export per-*bucket* counters (users hashed into buckets; :func:`ratio_sums_from_buckets`): buckets
  of users are independent clusters too, so the same formula applies with buckets as units.
* **Sample-ratio mismatch**: an always-valid test (a beta-binomial mixture likelihood ratio, as in
  Lindon & Malek 2020) of the units per arm against the split, at ``alpha=0.001`` over *all* looks
  (Ville's inequality), per allocation phase with Bonferroni across phases; a failure blocks the
  verdict. The fixed-horizon chi-square p-value is reported beside it.
* **Guardrails** are one-sided non-inferiority tests (treatment not worse than control by more than
  a margin): :func:`sequential_non_inferiority` passes once the always-valid confidence sequence
  excludes the margin (running intersection over looks), so peeking does not inflate the chance of
  passing a guardrail that is exactly at its margin. Secondary metrics are corrected with Holm's
  step-down method.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
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


# --------------------------------------------------------------------------- user-level (delta method)


@dataclass(frozen=True)
class RatioSums(_ToDict):
    """Additive per-arm counters for a ratio metric ``sum(s_i) / sum(n_i)`` over independent units.

    A unit is a user (or a bucket of users); ``n_i`` is its denominator (labelled predictions,
    predictions) and ``s_i`` its numerator (correct predictions, summed latency). Sums over disjoint
    sets of units add: ``a + b`` is the sums of both sets (replicas that see disjoint users, or the
    same store before and after a restart).
    """

    units: int = 0
    n: float = 0.0
    s: float = 0.0
    nn: float = 0.0
    ss: float = 0.0
    ns: float = 0.0

    def __add__(self, other: RatioSums) -> RatioSums:
        return RatioSums(self.units + other.units, self.n + other.n, self.s + other.s, self.nn + other.nn,
                         self.ss + other.ss, self.ns + other.ns)

    @classmethod
    def from_units(cls, n: Any, s: Any) -> RatioSums:
        """Sums of per-unit arrays ``n`` and ``s`` (units with ``n == 0`` are left out)."""
        n_arr, s_arr = np.asarray(n, dtype=float), np.asarray(s, dtype=float)
        keep = n_arr > 0
        n_arr, s_arr = n_arr[keep], s_arr[keep]
        return cls(int(keep.sum()), float(n_arr.sum()), float(s_arr.sum()), float((n_arr * n_arr).sum()),
                   float((s_arr * s_arr).sum()), float((n_arr * s_arr).sum()))

    def updated(self, old_n: float, old_s: float, dn: float, ds: float) -> RatioSums:
        """The sums after one unit's ``(n, s)`` went from ``(old_n, old_s)`` to ``(old_n + dn, old_s + ds)``."""
        new_n, new_s = old_n + dn, old_s + ds
        new_unit = 1 if old_n <= 0 < new_n else 0
        return RatioSums(
            self.units + new_unit, self.n + dn, self.s + ds, self.nn + new_n * new_n - old_n * old_n,
            self.ss + new_s * new_s - old_s * old_s, self.ns + new_n * new_s - old_n * old_s,
        )

    @property
    def ratio(self) -> float | None:
        return self.s / self.n if self.n > 0 else None

    def ratio_variance(self) -> float | None:
        """Delta-method variance of ``s / n`` with units as the independent draws (None below 2 units)."""
        return ratio_variance(self.units, self.n, self.s, self.nn, self.ss, self.ns)


def ratio_variance(units: Any, n: Any, s: Any, nn: Any, ss: Any, ns: Any) -> Any:
    """Delta-method variance of ``s/n`` from the six sums (elementwise; NaN below 2 units).

    ``Var(R) = (var_s - 2 R cov_sn + R^2 var_n) / (U * mean_n^2)`` with sample (ddof=1) moments over
    the ``U`` units (Deng, Knoblich & Lu 2018). Returns a float, or None for a scalar with < 2 units.
    """
    scalar = np.ndim(units) == 0
    u = np.asarray(units, dtype=float)
    n_, s_ = np.asarray(n, dtype=float), np.asarray(s, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = s_ / n_
        mean_n = n_ / u
        var_n = (np.asarray(nn, float) - n_ * n_ / u) / (u - 1)
        var_s = (np.asarray(ss, float) - s_ * s_ / u) / (u - 1)
        cov = (np.asarray(ns, float) - n_ * s_ / u) / (u - 1)
        v = np.maximum(var_s - 2 * r * cov + r * r * var_n, 0.0) / (u * mean_n * mean_n)
    v = np.where(u >= 2, v, np.nan)
    if scalar:
        value = float(v)
        return value if math.isfinite(value) else None
    return v


def ratio_sums_from_buckets(n_by_bucket: Mapping[Any, float], s_by_bucket: Mapping[Any, float]) -> RatioSums:
    """:class:`RatioSums` with hash buckets of users as the units, from per-bucket counters.

    What a sidecar exports when it cannot keep each user's history: for each (arm, bucket) two plain
    counters ``n`` and ``s``, merged across replicas by addition; users are hashed into buckets
    independently of their arm, so buckets are independent clusters and the delta method applies.
    """
    keys = set(n_by_bucket) | set(s_by_bucket)
    return RatioSums.from_units([n_by_bucket.get(k, 0.0) for k in keys], [s_by_bucket.get(k, 0.0) for k in keys])


def _proportion_floor(sums_a: RatioSums, sums_b: RatioSums) -> float:
    return float(proportion_difference_variance(sums_a.s, sums_a.n, sums_b.s, sums_b.n))


def user_level_variance(sums_a: RatioSums, sums_b: RatioSums, *, proportion: bool = True) -> float | None:
    """Variance of ``ratio_b - ratio_a`` from the delta method over users.

    For proportions it is never below the binomial variance of the shrunk rates (a floor that keeps
    the variance positive when every user has the same rate, and that is conservative when outcomes
    within a user are negatively correlated).
    """
    va, vb = sums_a.ratio_variance(), sums_b.ratio_variance()
    if va is None or vb is None or sums_a.n <= 0 or sums_b.n <= 0:
        return None
    v = va + vb
    if proportion:
        v = max(v, _proportion_floor(sums_a, sums_b))
    return v if v > 0 else None


def design_effect(sums_a: RatioSums, sums_b: RatioSums) -> float:
    """How many times the user-level variance exceeds the variance that treats predictions as
    independent (>= 1; 1 when it cannot be estimated)."""
    v = user_level_variance(sums_a, sums_b)
    if v is None:
        return 1.0
    return max(1.0, v / _proportion_floor(sums_a, sums_b))


def sequential_ratio(
    sums_a: RatioSums, sums_b: RatioSums, alpha: float = 0.05, tau: float = 0.02,
    prior_p_value: float | None = None, *, proportion: bool = True,
) -> SequentialTest:
    """mSPRT for ``ratio_b - ratio_a`` with the user-level (delta-method) variance."""
    if sums_a.n <= 0 or sums_b.n <= 0:
        return msprt(math.nan, 0.0, tau, alpha, prior_p_value)
    v = user_level_variance(sums_a, sums_b, proportion=proportion)
    estimate = sums_b.s / sums_b.n - sums_a.s / sums_a.n
    return msprt(estimate, v if v is not None else 0.0, tau, alpha, prior_p_value)


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


def srm_log_bayes_factor(n_a: Any, n_b: Any, expected_share_b: float, concentration: float = 1000.0) -> Any:
    """log of the beta-binomial mixture likelihood ratio of arm counts against ``expected_share_b``.

    Under H0 (each unit lands in treatment with probability ``expected_share_b``, independently) it
    is a non-negative martingale in the number of units, so by Ville's inequality it exceeds
    ``1/alpha`` at *any* look with probability at most ``alpha``. The Beta prior has mean the expected
    share and ``concentration`` pseudo-units (1,000: prior sd of the share about 0.016 at 50/50).
    """
    from scipy.special import betaln

    na, nb = np.asarray(n_a, dtype=float), np.asarray(n_b, dtype=float)
    p = float(expected_share_b)
    a, b = concentration * p, concentration * (1 - p)
    return betaln(a + nb, b + na) - betaln(a, b) - nb * math.log(p) - na * math.log(1 - p)


def srm_power(n_units: int, expected_share_b: float, true_share_b: float, alpha: float = 0.001,
              concentration: float = 1000.0) -> float:
    """Probability that the sequential SRM test flags a mismatch when looked at once, after ``n_units``
    units of which each is in treatment with probability ``true_share_b`` (the test's null is
    ``expected_share_b``). Exact: the binomial probability of every treatment count whose mixture
    likelihood ratio reaches ``1/alpha``. Earlier looks only add crossings, so with a look at every
    collection the power is at least this."""
    _check_alpha(alpha)
    if not 0.0 < expected_share_b < 1.0 or not 0.0 <= true_share_b <= 1.0:
        raise ValueError("shares must be in (0, 1) (expected) and [0, 1] (true)")
    n = int(n_units)
    if n <= 0:
        return 0.0
    nb = np.arange(n + 1)
    crosses = srm_log_bayes_factor(n - nb, nb, expected_share_b, concentration) >= math.log(1.0 / alpha)
    return float(min(1.0, stats.binom.pmf(nb[crosses], n, true_share_b).sum()))


def srm_units_for_power(expected_share_b: float, true_share_b: float, alpha: float = 0.001, power: float = 0.99,
                        concentration: float = 1000.0, max_units: int = 10_000_000) -> int:
    """The smallest number of units (users) at which :func:`srm_power` reaches ``power``: how much
    traffic an experiment needs before a given mismatch (e.g. 45/55 under 50/50) is reliably flagged.
    Raises ValueError when the shares are equal or ``max_units`` is not enough."""
    if not 0.0 < power < 1.0:
        raise ValueError("power must be in (0, 1)")
    if abs(true_share_b - expected_share_b) < 1e-12:
        raise ValueError("no mismatch: the true share equals the expected share")

    def enough(n: int) -> bool:
        return srm_power(n, expected_share_b, true_share_b, alpha, concentration) >= power

    hi = 64
    while not enough(hi):
        if hi >= max_units:
            raise ValueError(f"more than {max_units} units needed")
        hi = min(hi * 2, max_units)
    lo = hi // 2
    # the power is monotone in n up to lattice wobbles of the discrete binomial (a few units)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if enough(mid):
            hi = mid
        else:
            lo = mid
    return hi


@dataclass(frozen=True)
class PhaseCounts:
    """Units per arm in one allocation phase and the treatment share the phase was run at."""

    n_a: int
    n_b: int
    expected_share_b: float | None  # None: the share varied inside the phase (not tested)


def sequential_srm(
    phases: Sequence[PhaseCounts], alpha: float = 0.001, prior_p_values: Sequence[float | None] | None = None,
) -> tuple[SRMCheck, list[float]]:
    """Always-valid SRM over allocation phases: each phase's units against that phase's share.

    Returns the check (its ``p_value`` is the always-valid one, Bonferroni across the tested phases,
    ``chi2`` the fixed-horizon statistic of the most mismatched phase) and the per-phase running
    p-values to pass back as ``prior_p_values`` at the next look.
    """
    _check_alpha(alpha)
    priors = list(prior_p_values or [])
    running: list[float] = []
    tested = 0
    worst: tuple[float, PhaseCounts | None, float] = (1.0, None, 0.0)
    total_a = total_b = 0
    for k, ph in enumerate(phases):
        total_a += ph.n_a
        total_b += ph.n_b
        prior = priors[k] if k < len(priors) and priors[k] is not None else 1.0
        if ph.expected_share_b is None or ph.n_a + ph.n_b == 0:
            running.append(float(prior))
            continue
        tested += 1
        if ph.expected_share_b in (0.0, 1.0):
            impossible = ph.n_b if ph.expected_share_b == 0.0 else ph.n_a
            p = 0.0 if impossible else 1.0
        else:
            log_bf = float(srm_log_bayes_factor(ph.n_a, ph.n_b, ph.expected_share_b))
            p = math.exp(-log_bf) if log_bf > 0 else 1.0
        p = min(float(prior), p)
        running.append(p)
        if worst[1] is None or p < worst[0]:
            fixed = srm_check(ph.n_a, ph.n_b, ph.expected_share_b, alpha)
            worst = (p, ph, fixed.chi2)
    p_all = min(1.0, worst[0] * max(1, tested))
    ph = worst[1]
    total = total_a + total_b
    if ph is None:
        share = next((x.expected_share_b for x in phases if x.expected_share_b is not None), 0.5)
        return SRMCheck(total_a, total_b, float(share), total_b / total if total else None, 0.0, 1.0, alpha,
                        False), running
    observed = ph.n_b / (ph.n_a + ph.n_b)
    return SRMCheck(int(ph.n_a), int(ph.n_b), float(ph.expected_share_b), observed, float(worst[2]), p_all, alpha,
                    p_all <= alpha), running


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
    method: str = "fixed"


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


def sequential_non_inferiority(
    metric: str, difference: float | None, variance: float | None, margin: float, lower_is_better: bool,
    alpha: float = 0.05, *, tau: float | None = None, prior_bound: float | None = None,
) -> NonInferiorityTest:
    """Always-valid non-inferiority: passes once the mSPRT confidence sequence excludes the margin.

    ``bound`` is the running best one-sided bound (the upper end of the confidence sequence for a
    lower-is-better metric, the lower end otherwise), intersected with ``prior_bound`` from earlier
    looks; since the sequence covers the true difference at every look with probability
    ``1 - alpha``, a guardrail exactly at its margin is passed with probability at most ``alpha``
    however often it is looked at. ``tau`` (mixing scale) defaults to the margin. ``p_value`` is the
    always-valid p-value of the look for H0: difference at the margin.
    """
    _check_alpha(alpha)
    if margin < 0:
        raise ValueError("margin must be non-negative")
    tau_ = float(tau) if tau is not None and tau > 0 else (margin if margin > 0 else 1.0)
    if difference is None or variance is None or not math.isfinite(difference) or not variance > 0:
        bound = prior_bound
        passed = bound is not None and (bound < margin if lower_is_better else bound > -margin)
        return NonInferiorityTest(metric, None, margin, bound, 1.0, alpha, bool(passed), lower_is_better,
                                  "always-valid")
    half = float(msprt_half_width(variance, tau_ * tau_, alpha))
    if lower_is_better:
        bound = difference + half
        if prior_bound is not None:
            bound = min(bound, float(prior_bound))
        passed = bound < margin
        gap = margin - difference
    else:
        bound = difference - half
        if prior_bound is not None:
            bound = max(bound, float(prior_bound))
        passed = bound > -margin
        gap = difference + margin
    log_lr = float(msprt_log_lambda(gap, variance, tau_ * tau_)) if gap > 0 else 0.0
    p_value = math.exp(-log_lr) if log_lr > 0 else 1.0
    return NonInferiorityTest(metric, float(difference), margin, float(bound), min(1.0, p_value), alpha,
                              bool(passed), lower_is_better, "always-valid")


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
    sums_a: RatioSums | None = None, sums_b: RatioSums | None = None, srm_result: SRMCheck | None = None,
) -> Verdict:
    """Combine SRM, minimum samples, the always-valid test, practical significance and guardrails.

    Order: a sample-ratio mismatch blocks everything; below ``min_samples_per_variant`` the verdict is
    inconclusive; the mSPRT decides significance; a significant improvement smaller than
    ``practical_threshold`` (absolute) or failing a guardrail is not a winner; a significant
    degradation makes control the winner; no significance before the planned sample size is
    inconclusive ("need N more samples"), after it there is no winner.

    The SRM check runs on ``srm_counts`` (units of randomisation, e.g. distinct users per arm) when
    given, else on the analysed sample sizes, against ``srm_expected_share`` (default: the split);
    ``srm_result`` (e.g. from :func:`sequential_srm`) replaces it.

    With ``sums_a``/``sums_b`` (per-user :class:`RatioSums`) the successes and totals are theirs, the
    variance is the user-level delta-method variance (for the always-valid test and the reported
    interval), and the planned sample size is inflated by the observed design effect.
    """
    _check_alpha(alpha)
    if mde <= 0:
        raise ValueError("mde must be positive")
    tau = tau if tau is not None else mde
    deff = 1.0
    if sums_a is not None and sums_b is not None:
        successes_a, n_a = int(round(sums_a.s)), int(round(sums_a.n))
        successes_b, n_b = int(round(sums_b.s)), int(round(sums_b.n))
        fixed = analyze_proportions(successes_a, n_a, successes_b, n_b, alpha)
        seq = sequential_ratio(sums_a, sums_b, alpha, tau, prior_p_value)
        v = user_level_variance(sums_a, sums_b)
        deff = design_effect(sums_a, sums_b)
        if v is not None and fixed.difference is not None:
            half = float(stats.norm.ppf(1 - alpha / 2)) * math.sqrt(v)
            z = fixed.difference / math.sqrt(v)
            fixed = replace(fixed, ci_low=max(-1.0, fixed.difference - half), ci_high=min(1.0, fixed.difference + half),
                            z=z, p_value=float(2 * stats.norm.sf(abs(z))))
    else:
        fixed = analyze_proportions(successes_a, n_a, successes_b, n_b, alpha)
        seq = sequential_proportions(successes_a, n_a, successes_b, n_b, alpha, tau, prior_p_value)
    srm_a, srm_b = srm_counts if srm_counts is not None else (n_a, n_b)
    expected = srm_expected_share if srm_expected_share is not None else treatment_share
    srm = srm_result if srm_result is not None else srm_check(srm_a, srm_b, expected, srm_alpha)
    expected = srm.expected_share_b
    baseline = fixed.rate_a if fixed.rate_a is not None and 0.0 < fixed.rate_a < 1.0 else 0.5
    baseline = min(max(baseline, 0.01), 0.99)
    effect = mde if baseline + mde < 1.0 else -mde
    try:
        plan: SampleSizePlan | None = sequential_sample_size(baseline, effect, alpha, power, treatment_share, tau)
    except ValueError:
        plan = None
    if plan is not None and deff > 1.0:
        plan = _plan(plan.n_total * deff, treatment_share, "msprt-users", baseline, effect, alpha, power)
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
            f"{expected:.3f} (p={srm.p_value:.2g}); assignment or logging is broken, "
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
