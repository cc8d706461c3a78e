"""`mlops ab analyze`: the A/B verdict for two arms' counts (or a CSV of outcomes), as text or JSON.

It runs the same decision as ``ABTestingManager.analyze_experiment`` and the operator
(``mlops.core.ab_stats.decide``), so a number typed here gets the verdict the system would give.
"""

from __future__ import annotations

import argparse

from mlops.commands._common import UsageError

_TRUE = {"1", "true", "yes", "y", "t", "correct", "success"}
_FALSE = {"0", "false", "no", "n", "f", "incorrect", "failure"}
_ARMS = {"control": "control", "a": "control", "model_a": "control",
         "treatment": "treatment", "b": "treatment", "model_b": "treatment"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("ab", help="A/B test statistics", description=__doc__)
    sub = parser.add_subparsers(dest="ab_command", metavar="SUBCOMMAND")
    analyze = sub.add_parser(
        "analyze",
        help="verdict for two arms from counts or a CSV of outcomes",
        description="Verdict for a two-arm test of a rate (accuracy, conversion): always-valid sequential "
        "p-value (mSPRT), fixed-horizon test and interval, sample-ratio-mismatch check, sample size plan.",
    )
    analyze.add_argument("--control-success", type=int, help="successes in control (A)")
    analyze.add_argument("--control-total", type=int, help="samples in control (A)")
    analyze.add_argument("--treatment-success", type=int, help="successes in treatment (B)")
    analyze.add_argument("--treatment-total", type=int, help="samples in treatment (B)")
    analyze.add_argument("--csv", metavar="FILE",
                         help="CSV with columns 'variant' (control/treatment or A/B) and 'outcome' (0/1)")
    analyze.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    analyze.add_argument("--power", type=float, default=0.8, help="power for the sample size plan (default 0.8)")
    analyze.add_argument("--mde", type=float, default=0.02,
                         help="minimum detectable effect, absolute (default 0.02)")
    analyze.add_argument("--split", type=float, default=0.5,
                         help="configured treatment share, for the SRM check (default 0.5)")
    analyze.add_argument("--min-samples", type=int, default=0, help="minimum samples per variant (default 0)")
    analyze.add_argument("--practical-threshold", type=float, default=0.0,
                         help="smallest absolute difference worth acting on (default 0)")
    analyze.add_argument("--json", action="store_true", help="print the full verdict as JSON")
    analyze.set_defaults(func=_analyze)
    parser.set_defaults(func=lambda args: (parser.print_help(), 0)[1])


def _read_csv(path: str) -> tuple[int, int, int, int]:
    import csv

    counts = {"control": [0, 0], "treatment": [0, 0]}
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            fields = {(f or "").strip().lower(): f for f in reader.fieldnames or []}
            outcome_col = next((fields[c] for c in ("outcome", "success", "correct", "converted") if c in fields), None)
            if "variant" not in fields or outcome_col is None:
                raise UsageError(f"{path}: needs a 'variant' column and an 'outcome' (0/1) column")
            for line, row in enumerate(reader, start=2):
                arm = _ARMS.get((row[fields["variant"]] or "").strip().lower())
                value = (row[outcome_col] or "").strip().lower()
                if arm is None:
                    raise UsageError(f"{path}:{line}: variant must be control/treatment or A/B")
                if value in _TRUE:
                    counts[arm][0] += 1
                elif value not in _FALSE:
                    raise UsageError(f"{path}:{line}: outcome must be 0/1 or true/false, got {value!r}")
                counts[arm][1] += 1
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    return counts["control"][0], counts["control"][1], counts["treatment"][0], counts["treatment"][1]


def _counts(args: argparse.Namespace) -> tuple[int, int, int, int]:
    given = [args.control_success, args.control_total, args.treatment_success, args.treatment_total]
    if args.csv:
        if any(v is not None for v in given):
            raise UsageError("give either --csv or the four counts, not both")
        return _read_csv(args.csv)
    if any(v is None for v in given):
        raise UsageError(
            "need --control-success, --control-total, --treatment-success and --treatment-total (or --csv)"
        )
    sa, na, sb, nb = given
    for name, s, n in (("control", sa, na), ("treatment", sb, nb)):
        if s < 0 or n < 0:
            raise UsageError(f"{name} counts must be non-negative")
        if s > n:
            raise UsageError(f"{name} successes ({s}) exceed its total ({n})")
    return sa, na, sb, nb


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _analyze(args: argparse.Namespace) -> int:
    if args.ab_command != "analyze":
        return 0
    sa, na, sb, nb = _counts(args)
    if not 0.0 < args.alpha < 0.5:
        raise UsageError(f"--alpha must be in (0, 0.5), got {args.alpha}")
    if not 0.0 < args.power < 1.0:
        raise UsageError(f"--power must be in (0, 1), got {args.power}")
    if not 0.0 < args.mde < 1.0:
        raise UsageError(f"--mde must be in (0, 1), got {args.mde}")
    if not 0.0 < args.split < 1.0:
        raise UsageError(f"--split must be in (0, 1), got {args.split}")
    if args.min_samples < 0 or args.practical_threshold < 0:
        raise UsageError("--min-samples and --practical-threshold must be non-negative")

    from mlops.core.ab_stats import decide

    v = decide(
        sa, na, sb, nb, alpha=args.alpha, power=args.power, mde=args.mde, treatment_share=args.split,
        min_samples_per_variant=args.min_samples, practical_threshold=args.practical_threshold,
    )
    if args.json:
        import json

        print(json.dumps(v.to_dict(), indent=2))
        return 0
    f, s, srm = v.fixed_horizon, v.sequential, v.srm
    level = f"{100 * (1 - args.alpha):g}%"
    print(f"control (A):    {sa}/{na} = {_fmt(f.rate_a, '.4f')}")
    print(f"treatment (B):  {sb}/{nb} = {_fmt(f.rate_b, '.4f')}")
    print(f"difference B-A: {_fmt(f.difference, '+.4f')}  (relative lift {_fmt(f.relative_lift, '+.2%')}, "
          f"Cohen's h {_fmt(f.cohens_h, '+.3f')})")
    print(f"fixed-horizon:  p={f.p_value:.4g}  {level} CI [{_fmt(f.ci_low, '+.4f')}, {_fmt(f.ci_high, '+.4f')}]")
    print(f"always-valid:   p={s.p_value:.4g}  {level} CI [{_fmt(s.ci_low, '+.4f')}, {_fmt(s.ci_high, '+.4f')}]"
          "  (mSPRT; decides)")
    print(f"sample ratio:   {'MISMATCH' if srm.mismatch else 'ok'} (treatment share "
          f"{_fmt(srm.observed_share_b, '.3f')} vs {args.split:g}, p={srm.p_value:.3g})")
    if v.plan is not None:
        print(f"sample plan:    {v.plan.n_control} control / {v.plan.n_treatment} treatment "
              f"(sequential design, MDE {args.mde:g}, power {args.power:g})")
    print(f"verdict:        {v.status}" + (f" ({v.winner})" if v.winner else ""))
    print(f"recommendation: {v.recommendation}")
    return 0
