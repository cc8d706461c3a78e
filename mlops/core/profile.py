"""Baseline profiles: a small, JSON-serializable summary of the training (reference) data.

Why it exists: the model server, its monitoring sidecar and the operator cannot ship the raw
reference data around, and Prometheus can only add numbers. A profile fixes, once, the bins on
which every replica counts live traffic (numeric quantile bins with under/overflow bins, category
lists with an "other" bucket, a missing bucket); counts on the same bins add up exactly across
replicas and restarts, and drift is then computed from the summed counts (`mlops.core.drift`).

Count layout (the same in the profile and in :meth:`BaselineProfile.bin_counts`):

- numeric column with edges ``e_0 < ... < e_k``: ``[underflow (< e_0), k inner bins
  ([e_i, e_{i+1}), the last one closed), overflow (> e_k), missing]``, i.e. ``k + 3`` entries;
- categorical column with categories ``c_1..c_j``: ``[c_1, ..., c_j, other, missing]``.

"Missing" counts NaN/None and, for numeric columns, values that are not numbers.

Format version 2 (``PROFILE_FORMAT_VERSION``) fixes two ways version 1 hid drift:

- **Low-cardinality numeric columns** (at most ``DISCRETE_MAX_VALUES`` distinct values: binary flags,
  counts) get one bin per distinct value: the edges are the values plus the next float above the
  largest, so the closed last bin holds only the largest value. In version 1 the quantile edges of a
  0/1 column collapsed to ``[0, 1]`` and the closed bin held both values, so P(1) could move from 0.3
  to 0.9 without any test seeing it.
- **Categories**: every category is kept up to ``max_categories`` (1,000 by default). Above that the
  kept categories are chosen on half of the rows (even positions) and the counts tested come from the
  other half, so the choice is independent of the counts: choosing the top K on the very counts that
  are tested biases the reference's "other" share low and makes same-distribution data drift.

A version-1 profile is refused with :class:`ProfileVersionError` (rebuild it from the reference data).
The profile also records ``duplicate_curve``: the reference's duplicate-row rate at several sample
sizes, so a batch's duplicate rate is compared at its own size (``mlops.core.quality``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

NUMERIC = "numeric"
CATEGORICAL = "categorical"
PROFILE_FORMAT_VERSION = 2
DEFAULT_MAX_CATEGORIES = 1000
DISCRETE_MAX_VALUES = 32  # numeric columns with at most this many distinct values: one bin per value


class ProfileVersionError(ValueError):
    """A stored profile was written in another format version; it must be rebuilt."""


@dataclass
class ColumnProfile:
    """Summary of one column. ``counts`` follows the module's count layout."""

    name: str
    kind: str  # NUMERIC or CATEGORICAL
    counts: list[int]
    n: int  # rows seen, missing included
    edges: list[float] = field(default_factory=list)  # numeric only
    categories: list[str] = field(default_factory=list)  # categorical only
    min: float | None = None
    max: float | None = None
    mean: float | None = None
    std: float | None = None  # sample standard deviation (ddof=1) of the non-missing values
    wrong_type: int = 0  # numeric only: non-missing values that were not numbers

    @property
    def missing(self) -> int:
        return int(self.counts[-1])

    @property
    def n_valid(self) -> int:
        return self.n - self.missing

    @property
    def bin_counts(self) -> np.ndarray:
        """Counts per bin without the missing bucket."""
        return np.asarray(self.counts[:-1], dtype=np.int64)

    @property
    def missing_rate(self) -> float:
        return self.missing / self.n if self.n else 0.0

    def bin_labels(self) -> list[str]:
        if self.kind == CATEGORICAL:
            return [*self.categories, "__other__", "__missing__"]
        inner = [f"[{a:.6g}, {b:.6g})" for a, b in zip(self.edges[:-1], self.edges[1:], strict=True)]
        return [f"< {self.edges[0]:.6g}", *inner, f"> {self.edges[-1]:.6g}", "__missing__"]

    def count(self, values: pd.Series | np.ndarray | Iterable[Any]) -> list[int]:
        """Bin ``values`` on this column's bins; returns counts in the module's layout."""
        if not isinstance(values, pd.Series):
            values = pd.Series(values if isinstance(values, np.ndarray) else list(values))
        series = values
        if self.kind == NUMERIC:
            numbers, missing, _wrong = as_numbers(series)
            valid = numbers[~np.isnan(numbers)]
            return [*_numeric_bins(valid, np.asarray(self.edges, dtype=float)).tolist(), missing]
        return _categorical_counts(series, self.categories)

    def same_bins(self, other: ColumnProfile) -> bool:
        return (self.kind, self.edges, self.categories) == (other.kind, other.edges, other.categories)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "kind": self.kind, "n": self.n, "counts": list(self.counts)}
        if self.kind == NUMERIC:
            d.update(edges=list(self.edges), min=self.min, max=self.max, mean=self.mean, std=self.std,
                     wrong_type=self.wrong_type)
        else:
            d["categories"] = list(self.categories)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ColumnProfile:
        kind = d["kind"]
        if kind not in (NUMERIC, CATEGORICAL):
            raise ValueError(f"column {d.get('name')!r}: unknown kind {kind!r}")
        col = cls(
            name=str(d["name"]), kind=kind, counts=[int(c) for c in d["counts"]], n=int(d["n"]),
            edges=[float(e) for e in d.get("edges", [])], categories=[str(c) for c in d.get("categories", [])],
            min=_opt_float(d.get("min")), max=_opt_float(d.get("max")), mean=_opt_float(d.get("mean")),
            std=_opt_float(d.get("std")), wrong_type=int(d.get("wrong_type", 0)),
        )
        expected = len(col.edges) + 2 if kind == NUMERIC else len(col.categories) + 2
        if len(col.counts) != expected:
            raise ValueError(f"column {col.name!r}: {len(col.counts)} counts, expected {expected}")
        return col


