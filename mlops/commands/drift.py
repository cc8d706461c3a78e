"""`mlops drift REFERENCE CURRENT`: compare two CSV files column by column, from the shell.

Why it exists: checking a new data drop against the training data should not need Python code.
Exit status 0 = no drift, 1 = drift detected, 2 = bad input (one-line reason on stderr).
REFERENCE may also be a baseline profile saved as JSON (``--save-profile`` writes one).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from mlops.commands._common import UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "drift",
        help="detect data drift between a reference CSV and a current CSV",
        description="Per-column drift tests (KS for numbers, chi-square for categories by default) with a "
        "Holm correction across columns. Exit 0: no drift, 1: drift, 2: bad input.",
    )
    p.add_argument("reference", help="reference data (CSV with a header row), or a baseline profile (.json)")
    p.add_argument("current", help="current data (CSV with the same columns)")
    p.add_argument("--report", metavar="PATH", help="also write Evidently's drift report (HTML, or JSON if PATH ends in .json)")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    p.add_argument("--alpha", type=float, default=0.05, help="family-wise significance level (default 0.05)")
    p.add_argument("--numeric-test", default="ks", help="ks | wasserstein | psi (default ks)")
    p.add_argument("--categorical-test", default="chisquare", help="chisquare | jensenshannon | psi (default chisquare)")
    p.add_argument("--correction", default="holm", choices=["holm", "bonferroni", "none"])
    p.add_argument("--categorical", default="", metavar="COLS", help="comma-separated columns to treat as categorical")
    p.add_argument("--save-profile", metavar="PATH", help="write the reference's baseline profile as JSON")
    p.set_defaults(func=run)


def _read_csv(path_text: str, role: str):
    import pandas as pd

    path = Path(path_text)
    if not path.is_file():
        raise UsageError(f"{role} file not found: {path_text}")
    try:
        frame = pd.read_csv(path)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{role} file is not a readable CSV: {path_text} ({reason})") from None
    if frame.empty or len(frame.columns) == 0:
        raise UsageError(f"{role} file has no data rows: {path_text}")
    if any(str(c).startswith("Unnamed: ") for c in frame.columns) or "\x00" in "".join(map(str, frame.columns)):
        raise UsageError(f"{role} file is not a CSV with a header row: {path_text}")
    return frame


def _load_reference(path_text: str):
    if path_text.lower().endswith(".json"):
        from mlops.core.profile import BaselineProfile

        path = Path(path_text)
        if not path.is_file():
            raise UsageError(f"reference file not found: {path_text}")
        try:
            return BaselineProfile.from_dict(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"reference is not a baseline profile: {path_text} ({exc})") from None
    return _read_csv(path_text, "reference")


def _fmt(x: float | None, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}g}" if abs(x) < 1e-3 and x != 0 else f"{x:.{digits}f}"


def _table(report) -> str:
    header = ("column", "kind", "test", "statistic", "p_value", "adj_p", "threshold", "drift")
    rows = [header]
    for c in report.columns.values():
        rows.append((c.column, c.kind, c.test, _fmt(c.statistic), _fmt(c.p_value), _fmt(c.adjusted_p_value),
                     _fmt(c.threshold, 3), "DRIFT" if c.drifted else (c.note or "ok")))
    for name in report.skipped:
        rows.append((name, "-", "-", "-", "-", "-", "-", "skipped (no values)"))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from mlops.core.drift import detect_drift
    from mlops.core.profile import BaselineProfile, build_profile

    if not 0 < args.alpha < 1:
        raise UsageError(f"--alpha must be between 0 and 1, got {args.alpha}")
    reference = _load_reference(args.reference)
    current = _read_csv(args.current, "current")
    ref_cols = list(reference.columns) if isinstance(reference, BaselineProfile) else [str(c) for c in reference.columns]
    cur_cols = [str(c) for c in current.columns]
    missing = [c for c in ref_cols if c not in cur_cols]
    extra = [c for c in cur_cols if c not in ref_cols]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing in current: {', '.join(missing)}")
        if extra:
            parts.append(f"not in reference: {', '.join(extra)}")
        raise UsageError(f"columns do not match ({'; '.join(parts)})")
    categorical = [c.strip() for c in args.categorical.split(",") if c.strip()]
    unknown = [c for c in categorical if c not in ref_cols]
    if unknown:
        raise UsageError(f"--categorical names unknown columns: {', '.join(unknown)}")
    if isinstance(reference, pd.DataFrame):
        reference.columns = ref_cols
    current.columns = cur_cols
    try:
        report = detect_drift(reference, current, alpha=args.alpha, numeric_test=args.numeric_test,
                              categorical_test=args.categorical_test, correction=args.correction,
                              categorical_columns=categorical or None)
    except ValueError as exc:
        raise UsageError(str(exc)) from None

    if args.save_profile:
        if not isinstance(reference, pd.DataFrame):
            raise UsageError("--save-profile needs a CSV reference")
        Path(args.save_profile).write_text(json.dumps(build_profile(reference, categorical_columns=categorical or None).to_dict()))

    report_path = None
    if args.report:
        if not isinstance(reference, pd.DataFrame):
            raise UsageError("--report needs the raw reference data (a CSV), not a profile")
        report_path = _write_evidently(reference, current, args, categorical)

    if args.json:
        out = report.to_dict()
        out["report_path"] = report_path
        print(json.dumps(out, indent=2, default=str))
    else:
        print(_table(report))
        n = len(report.columns)
        verdict = "DRIFT DETECTED" if report.feature_drift_detected else "no drift"
        print(f"\n{verdict}: {len(report.drifted_features)} of {n} columns drifted "
              f"(drift score {report.drift_score:.3f}; alpha {report.alpha}, {report.correction} correction)")
        if report.drifted_features:
            print(f"drifted: {', '.join(report.drifted_features)}")
        if report_path:
            print(f"Evidently report: {report_path}")
    return 1 if report.feature_drift_detected else 0


def _write_evidently(reference, current, args: argparse.Namespace, categorical: list[str]) -> str:
    from mlops.core.drift import DRIFT_TESTS

    try:
        from mlops.monitoring.evidently_report import EvidentlyUnavailable, write_drift_report
    except ImportError as exc:  # pragma: no cover
        raise UsageError(f"cannot write the report: {exc}") from None
    # Evidently runs the same tests per column, without a correction across columns.
    methods = {"num_method": args.numeric_test, "cat_method": args.categorical_test}
    if DRIFT_TESTS[args.numeric_test].uses_p_value:
        methods["num_threshold"] = args.alpha
    if DRIFT_TESTS[args.categorical_test].uses_p_value:
        methods["cat_threshold"] = args.alpha
    try:
        path = write_drift_report(reference, current, args.report, categorical_columns=categorical or None, **methods)
    except EvidentlyUnavailable as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot write the report to {args.report}: {exc.strerror or exc}") from None
    print(f"wrote {path}", file=sys.stderr)
    return str(path)
