"""Drift detection: the test registry, the family-wise correction, raw vs binned paths, concept drift."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mlops.core.drift import (
    DRIFT_TESTS,
    DriftTest,
    adjust_p_values,
    concept_drift_detected,
    concept_drift_test,
    detect_drift,
    detect_drift_from_counts,
    register_drift_test,
)
from mlops.core.profile import add_counts, build_profile


def _numeric(rng: np.random.Generator, n: int, cols: int, shift: dict[int, float] | None = None) -> pd.DataFrame:
    data = rng.normal(size=(n, cols))
    for i, s in (shift or {}).items():
        data[:, i] += s
    return pd.DataFrame(data, columns=[f"f{i}" for i in range(cols)])


def test_registry_holds_the_named_tests_with_their_applicability():
    assert {"ks", "wasserstein", "chisquare", "jensenshannon", "psi"} <= set(DRIFT_TESTS)
    assert DRIFT_TESTS["ks"].kinds == {"numeric"} and DRIFT_TESTS["ks"].uses_p_value
    assert DRIFT_TESTS["wasserstein"].kinds == {"numeric"} and DRIFT_TESTS["wasserstein"].default_threshold == 0.1
    assert DRIFT_TESTS["chisquare"].kinds == {"categorical"} and DRIFT_TESTS["chisquare"].uses_p_value
    assert DRIFT_TESTS["jensenshannon"].kinds == {"categorical"}
    assert DRIFT_TESTS["psi"].kinds == {"numeric", "categorical"}


def test_a_test_that_does_not_apply_to_a_column_is_refused():
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0], "c": ["a", "b", "a"]})
    with pytest.raises(ValueError, match="does not apply"):
        detect_drift(frame, frame, numeric_test="chisquare")
    with pytest.raises(ValueError, match="unknown drift test"):
        detect_drift(frame, frame, tests={"x": "nope"})


def test_a_registered_test_is_used_by_name():
    def mean_gap(ref, cur, col):
        mids = np.arange(ref.size)
        return float(abs(np.average(mids, weights=ref) - np.average(mids, weights=cur))), None

    register_drift_test(DriftTest("mean_gap_bins", frozenset({"numeric"}), False, 0.5, mean_gap), replace=True)
    try:
        rng = np.random.default_rng(0)
        ref, cur = _numeric(rng, 2000, 2), _numeric(rng, 2000, 2, {1: 1.0})
        report = detect_drift(ref, cur, tests={"f0": "mean_gap_bins", "f1": "mean_gap_bins"})
        assert report.drifted_features == ["f1"]
        assert report.columns["f1"].test == "mean_gap_bins" and report.columns["f1"].p_value is None
        with pytest.raises(ValueError, match="already registered"):
            register_drift_test(DRIFT_TESTS["ks"])
    finally:
        DRIFT_TESTS.pop("mean_gap_bins", None)


def test_holm_adjustment_matches_the_textbook_definition():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone: 0.02, 0.03, 0.06, 0.06
    assert adjust_p_values(p, "holm") == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert adjust_p_values(p, "bonferroni") == pytest.approx([0.04, 0.16, 0.12, 0.02])
    assert adjust_p_values(p, "none") == p
    with pytest.raises(ValueError):
        adjust_p_values(p, "fdr")


def test_report_fields_and_ks_p_values_equal_scipy():
    rng = np.random.default_rng(1)
    ref, cur = _numeric(rng, 500, 3), _numeric(rng, 400, 3, {2: 0.8})
    ref["c"] = rng.choice(list("abc"), 500)
    cur["c"] = rng.choice(list("abc"), 400)
    report = detect_drift(ref, cur)
    assert report.drifted_features == ["f2"] and report.feature_drift_detected
    assert report.drift_score == pytest.approx(1 / 4)
    col = report.columns["f1"]
    assert col.test == "ks" and col.kind == "numeric" and col.threshold == 0.05
    expected = stats.ks_2samp(ref["f1"], cur["f1"])
    assert col.statistic == pytest.approx(expected.statistic) and col.p_value == pytest.approx(expected.pvalue)
    assert report.columns["c"].test == "chisquare"
    d = report.to_dict()
    assert set(d["columns"]["f2"]) >= {"test", "statistic", "p_value", "threshold", "drifted", "kind"}


def _false_alarm_rate(n_cols: int, trials: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    ref_all = rng.normal(size=(trials, 1000, n_cols))
    cur_all = rng.normal(size=(trials, 1000, n_cols))
    names = [f"f{i}" for i in range(n_cols)]
    alarms = sum(
        detect_drift(pd.DataFrame(ref_all[t], columns=names), pd.DataFrame(cur_all[t], columns=names))
        .feature_drift_detected
        for t in range(trials)
    )
    return alarms / trials


@pytest.mark.parametrize("n_cols", [3, 20])
def test_same_distribution_raises_drift_in_at_most_alpha_of_trials(n_cols):
    rate = _false_alarm_rate(n_cols, trials=200, seed=100 + n_cols)
    assert rate <= 0.05


def test_without_correction_many_columns_raise_false_alarms():
    # The defect the correction removes: 20 uncorrected tests at 0.05 alarm on ~64% of batches.
    rng = np.random.default_rng(7)
    names = [f"f{i}" for i in range(20)]
    alarms = [
        detect_drift(pd.DataFrame(rng.normal(size=(300, 20)), columns=names),
                     pd.DataFrame(rng.normal(size=(300, 20)), columns=names), correction="none").feature_drift_detected
        for _ in range(50)
    ]
    assert sum(alarms) / 50 > 0.3


def test_half_sd_shift_in_one_of_ten_columns_is_detected():
    rng = np.random.default_rng(2024)
    trials = 200
    ref_all = rng.normal(size=(trials, 1000, 10))
    cur_all = rng.normal(size=(trials, 1000, 10))
    cur_all[:, :, 3] += 0.5
    names = [f"f{i}" for i in range(10)]
    hits = 0
    wrong = 0
    for t in range(trials):
        report = detect_drift(pd.DataFrame(ref_all[t], columns=names), pd.DataFrame(cur_all[t], columns=names))
        hits += "f3" in report.drifted_features
        wrong += len(set(report.drifted_features) - {"f3"})
    assert hits / trials >= 0.95
    assert wrong / trials <= 0.05


def test_binned_counts_path_detects_the_same_shift_and_sums_across_replicas():
    rng = np.random.default_rng(3)
    ref = _numeric(rng, 5000, 4)
    ref["c"] = rng.choice(list("abcd"), 5000)
    profile = build_profile(ref)
    cur = _numeric(rng, 2000, 4, {0: 0.5})
    cur["c"] = rng.choice(list("abcd"), 2000, p=[0.4, 0.3, 0.2, 0.1])
    replicas = [cur.iloc[:700], cur.iloc[700:]]
    summed = add_counts(profile.bin_counts(replicas[0]), profile.bin_counts(replicas[1]))
    from_counts = detect_drift_from_counts(profile, summed)
    from_profile = detect_drift(profile, cur)
    assert from_counts.to_dict() == from_profile.to_dict()
    assert from_counts.drifted_features == ["f0", "c"]


def test_binned_ks_is_conservative_relative_to_raw_ks():
    rng = np.random.default_rng(4)
    ref, cur = _numeric(rng, 3000, 5), _numeric(rng, 3000, 5, {0: 0.1, 1: 0.2})
    raw = detect_drift(ref, cur, correction="none")
    binned = detect_drift(build_profile(ref, n_bins=20), cur, correction="none")
    for name in ref.columns:
        assert binned.columns[name].statistic <= raw.columns[name].statistic + 1e-12


@pytest.mark.parametrize("test", ["psi", "wasserstein"])
def test_distance_tests_compare_with_thresholds_and_have_no_p_value(test):
    rng = np.random.default_rng(5)
    ref, cur = _numeric(rng, 4000, 2), _numeric(rng, 4000, 2, {1: 1.0})
    report = detect_drift(ref, cur, numeric_test=test)
    assert report.drifted_features == ["f1"]
    # the distance is the effect size; the KS gate's p-value (Holm-corrected) must also reject
    assert report.columns["f0"].distance and report.columns["f0"].threshold == 0.1
    assert report.columns["f1"].adjusted_p_value <= 0.05
    report = detect_drift(ref, cur, numeric_test=test, thresholds={"f1": 50.0})
    assert report.drifted_features == []


def test_jensenshannon_on_categories_matches_scipy_and_flags_new_categories():
    ref = pd.DataFrame({"c": ["a"] * 50 + ["b"] * 50})
    cur = pd.DataFrame({"c": ["a"] * 40 + ["b"] * 40 + ["new"] * 20})
    report = detect_drift(ref, cur, categorical_test="jensenshannon")
    from scipy.spatial.distance import jensenshannon

    assert report.columns["c"].statistic == pytest.approx(jensenshannon([0.5, 0.5, 0.0], [0.4, 0.4, 0.2]))
    assert report.feature_drift_detected


def test_missing_reference_columns_are_an_error_and_empty_columns_are_skipped():
    ref = pd.DataFrame({"x": np.arange(100.0), "y": np.arange(100.0)})
    with pytest.raises(ValueError, match="lacks reference columns"):
        detect_drift(ref, ref[["x"]])
    report = detect_drift(ref, pd.DataFrame({"x": np.arange(50.0), "y": [np.nan] * 50}))
    assert report.skipped == ["y"] and list(report.columns) == ["x"]


def test_concept_drift_is_judged_against_the_measured_baseline():
    # 0.80 on 1,000 rows is a real drop from a measured 0.90 baseline ...
    assert concept_drift_detected(0.90, 0.80, 1000)
    # ... but not from a measured 0.81 baseline, and not on 10 rows.
    assert not concept_drift_detected(0.81, 0.80, 1000)
    assert not concept_drift_detected(0.90, 0.80, 10)
    assert not concept_drift_detected(0.90, 0.95, 1000)
    # min_drop tolerates small drops; baseline_n accounts for the baseline's own noise.
    assert not concept_drift_detected(0.90, 0.88, 5000, min_drop=0.02)
    result = concept_drift_test(0.90, 0.87, 2000, baseline_n=200)
    exact = concept_drift_test(0.90, 0.87, 2000)
    assert result.p_value > exact.p_value
    assert not concept_drift_detected(0.9, 0.0, 0)


@pytest.mark.parametrize("baseline", [0.6, 0.85, 0.97])
def test_concept_drift_false_alarm_rate_is_at_most_alpha(baseline):
    # Exact size of the test: the probability, under no drift, of every outcome that raises it.
    n = 500
    k = np.arange(n + 1)
    rejects = np.array([concept_drift_detected(baseline, x / n, n) for x in k])
    size = stats.binom.pmf(k[rejects], n, baseline).sum()
    assert 0.0 < size <= 0.05