@dataclass
class BaselineProfile:
    """Per-column summaries of a reference frame, in column order."""

    columns: dict[str, ColumnProfile]
    n_rows: int
    duplicate_rows: int = 0  # rows identical to an earlier row in the reference frame
    version: int = PROFILE_FORMAT_VERSION
    # reference duplicate-row rate at sample sizes: [[size, rate], ...] (see duplicate_rate_curve)
    duplicate_curve: list[list[float]] = field(default_factory=list)

    @property
    def numeric_columns(self) -> list[str]:
        return [c for c, p in self.columns.items() if p.kind == NUMERIC]

    @property
    def categorical_columns(self) -> list[str]:
        return [c for c, p in self.columns.items() if p.kind == CATEGORICAL]

    def bin_counts(self, frame: pd.DataFrame) -> dict[str, list[int]]:
        """Counts of ``frame`` on this profile's bins, per profile column (missing bucket last).

        A profile column absent from ``frame`` counts all its rows as missing.
        """
        out: dict[str, list[int]] = {}
        for name, col in self.columns.items():
            if name in frame.columns:
                out[name] = col.count(frame[name])
            else:
                out[name] = [0] * (len(col.counts) - 1) + [len(frame)]
        return out

    def with_counts(self, counts: Mapping[str, list[int]]) -> BaselineProfile:
        """A profile on the same bins whose counts are ``counts`` (moments are not known: None)."""
        cols = {}
        for name, col in self.columns.items():
            c = [int(x) for x in counts[name]]
            if len(c) != len(col.counts):
                raise ValueError(f"column {name!r}: {len(c)} counts, expected {len(col.counts)}")
            cols[name] = ColumnProfile(name=name, kind=col.kind, counts=c, n=sum(c), edges=list(col.edges),
                                       categories=list(col.categories))
        n_rows = max((p.n for p in cols.values()), default=0)
        return BaselineProfile(columns=cols, n_rows=n_rows, duplicate_rows=0, duplicate_curve=[])

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "n_rows": self.n_rows,
            "duplicate_rows": self.duplicate_rows,
            "duplicate_curve": [list(x) for x in self.duplicate_curve],
            "columns": [c.to_dict() for c in self.columns.values()],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BaselineProfile:
        version = int(d.get("version", 1))
        if version != PROFILE_FORMAT_VERSION:
            raise ProfileVersionError(
                f"baseline profile format {version} is not supported (this version reads format "
                f"{PROFILE_FORMAT_VERSION}); format 1 profiles put binary and low-cardinality numeric values in "
                "shared bins and chose categories on the tested counts, which hides or invents drift. Rebuild "
                "the profile from the reference data (build_profile, `mlops drift --save-profile`, `mlops train`)."
            )
        cols = [ColumnProfile.from_dict(c) for c in d["columns"]]
        curve = [[float(a), float(b)] for a, b in d.get("duplicate_curve", [])]
        return cls(columns={c.name: c for c in cols}, n_rows=int(d["n_rows"]),
                   duplicate_rows=int(d.get("duplicate_rows", 0)), version=version, duplicate_curve=curve)


