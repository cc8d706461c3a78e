"""Data quality score: each component measured against the baseline profile, the documented formula."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlops.core.profile import build_profile
from mlops.core.quality import assess_data_quality, missing_value_rate


@pytest.fixture
def baseline() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"x": rng.uniform(0, 10, 2000), "y": rng.normal(size=2000),
                         "c": rng.choice(["a", "b"], 2000)})


def test_data_like_the_baseline_scores_one(baseline):
    profile = build_profile(baseline)
    report = assess_data_quality(profile, baseline.sample(300, random_state=1))
    assert report.score == 1.0
    assert (report.missing_rate, report.duplicate_rate, report.out_of_range_rate, report.wrong_type_rate) == (0, 0, 0, 0)


def test_each_component_is_counted_and_combined_by_the_documented_formula(baseline):
    profile = build_profile(baseline)
    batch = baseline.iloc[:100].copy()
    batch["x"] = batch["x"].astype(object)
    batch.loc[0:9, "y"] = np.nan  # 10 missing cells
    batch.loc[10:14, "x"] = 1e6  # 5 out of range
    batch.loc[15:16, "c"] = "zzz"  # 2 unseen categories
    batch.loc[17:19, "x"] = "not a number"  # 3 wrong type
    batch = pd.concat([batch, batch.iloc[20:30]], ignore_index=True)  # 10 duplicate rows
    report = assess_data_quality(profile, batch)
    n = 110
    assert report.n_rows == n
    assert report.missing_rate == pytest.approx(10 / (3 * n))
    assert report.duplicate_rate == pytest.approx(10 / n)
    assert report.columns["x"].wrong_type == 3 and report.columns["x"].out_of_range == 5
    assert report.columns["c"].out_of_range == 2
    valid = 3 * n - 10 - 3
    assert report.out_of_range_rate == pytest.approx(7 / valid)
    assert report.wrong_type_rate == pytest.approx(3 / (2 * n - 10))
    expected = (1 - 10 / (3 * n)) * (1 - 10 / n) * (1 - 7 / valid) * (1 - 3 / (2 * n - 10))
    assert report.score == pytest.approx(expected)
    assert 0.0 <= report.score < 0.95


def test_missing_values_are_judged_as_excess_over_the_baseline():
    rng = np.random.default_rng(2)
    base = pd.DataFrame({"x": rng.normal(size=1000)})
    base.loc[:99, "x"] = np.nan  # the baseline itself has 10% missing
    profile = build_profile(base)
    batch = pd.DataFrame({"x": rng.normal(size=200)})
    batch.loc[:19, "x"] = np.nan  # 10% missing: normal for this data
    report = assess_data_quality(profile, batch)
    assert report.missing_rate == pytest.approx(0.1) and report.baseline_missing_rate == pytest.approx(0.1)
    # (missing rows are equal to each other: the duplicate excess is compared at the batch's size)
    assert report.score == pytest.approx(1.0 - report.out_of_range_rate, abs=0.005)


def test_absent_columns_count_as_missing_and_extra_columns_are_listed(baseline):
    profile = build_profile(baseline)
    batch = baseline[["x", "c"]].iloc[:50].assign(extra=1)
    report = assess_data_quality(profile, batch)
    assert report.missing_columns == ["y"] and report.unexpected_columns == ["extra"]
    assert report.missing_rate == pytest.approx(1 / 3)
    assert report.score == pytest.approx(2 / 3)


def test_an_empty_batch_is_not_a_quality_problem(baseline):
    report = assess_data_quality(build_profile(baseline), baseline.iloc[:0])
    assert report.score == 1.0 and report.n_rows == 0


def test_missing_value_rate():
    frame = pd.DataFrame({"a": [1, None, 3, None], "b": ["x", "y", None, "z"]})
    assert missing_value_rate(frame) == pytest.approx(3 / 8)
    assert missing_value_rate(frame, ["a", "gone"]) == pytest.approx(6 / 8)
    assert missing_value_rate(frame.iloc[:0]) == 0.0
