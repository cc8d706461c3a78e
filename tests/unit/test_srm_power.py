"""The power of the sequential SRM test, computed exactly (``ab_stats.srm_power``), agrees with a
seeded simulation of the mixture likelihood ratio, and ``srm_units_for_power`` gives the traffic an
experiment (or a test) needs before a mismatch is reliably flagged."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mlops.core import ab_stats


@pytest.mark.parametrize("n", [1000, 2912, 5000])
def test_exact_power_matches_a_simulation(n):
    rng = np.random.default_rng(n)
    reps = 20_000
    true_share = 0.5 / 0.91  # 18% of control users lost by a logging bug: 45/55 under 50/50
    nb = rng.binomial(n, true_share, reps)
    simulated = float((ab_stats.srm_log_bayes_factor(n - nb, nb, 0.5) >= math.log(1000)).mean())
    exact = ab_stats.srm_power(n, 0.5, true_share, alpha=0.001)
    assert exact == pytest.approx(simulated, abs=4 * math.sqrt(max(simulated * (1 - simulated), 1e-4) / reps))


def test_power_under_the_null_is_at_most_alpha_and_grows_with_the_mismatch():
    for n in (100, 1000, 10_000):
        assert ab_stats.srm_power(n, 0.5, 0.5, alpha=0.001) <= 0.001
        assert ab_stats.srm_power(n, 0.1, 0.1, alpha=0.001) <= 0.001
    assert ab_stats.srm_power(3000, 0.5, 0.53) < ab_stats.srm_power(3000, 0.5, 0.55) < ab_stats.srm_power(3000, 0.5, 0.6)
    assert ab_stats.srm_power(0, 0.5, 0.55) == 0.0


def test_units_for_power_is_the_first_n_that_reaches_it():
    n = ab_stats.srm_units_for_power(0.5, 0.55, alpha=0.001, power=0.999)
    assert ab_stats.srm_power(n, 0.5, 0.55) >= 0.999
    assert ab_stats.srm_power(n - 1, 0.5, 0.55) < 0.999
    # the 3,200 users the integration test used to send (about 2,900 after the loss) had 80% power
    assert 0.75 < ab_stats.srm_power(2912, 0.5, 0.5 / 0.91) < 0.85
    assert 5000 < n < 6000
    with pytest.raises(ValueError, match="no mismatch"):
        ab_stats.srm_units_for_power(0.5, 0.5)
    with pytest.raises(ValueError, match="power"):
        ab_stats.srm_units_for_power(0.5, 0.55, power=1.0)