def infer_kind(series: pd.Series) -> str:
    """Numbers (not booleans) are numeric; everything else is categorical."""
    if pd.api.types.is_bool_dtype(series.dtype):
        return CATEGORICAL
    return NUMERIC if pd.api.types.is_numeric_dtype(series.dtype) else CATEGORICAL


def build_profile(
    frame: pd.DataFrame,
    n_bins: int = 10,
    categorical_columns: Iterable[str] | None = None,
    *,
    max_categories: int = DEFAULT_MAX_CATEGORIES,
) -> BaselineProfile:
    """Profile ``frame``: quantile bins for numeric columns, category counts for the others.

    ``categorical_columns`` forces those columns to be categorical (e.g. integer codes); other
    columns are categorical when their dtype is not numeric. Categorical columns keep their
    ``max_categories`` most frequent values; rarer ones count in "other".
    """
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    if frame.columns.has_duplicates:
        raise ValueError("frame has duplicate column names")
    forced = {str(c) for c in (categorical_columns or [])}
    unknown = forced - {str(c) for c in frame.columns}
    if unknown:
        raise ValueError(f"categorical_columns not in frame: {sorted(unknown)}")
    cols: dict[str, ColumnProfile] = {}
    for name in frame.columns:
        series = frame[name]
        key = str(name)
        kind = CATEGORICAL if key in forced else infer_kind(series)
        cols[key] = profile_column(series, key, kind, n_bins, max_categories)
    duplicates = (int(pd.Series(pd.util.hash_pandas_object(frame, index=False).to_numpy()).duplicated().sum())
                  if len(frame.columns) else 0)
    curve = duplicate_rate_curve(frame) if len(frame.columns) else []
    return BaselineProfile(columns=cols, n_rows=len(frame), duplicate_rows=duplicates, duplicate_curve=curve)


def spread_order(n: int) -> np.ndarray:
    """A fixed, deterministic permutation of ``range(n)`` that spreads neighbouring rows apart (a
    multiplicative hash), so chunks of a sorted frame are still mixed samples."""
    keys = (np.arange(n, dtype=np.uint64) * np.uint64(2654435761)) % np.uint64(2**32)
    return np.argsort(keys, kind="stable")


def _duplicates_in_chunks(hashes: np.ndarray, size: int) -> int:
    chunk = np.arange(hashes.size) // size
    return int(pd.DataFrame({"c": chunk, "h": hashes}).duplicated().sum())


def duplicate_rate_curve(frame: pd.DataFrame) -> list[list[float]]:
    """The reference's duplicate-row rate (rows equal to an earlier row of the same chunk / rows) in
    chunks of 2, 4, 8, ... rows up to its size, in a fixed spread order. The duplicate rate of a
    sample grows with its size (more rows to collide with), so a batch must be compared with the
    reference at the batch's own size."""
    n = len(frame)
    if n < 2:
        return []
    hashes = pd.util.hash_pandas_object(frame, index=False).to_numpy()[spread_order(n)]
    sizes = []
    size = 2
    while size < n:
        sizes.append(size)
        size *= 2
    sizes.append(n)
    return [[float(k), _duplicates_in_chunks(hashes, k) / n] for k in sizes]


