"""Benchmark: our drift computation against Evidently's data drift preset, same data, one run.

    python benchmarks/drift.py [--sizes 10000 100000] [--repeats 3] [--seed 0]

Generates a reference and a current frame (20 numeric + 5 categorical columns; drift injected in 5
numeric and 2 categorical columns) at each size and times, median of ``--repeats`` runs (imports
excluded, column kinds given to both), two comparisons:

- ``default``: our defaults (KS + chi-square, Holm) vs Evidently's default ``DataDriftPreset()``
  (above 1,000 rows: normalised Wasserstein and Jensen-Shannon distances, threshold 0.1);
- ``same_test``: both running KS (p <= 0.05) and Jensen-Shannon (>= 0.1) per column, no correction.

Also times our binned path (a saved profile against binned counts; what the sidecar/operator use)
and the public monitor API: ``log_prediction_batch`` of the current frame on a monitor made by
``create_production_monitor(baseline_data=reference)`` (drift, data quality and the durable SQLite
write included; the monitor's creation, a one-time cost, is reported separately).
Prints one JSON document: seconds, ``speedup`` (Evidently seconds / ours) and per-column agreement.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from mlops.core.drift import detect_drift, detect_drift_from_counts
from mlops.core.profile import build_profile

N_NUMERIC, N_CATEGORICAL = 20, 5


def make_frames(n: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    rng = np.random.default_rng(seed)
    ref: dict[str, Any] = {}
    cur: dict[str, Any] = {}
    numeric_shift = {0: 0.02, 1: 0.05, 2: 0.1, 3: 0.3, 4: 1.0}  # in reference standard deviations
    for i in range(N_NUMERIC):
        s = numeric_shift.get(i, 0.0)
        kind = i % 4
        if kind == 0:
            ref[f"num{i}"], cur[f"num{i}"] = rng.normal(0, 1, n), rng.normal(s, 1, n)
        elif kind == 1:
            ref[f"num{i}"], cur[f"num{i}"] = rng.exponential(1.0, n), rng.exponential(1.0, n) + s
        elif kind == 2:
            ref[f"num{i}"], cur[f"num{i}"] = rng.uniform(0, 10, n), rng.uniform(0, 10, n) + s * 2.89
        else:
            ref[f"num{i}"], cur[f"num{i}"] = rng.lognormal(3, 0.5, n), rng.lognormal(3 + s * 0.5, 0.5, n)
    categories = list("abcdefgh")
    cat_names = []
    for j in range(N_CATEGORICAL):
        k = 3 + j
        p = np.linspace(1, 2, k)
        p /= p.sum()
        q = p.copy()
        if j == 0:  # small change
            q = np.roll(p, 1) * 0.1 + p * 0.9
        elif j == 1:  # large change
            q = p[::-1].copy()
        name = f"cat{j}"
        cat_names.append(name)
        ref[name] = rng.choice(categories[:k], n, p=p)
        cur[name] = rng.choice(categories[:k], n, p=q / q.sum())
    return pd.DataFrame(ref), pd.DataFrame(cur), cat_names


def median_seconds(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def agreement(ours: dict[str, bool], theirs: dict[str, bool]) -> dict[str, Any]:
    common = sorted(set(ours) & set(theirs))
    disagree = [c for c in common if ours[c] != theirs[c]]
    return {
        "columns": len(common),
        "agreement": (len(common) - len(disagree)) / len(common) if common else None,
        "disagreements": {c: {"ours": ours[c], "evidently": theirs[c]} for c in disagree},
        "drifted_ours": sorted(c for c in common if ours[c]),
        "drifted_evidently": sorted(c for c in common if theirs[c]),
    }


def monitor_row(ref: pd.DataFrame, cur: pd.DataFrame, n: int, repeats: int, evidently_seconds: float) -> dict:
    import os
    import tempfile

    from mlops.monitoring.production_monitor import create_production_monitor

    home = tempfile.mkdtemp(prefix="mlops-bench-")
    os.environ["MLOPS_HOME"] = home
    start = time.perf_counter()
    monitor = create_production_monitor(f"bench-{n}", baseline_data=ref)
    create_s = time.perf_counter() - start
    predictions = np.zeros(len(cur), dtype=int)
    log_s, result = median_seconds(lambda: monitor.log_prediction_batch(cur, predictions), repeats)
    monitor.close()
    return {
        "ours": "create_production_monitor(baseline_data) + log_prediction_batch (drift, quality, SQLite)",
        "evidently": "DataDriftPreset() defaults (the default row's time)",
        "create_seconds": create_s, "log_batch_seconds": log_s, "evidently_seconds": evidently_seconds,
        "speedup": evidently_seconds / log_s,
        "drifted": sorted(result["metrics"]["drifted_features"]),
    }


def run(sizes: list[int], repeats: int, seed: int) -> dict[str, Any]:
    from mlops.monitoring.evidently_report import run_evidently_drift

    warnings.filterwarnings("ignore")  # Evidently's internals emit RuntimeWarnings on unseen categories
    start = time.perf_counter()
    import evidently  # noqa: F401 - measured once, excluded from the per-run timings

    evidently_import = time.perf_counter() - start
    out: dict[str, Any] = {"evidently_version": evidently.__version__, "evidently_import_seconds": evidently_import,
                           "repeats": repeats, "columns": {"numeric": N_NUMERIC, "categorical": N_CATEGORICAL},
                           "sizes": {}}
    for n in sizes:
        ref, cur, cats = make_frames(n, seed)
        row: dict[str, Any] = {}

        ours_s, ours = median_seconds(lambda: detect_drift(ref, cur, categorical_columns=cats), repeats)  # noqa: B023
        ev_s, ev = median_seconds(lambda: run_evidently_drift(ref, cur, categorical_columns=cats), repeats)  # noqa: B023
        ev_default_s = ev_s
        row["default"] = {
            "ours": "ks + chisquare, holm, alpha 0.05", "evidently": "DataDriftPreset() defaults",
            "ours_seconds": ours_s, "evidently_seconds": ev_s, "speedup": ev_s / ours_s,
            **agreement({k: v.drifted for k, v in ours.columns.items()}, {k: v.drifted for k, v in ev.columns.items()}),
            "evidently_methods": sorted({c.method for c in ev.columns.values()}),
        }

        def ours_same(ref=ref, cur=cur, cats=cats):
            return detect_drift(ref, cur, categorical_columns=cats, categorical_test="jensenshannon", correction="none")

        def ev_same(ref=ref, cur=cur, cats=cats):
            return run_evidently_drift(ref, cur, categorical_columns=cats, num_method="ks", cat_method="jensenshannon",
                                       num_threshold=0.05, cat_threshold=0.1)

        ours_s, ours = median_seconds(ours_same, repeats)
        ev_s, ev = median_seconds(ev_same, repeats)
        row["same_test"] = {
            "ours": "ks (p<=0.05) + jensenshannon (>=0.1), no correction", "evidently": "same",
            "ours_seconds": ours_s, "evidently_seconds": ev_s, "speedup": ev_s / ours_s,
            **agreement({k: v.drifted for k, v in ours.columns.items()}, {k: v.drifted for k, v in ev.columns.items()}),
        }

        profile = build_profile(ref, categorical_columns=cats)
        bin_s, counts = median_seconds(lambda: profile.bin_counts(cur), repeats)  # noqa: B023
        test_s, binned = median_seconds(lambda: detect_drift_from_counts(profile, counts), repeats)  # noqa: B023
        row["binned_path"] = {"bin_counts_seconds": bin_s, "drift_from_counts_seconds": test_s,
                              "drifted": binned.drifted_features}
        row["monitor_api"] = monitor_row(ref, cur, n, repeats, ev_default_s)
        out["sizes"][str(n)] = row
        print(f"done {n} rows", file=sys.stderr)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(run(args.sizes, args.repeats, args.seed), indent=2))


if __name__ == "__main__":
    main()
