"""`mlops sidecar`: the monitoring sidecar that runs beside `mlops serve` in every model pod."""

from __future__ import annotations

import argparse

from mlops.commands._common import UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sidecar",
        help="run the monitoring sidecar (receives prediction/feedback events, exports /metrics)",
        description="Receive prediction and feedback events from the model server on POST /v1/events, "
        "count them on the baseline profile's bins, expose /metrics (Prometheus), /summary and /healthz.",
    )
    parser.add_argument("--port", type=int, default=9090, help="port to listen on (default 9090)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--profile", help="baseline profile JSON (from `mlops train`); without it no drift "
                        "or data quality is counted")
    parser.add_argument("--model-name", help="model name reported in the metrics' `model` label")
    parser.add_argument("--baseline-accuracy", type=float,
                        help="measured baseline accuracy, reported with the accuracy drop in /summary")
    parser.add_argument("--feedback-ledger", metavar="PATH",
                        help="SQLite file remembering which prediction ids were labelled, so a replayed or "
                        "retried feedback is counted once, also across restarts (default: in memory only)")
    parser.add_argument("--arms-state", metavar="PATH",
                        help="file where the per-experiment-arm counts are saved at a clean shutdown and resumed "
                        "(same instance id) at the next start, so a restarted sidecar loses no A/B counts "
                        "(put it on a volume that outlives the container; default: not persisted)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be between 1 and 65535, got {args.port}")
    if args.baseline_accuracy is not None and not 0.0 <= args.baseline_accuracy <= 1.0:
        raise UsageError(f"--baseline-accuracy must be in [0, 1], got {args.baseline_accuracy}")
    from mlops.serving.sidecar import load_profile, run_sidecar

    if args.arms_state:
        import os

        folder = os.path.dirname(os.path.abspath(args.arms_state))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise UsageError(f"--arms-state {args.arms_state}: folder {folder} does not exist or is not writable")

    profile = None
    if args.profile:
        try:
            profile = load_profile(args.profile)
        except FileNotFoundError as exc:
            raise UsageError(f"--profile {args.profile}: no such file") from exc
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"--profile {args.profile}: not a baseline profile ({exc})") from exc
    if args.feedback_ledger:
        import sqlite3

        from mlops.store.feedback_store import FeedbackLedger

        try:
            FeedbackLedger(args.feedback_ledger).close()
        except (OSError, sqlite3.Error) as exc:
            raise UsageError(f"--feedback-ledger {args.feedback_ledger}: cannot open it ({exc})") from exc
    run_sidecar(args.host, args.port, profile=profile, model_name=args.model_name,
                baseline_accuracy=args.baseline_accuracy, feedback_ledger=args.feedback_ledger,
                arms_state=args.arms_state)
    return 0