def profile_column(series: pd.Series, name: str, kind: str, n_bins: int = 10,
                   max_categories: int = DEFAULT_MAX_CATEGORIES) -> ColumnProfile:
    """Profile one column as ``kind`` (NUMERIC or CATEGORICAL)."""
    if kind == NUMERIC:
        return _numeric_profile(name, series, n_bins)
    if kind == CATEGORICAL:
        return _categorical_profile(name, series, max_categories)
    raise ValueError(f"unknown kind {kind!r}")


def add_counts(a: Mapping[str, list[int]], b: Mapping[str, list[int]]) -> dict[str, list[int]]:
    """Sum two binned-count dicts taken on the same profile (e.g. from two replicas)."""
    if set(a) != set(b):
        raise ValueError(f"different columns: {sorted(set(a) ^ set(b))}")
    out = {}
    for name in a:
        if len(a[name]) != len(b[name]):
            raise ValueError(f"column {name!r}: {len(a[name])} vs {len(b[name])} bins")
        out[name] = [int(x) + int(y) for x, y in zip(a[name], b[name], strict=True)]
    return out


def merge_profiles(a: BaselineProfile, b: BaselineProfile) -> BaselineProfile:
    """Combine two profiles on the same bins: counts add, min/max/mean/std combine exactly.

    The duplicate count adds the two sides' counts (rows duplicated across the two parts are not
    known without the rows).
    """
    if list(a.columns) != list(b.columns):
        raise ValueError("profiles have different columns")
    cols = {}
    for name, ca in a.columns.items():
        cb = b.columns[name]
        if not ca.same_bins(cb):
            raise ValueError(f"column {name!r}: profiles use different bins")
        merged = ColumnProfile(
            name=name, kind=ca.kind, n=ca.n + cb.n, edges=list(ca.edges), categories=list(ca.categories),
            counts=[x + y for x, y in zip(ca.counts, cb.counts, strict=True)], wrong_type=ca.wrong_type + cb.wrong_type,
        )
        if ca.kind == NUMERIC:
            merged.min = _opt_min(ca.min, cb.min, min)
            merged.max = _opt_min(ca.max, cb.max, max)
            merged.mean, merged.std = _merge_moments(ca.n_valid, ca.mean, ca.std, cb.n_valid, cb.mean, cb.std)
        cols[name] = merged
    return BaselineProfile(columns=cols, n_rows=a.n_rows + b.n_rows, duplicate_rows=a.duplicate_rows + b.duplicate_rows,
                           duplicate_curve=[list(x) for x in (a.duplicate_curve or b.duplicate_curve)])


# --- helpers -------------------------------------------------------------------------------------

def _opt_float(x: Any) -> float | None:
    return None if x is None else float(x)


def _opt_min(x: float | None, y: float | None, fn: Any) -> float | None:
    vals = [v for v in (x, y) if v is not None]
    return fn(vals) if vals else None


def _merge_moments(n1: int, m1: float | None, s1: float | None, n2: int, m2: float | None, s2: float | None):
    """Chan et al.'s pairwise combination of count, mean and (ddof=1) variance."""
    if n1 == 0 or m1 is None:
        return (m2, s2) if n2 else (None, None)
    if n2 == 0 or m2 is None:
        return m1, s1
    n = n1 + n2
    delta = m2 - m1
    mean = m1 + delta * n2 / n
    m2a = (s1 or 0.0) ** 2 * (n1 - 1)
    m2b = (s2 or 0.0) ** 2 * (n2 - 1)
    m2sum = m2a + m2b + delta * delta * n1 * n2 / n
    std = math.sqrt(m2sum / (n - 1)) if n > 1 else 0.0
    return mean, std


def as_numbers(series: pd.Series) -> tuple[np.ndarray, int, int]:
    """Float values (NaN where missing or not a number), the missing count and the wrong-type count.

    Non-numbers count as missing for binning and separately as wrong-type for data quality.
    """
    if pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype):
        values = series.to_numpy(dtype=float, na_value=np.nan)
        values = np.where(np.isinf(values), np.nan, values) if np.isinf(values).any() else values
        return values, int(np.isnan(values).sum()), 0
    was_missing = series.isna().to_numpy()
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    now_missing = np.isnan(values)
    wrong = int((now_missing & ~was_missing).sum())
    return values, int(now_missing.sum()), wrong


