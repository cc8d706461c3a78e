"""Baseline profiles: bins that catch every value, JSON round trips, exact merges across replicas."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mlops.core.profile import BaselineProfile, add_counts, build_profile, merge_profiles


def _frame(rng: np.random.Generator, n: int) -> pd.DataFrame:
    return pd.DataFrame({
        "x": rng.normal(10.0, 2.0, n),
        "k": rng.integers(0, 5, n),
        "c": rng.choice(["a", "b", "c"], n, p=[0.6, 0.3, 0.1]),
    })


def test_numeric_column_has_quantile_bins_and_summary():
    rng = np.random.default_rng(1)
    frame = _frame(rng, 1000)
    frame.loc[:9, "x"] = np.nan
    col = build_profile(frame, n_bins=10).columns["x"]
    assert col.kind == "numeric"
    assert len(col.edges) == 11 and col.edges[0] == col.min and col.edges[-1] == col.max
    assert len(col.counts) == 13  # underflow, 10 inner bins, overflow, missing
    assert col.counts[0] == 0 and col.counts[-2] == 0  # nothing outside the reference's own range
    assert col.missing == 10 and col.n == 1000 and sum(col.counts) == 1000
    assert all(95 <= c <= 104 for c in col.counts[1:-2])  # quantile bins hold ~equal shares
    valid = frame["x"].dropna()
    assert col.mean == pytest.approx(valid.mean()) and col.std == pytest.approx(valid.std(ddof=1))


def test_every_value_lands_in_a_bin_including_out_of_range_and_unseen():
    rng = np.random.default_rng(2)
    profile = build_profile(_frame(rng, 500), n_bins=4)
    current = pd.DataFrame({
        "x": [-1e9, 1e9, profile.columns["x"].max, profile.columns["x"].min, None, "oops"],
        "k": [0, 1, 2, 3, 4, 99],
        "c": ["a", "b", "zzz", None, "c", "c"],
    })
    counts = profile.bin_counts(current)
    assert {k: sum(v) for k, v in counts.items()} == {"x": 6, "k": 6, "c": 6}
    x = counts["x"]
    assert x[0] == 1 and x[-2] == 1 and x[-1] == 2  # underflow, overflow, missing ("oops" is not a number)
    assert x[1] == 1 and x[-3] == 1  # min in the first inner bin, max in the last (closed) one
    c = counts["c"]
    categories = profile.columns["c"].categories
    assert categories == ["a", "b", "c"]  # most frequent first
    assert c == [1, 1, 2, 1, 1]  # a, b, c, other (zzz), missing


def test_integer_codes_can_be_forced_categorical_and_booleans_are_categorical():
    frame = pd.DataFrame({"code": [1, 2, 2, 3], "flag": [True, False, True, True]})
    profile = build_profile(frame, categorical_columns=["code"])
    assert profile.columns["code"].kind == "categorical"
    assert profile.columns["code"].categories == ["2", "1", "3"]
    assert profile.columns["flag"].kind == "categorical"
    with pytest.raises(ValueError, match="not in frame"):
        build_profile(frame, categorical_columns=["nope"])


def test_constant_and_empty_numeric_columns_still_bin():
    frame = pd.DataFrame({"const": [5.0] * 10, "empty": [np.nan] * 10})
    profile = build_profile(frame)
    assert profile.bin_counts(pd.DataFrame({"const": [5.0, 4.0, 6.0], "empty": [1.0, None, 2.0]})) == {
        "const": [1, 1, 1, 0],
        "empty": [0, 0, 2, 1],
    }


def test_json_round_trip_is_lossless():
    profile = build_profile(_frame(np.random.default_rng(3), 300))
    text = json.dumps(profile.to_dict())
    again = BaselineProfile.from_dict(json.loads(text))
    assert again.to_dict() == profile.to_dict()
    current = _frame(np.random.default_rng(4), 50)
    assert again.bin_counts(current) == profile.bin_counts(current)


def test_from_dict_rejects_inconsistent_counts():
    d = build_profile(pd.DataFrame({"x": [1.0, 2.0, 3.0]})).to_dict()
    d["columns"][0]["counts"].append(1)
    with pytest.raises(ValueError, match="counts"):
        BaselineProfile.from_dict(d)


def test_counts_from_replicas_sum_to_the_counts_of_all_data():
    rng = np.random.default_rng(5)
    profile = build_profile(_frame(rng, 1000))
    traffic = _frame(rng, 900)
    parts = [traffic.iloc[:200], traffic.iloc[200:650], traffic.iloc[650:]]
    summed = profile.bin_counts(parts[0])
    for part in parts[1:]:
        summed = add_counts(summed, profile.bin_counts(part))
    assert summed == profile.bin_counts(traffic)
    with pytest.raises(ValueError):
        add_counts(summed, {"x": summed["x"]})


def test_merging_profiles_on_the_same_bins_is_exact():
    rng = np.random.default_rng(6)
    base = build_profile(_frame(rng, 1000))
    a_rows, b_rows = _frame(rng, 300), _frame(rng, 700)
    a = base.with_counts(base.bin_counts(a_rows))
    b = base.with_counts(base.bin_counts(b_rows))
    merged = merge_profiles(a, b)
    assert merged.bin_counts(a_rows) == a.bin_counts(a_rows)
    assert {n: c.counts for n, c in merged.columns.items()} == base.bin_counts(pd.concat([a_rows, b_rows]))


def test_merged_moments_equal_those_of_the_concatenated_data():
    rng = np.random.default_rng(7)
    left, right = _frame(rng, 400), _frame(rng, 600)
    both = pd.concat([left, right], ignore_index=True)
    # Same bins on both sides: profile each part with the full data's bins.
    full = build_profile(both)
    def part_profile(frame):
        p = full.with_counts(full.bin_counts(frame))
        own = build_profile(frame)
        for name in ("x", "k"):
            for attr in ("min", "max", "mean", "std"):
                setattr(p.columns[name], attr, getattr(own.columns[name], attr))
        return p
    merged = merge_profiles(part_profile(left), part_profile(right))
    for name in ("x", "k"):
        col, ref = merged.columns[name], full.columns[name]
        assert col.mean == pytest.approx(ref.mean) and col.std == pytest.approx(ref.std)
        assert (col.min, col.max) == (ref.min, ref.max)
    assert merged.columns["x"].counts == full.columns["x"].counts


def test_merging_profiles_with_different_bins_is_refused():
    rng = np.random.default_rng(8)
    with pytest.raises(ValueError, match="different bins"):
        merge_profiles(build_profile(_frame(rng, 100)), build_profile(_frame(rng, 100)))


def test_integer_categories_survive_a_batch_turned_float_by_missing_values():
    profile = build_profile(pd.DataFrame({"code": [1, 2, 2, 3]}), categorical_columns=["code"])
    batch = pd.DataFrame({"code": [1.0, 2.0, np.nan, 3.0]})
    assert profile.bin_counts(batch) == {"code": [1, 1, 1, 0, 1]}  # 2, 1, 3, other, missing
    mixed = pd.DataFrame({"code": pd.Series([1.0, "2", None, 4.5], dtype=object)})
    assert profile.bin_counts(mixed) == {"code": [1, 1, 0, 1, 1]}
