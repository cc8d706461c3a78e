"""Our per-column drift decisions agree with Evidently's when both run the same test on the same data.

Same test means: KS at the same threshold (p-values come from scipy on both sides), Jensen-Shannon
and normalised Wasserstein distances at the same thresholds, and no correction on our side (Evidently
has none). Our distance tests also need their significance gate to reject; on these sample sizes a
distance past 0.1 always comes with a significant gate, so the decisions still agree. Evidently's ``chisquare`` is a goodness-of-fit test and its PSI uses other bins, so
those are not "the same test" and are not compared here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlops.core.drift import detect_drift

pytest.importorskip("evidently")
from mlops.monitoring.evidently_report import run_evidently_drift  # noqa: E402

pytestmark = pytest.mark.slow


def _frames(seed: int, n_ref: int, n_cur: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Columns with no, small and large shifts so both decisions occur, including near the threshold."""
    rng = np.random.default_rng(seed)
    shifts = [0.0, 0.0, 0.05, 0.1, 0.15, 0.3, 1.0]
    ref = {f"n{i}": rng.normal(0, 1, n_ref) for i in range(len(shifts))}
    cur = {f"n{i}": rng.normal(s, 1, n_cur) for i, s in enumerate(shifts)}
    ref["skewed"] = rng.exponential(1.0, n_ref)
    cur["skewed"] = rng.exponential(1.2, n_cur)
    ref["ints"] = rng.integers(0, 50, n_ref)
    cur["ints"] = rng.integers(0, 52, n_cur)
    base = [0.4, 0.3, 0.2, 0.1]
    for j, p_cur in enumerate([base, [0.35, 0.3, 0.22, 0.13], [0.1, 0.2, 0.3, 0.4]]):
        ref[f"c{j}"] = rng.choice(list("abcd"), n_ref, p=base)
        cur[f"c{j}"] = rng.choice(list("abcd"), n_cur, p=p_cur)
    cur["c0"][:5] = "unseen"  # a category the reference never had
    return pd.DataFrame(ref), pd.DataFrame(cur)


@pytest.mark.parametrize(("seed", "n_ref", "n_cur"), [(1, 800, 500), (2, 3000, 2000)])
@pytest.mark.parametrize(("num_test", "cat_test"), [("ks", "jensenshannon"), ("wasserstein", "jensenshannon")])
def test_same_test_same_decisions(seed, n_ref, n_cur, num_test, cat_test):
    ref, cur = _frames(seed, n_ref, n_cur)
    ours = detect_drift(ref, cur, numeric_test=num_test, categorical_test=cat_test, correction="none", alpha=0.05)
    theirs = run_evidently_drift(ref, cur, num_method=num_test, cat_method=cat_test,
                                 num_threshold=0.05 if num_test == "ks" else 0.1, cat_threshold=0.1)
    assert set(theirs.columns) == set(ours.columns)
    for name, col in ours.columns.items():
        other = theirs.columns[name]
        assert other.method == col.test
        # distance tests: the distance is compared (our p-value there is the significance gate's)
        value = col.statistic if col.distance else col.p_value
        assert value == pytest.approx(other.score, rel=1e-6, abs=1e-12), name
        assert col.drifted == other.drifted, name
    # The data exercise both verdicts.
    assert 0 < len(ours.drifted_features) < len(ours.columns)
