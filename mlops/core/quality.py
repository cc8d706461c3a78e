"""Data quality of a batch, judged against the baseline profile.

Why it exists: the original system reported a constant quality score. Here the score is computed
from four rates, each in [0, 1]:

- ``missing_rate``: missing cells / cells, over the profile's columns (a profile column absent
  from the batch counts as entirely missing);
- ``duplicate_rate``: rows equal to an earlier row of the batch / rows;
- ``out_of_range_rate``: numeric values outside the baseline's [min, max], plus categorical values
  never seen in the baseline (only when the baseline saw every category it has), / valid values;
- ``wrong_type_rate``: non-missing values of numeric columns that are not numbers / non-missing
  numeric cells.

Data that is merely like the baseline must score 1, so the score uses each rate's *excess* over
the baseline (e.g. a baseline with 3% missing cells makes 3% missing in a batch normal)::

    score = (1 - excess_missing) * (1 - excess_duplicate) * (1 - out_of_range_rate) * (1 - wrong_type_rate)

(out-of-range and wrong types are 0 in the baseline by construction). The duplicate rate of a sample
grows with its size (more earlier rows to repeat), so the excess compares like with like: a batch
no larger than the reference is compared with the reference's duplicate rate at the batch's size
(``BaselineProfile.duplicate_curve``, interpolated in log-size), and a larger batch is cut into
chunks of the reference's size (in a fixed spread order) whose duplicate rate is compared with the
reference's own. Same-distribution data then scores 1 at any batch size. 1 is perfect; an empty batch
scores 1 (no evidence of a problem). The raw rates are reported too, e.g. ``missing_rate`` for the
retraining engine's ``missing_data_threshold``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mlops.core.profile import CATEGORICAL, BaselineProfile, as_numbers, spread_order


@dataclass
class ColumnQuality:
    missing: int = 0
    out_of_range: int = 0
    wrong_type: int = 0
    valid: int = 0


@dataclass
class DataQualityReport:
    score: float
    missing_rate: float
    duplicate_rate: float
    out_of_range_rate: float
    wrong_type_rate: float
    n_rows: int
    baseline_missing_rate: float = 0.0
    baseline_duplicate_rate: float = 0.0
    missing_columns: list[str] = field(default_factory=list)  # profile columns absent from the batch
    unexpected_columns: list[str] = field(default_factory=list)  # batch columns not in the profile
    columns: dict[str, ColumnQuality] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def missing_value_rate(frame: pd.DataFrame, columns: list[str] | None = None) -> float:
    """Share of missing cells in ``frame`` (over ``columns`` if given; absent columns count as missing)."""
    if len(frame) == 0:
        return 0.0
    cols = list(frame.columns) if columns is None else list(columns)
    if not cols:
        return 0.0
    present = [c for c in cols if c in frame.columns]
    missing = int(frame[present].isna().to_numpy().sum()) + (len(cols) - len(present)) * len(frame)
    return missing / (len(cols) * len(frame))


def _baseline_missing_rate(profile: BaselineProfile) -> float:
    cells = sum(c.n for c in profile.columns.values())
    return sum(c.missing for c in profile.columns.values()) / cells if cells else 0.0


def expected_duplicate_rate(profile: BaselineProfile, size: int) -> float:
    """The reference's duplicate-row rate in samples of ``size`` rows (log-size interpolation of the
    profile's curve; the whole-reference rate when the profile has no curve)."""
    curve = profile.duplicate_curve
    if not curve:
        return profile.duplicate_rows / profile.n_rows if profile.n_rows else 0.0
    if size < 2:
        return 0.0
    sizes = np.log([c[0] for c in curve])
    rates = [c[1] for c in curve]
    return float(np.interp(np.log(size), sizes, rates, left=0.0, right=rates[-1]))


def _chunked_duplicate_rate(row_hashes: np.ndarray, chunk: int) -> float:
    """Rows equal to an earlier row of the same ``chunk``-row chunk (fixed spread order) / rows."""
    n = row_hashes.size
    hashes = row_hashes[spread_order(n)]
    ids = np.arange(n) // max(1, chunk)
    return float(pd.DataFrame({"c": ids, "h": hashes}).duplicated().sum()) / n


def assess_data_quality(profile: BaselineProfile, frame: pd.DataFrame) -> DataQualityReport:
    """Quality of ``frame`` against ``profile``; see the module docstring for the formula."""
    names = list(profile.columns)
    base_missing = _baseline_missing_rate(profile)
    base_dup = profile.duplicate_rows / profile.n_rows if profile.n_rows else 0.0
    missing_cols = [c for c in names if c not in frame.columns]
    unexpected = [str(c) for c in frame.columns if str(c) not in profile.columns]
    n = len(frame)
    if n == 0 or not names:
        return DataQualityReport(1.0, 0.0, 0.0, 0.0, 0.0, n, base_missing, base_dup, missing_cols, unexpected)

    per_col: dict[str, ColumnQuality] = {}
    missing = out_of_range = wrong = valid_total = numeric_non_missing = 0
    for name, col in profile.columns.items():
        q = ColumnQuality()
        if name not in frame.columns:
            q.missing = n
        elif col.kind == CATEGORICAL:
            counts = col.count(frame[name])
            q.missing = counts[-1]
            q.valid = n - q.missing
            baseline_other = col.counts[-2]
            q.out_of_range = counts[-2] if baseline_other == 0 else 0
        else:
            values, missing_or_wrong, q.wrong_type = as_numbers(frame[name])
            q.missing = missing_or_wrong - q.wrong_type
            valid = values[~np.isnan(values)]
            q.valid = int(valid.size)
            if col.min is not None and col.max is not None:
                q.out_of_range = int(((valid < col.min) | (valid > col.max)).sum())
            numeric_non_missing += q.valid + q.wrong_type
        per_col[name] = q
        missing += q.missing
        out_of_range += q.out_of_range
        wrong += q.wrong_type
        valid_total += q.valid

    cells = n * len(names)
    missing_rate = missing / cells
    present = [c for c in names if c in frame.columns]
    # rows compared through 64-bit row hashes (one pass over the columns, collisions negligible)
    hashes = pd.util.hash_pandas_object(frame[present], index=False).to_numpy() if present else None
    duplicate_rate = float(pd.Series(hashes).duplicated().sum()) / n if present else 0.0
    reference_size = profile.n_rows or n
    if hashes is not None and n > reference_size and profile.duplicate_curve:
        comparable_rate = _chunked_duplicate_rate(hashes, reference_size)
        base_dup = expected_duplicate_rate(profile, reference_size)
    else:
        comparable_rate = duplicate_rate
        base_dup = expected_duplicate_rate(profile, n) if profile.duplicate_curve else base_dup
    out_of_range_rate = out_of_range / valid_total if valid_total else 0.0
    wrong_type_rate = wrong / numeric_non_missing if numeric_non_missing else 0.0
    score = (
        (1 - max(0.0, missing_rate - base_missing))
        * (1 - max(0.0, comparable_rate - base_dup))
        * (1 - out_of_range_rate)
        * (1 - wrong_type_rate)
    )
    return DataQualityReport(
        score=float(min(1.0, max(0.0, score))), missing_rate=missing_rate, duplicate_rate=duplicate_rate,
        out_of_range_rate=out_of_range_rate, wrong_type_rate=wrong_type_rate, n_rows=n,
        baseline_missing_rate=base_missing, baseline_duplicate_rate=base_dup, missing_columns=missing_cols,
        unexpected_columns=unexpected, columns=per_col,
    )