def _numeric_bins(valid: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts in ``[underflow, inner bins..., overflow]`` for finite ``valid`` values."""
    idx = np.searchsorted(edges, valid, side="right")
    # The top edge belongs to the last inner bin, not to the overflow bin.
    idx[valid == edges[-1]] = len(edges) - 1
    return np.bincount(idx, minlength=len(edges) + 1).astype(np.int64)


def _numeric_profile(name: str, series: pd.Series, n_bins: int) -> ColumnProfile:
    values, missing, wrong = as_numbers(series)
    valid = values[~np.isnan(values)]
    if valid.size == 0:
        return ColumnProfile(name=name, kind=NUMERIC, edges=[0.0, 0.0], counts=[0, 0, 0, missing], n=len(series),
                             wrong_type=wrong)
    distinct = np.unique(valid)
    if distinct.size <= max(DISCRETE_MAX_VALUES, 1):
        # One bin per value: [v_i, v_{i+1}) holds v_i only, and the closed last bin [v_k, next float]
        # holds v_k only (a constant column gets one bin).
        edges = np.append(distinct, np.nextafter(distinct[-1], np.inf))
    else:
        edges = np.unique(np.quantile(valid, np.linspace(0.0, 1.0, n_bins + 1)))
    counts = _numeric_bins(valid, edges)
    std = float(valid.std(ddof=1)) if valid.size > 1 else 0.0
    return ColumnProfile(
        name=name, kind=NUMERIC, edges=[float(e) for e in edges], counts=[*counts.tolist(), missing],
        n=len(series), min=float(valid.min()), max=float(valid.max()), mean=float(valid.mean()), std=std,
        wrong_type=wrong,
    )


def _category_label(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def category_strings(series: pd.Series) -> pd.Series:
    """Non-missing values as category labels: strings, with integral floats written as integers.

    So the code 1 stays "1" when a missing value turns the column into floats (1.0) in a later batch.
    """
    values = series.dropna()
    if pd.api.types.is_float_dtype(values.dtype) and not (len(values) and bool((values % 1 == 0).all())):
        return values.astype(str)
    if pd.api.types.is_float_dtype(values.dtype) or values.dtype == object:
        # Label each distinct value once, not each row.
        codes, uniques = pd.factorize(values)
        labels = np.array([_category_label(u) for u in uniques], dtype=object)
        return pd.Series(labels[codes], index=values.index, dtype=object)
    return values.astype(str)


def category_counts(series: pd.Series) -> pd.Series:
    """Counts per category label (see :func:`category_strings`), missing values excluded."""
    counts = series.value_counts(dropna=True)
    labels = [_category_label(v) for v in counts.index]
    return counts.groupby(np.asarray(labels, dtype=object), sort=False).sum()


def _categorical_counts(series: pd.Series, categories: list[str]) -> list[int]:
    missing = int(series.isna().sum())
    observed = category_counts(series)
    counts = [int(observed.get(c, 0)) for c in categories]
    other = int(observed.sum()) - sum(counts)
    return [*counts, other, missing]


def _categorical_profile(name: str, series: pd.Series, max_categories: int) -> ColumnProfile:
    observed = category_counts(series)
    if len(observed) <= max_categories:
        # Every category kept (most frequent first; ties by name so the profile is deterministic).
        ordered = sorted(observed.items(), key=lambda kv: (-kv[1], kv[0]))
        categories = [k for k, _ in ordered]
        return ColumnProfile(name=name, kind=CATEGORICAL, categories=categories,
                             counts=_categorical_counts(series, categories), n=len(series))
    # Too many: choose the kept categories on the even rows, count the odd rows, so the choice does
    # not depend on the counts the tests use (no selection bias in the "other" share).
    chooser = category_counts(series.iloc[0::2])
    ordered = sorted(chooser.items(), key=lambda kv: (-kv[1], kv[0]))[:max_categories]
    categories = [k for k, _ in ordered]
    tested = series.iloc[1::2]
    return ColumnProfile(name=name, kind=CATEGORICAL, categories=categories,
                         counts=_categorical_counts(tested, categories), n=len(tested))
