"""`mlops demo`: the production monitor on generated data, in a few seconds, printing the guide's
"Model Performance Summary".

Why it exists: a newcomer's first command should show what the monitor measures and which alerts
it raises without any data or cluster. The run is deterministic (seeded data, a simulated clock
advancing 30 minutes per batch): a day of traffic for a classifier that is fine at first, then
slows down, then fails a few requests, then meets drifted data on which it is less accurate.
State goes to a temporary folder (deleted afterwards) unless ``--home DIR`` is given.
"""

from __future__ import annotations

import argparse

MODEL_NAME = "demo_classifier"
START = 1_767_225_600.0  # 2026-01-01T00:00:00Z: a fixed start keeps the output reproducible
BATCH_INTERVAL_SECONDS = 1800.0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="run the production monitor on generated data and print its summary"
    )
    parser.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    parser.add_argument("--batches", type=int, default=24, help="batches to log, 30 simulated minutes apart")
    parser.add_argument("--batch-size", type=int, default=500, help="predictions per batch (default 500)")
    parser.add_argument("--home", help="keep the monitoring state in this folder (must not hold demo state)")
    parser.add_argument("--quiet", action="store_true", help="print only the summary")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os
    import tempfile
    from pathlib import Path

    from mlops.commands._common import UsageError

    if args.batches < 4:
        raise UsageError("--batches must be at least 4")
    if args.batch_size < 10:
        raise UsageError("--batch-size must be at least 10")
    if args.home:
        home = Path(args.home)
        if (home / MODEL_NAME / "monitoring.db").exists():
            raise UsageError(f"{home} already holds demo state; pick an empty folder")
        return _with_home(home, args)
    with tempfile.TemporaryDirectory(prefix="mlops-demo-") as tmp:
        previous = os.environ.get("MLOPS_HOME")
        try:
            return _with_home(Path(tmp), args)
        finally:
            # the monitor read MLOPS_HOME; restore it for callers that run the demo in-process
            if previous is None:
                os.environ.pop("MLOPS_HOME", None)
            else:
                os.environ["MLOPS_HOME"] = previous


def _with_home(home, args: argparse.Namespace) -> int:
    import os

    os.environ["MLOPS_HOME"] = str(home)
    summary = simulate(args.seed, args.batches, args.batch_size, echo=None if args.quiet else print)
    print(format_summary(summary))
    return 0


class _SimulatedClock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def _features(rng, n: int, shift: float = 0.0):
    import pandas as pd

    return pd.DataFrame({
        "feature1": rng.normal(shift, 1.0, n),
        "feature2": rng.normal(0.0, 1.0, n),
        "feature3": rng.normal(0.0, 1.0, n),
        "site": rng.choice(["north", "south", "east"], size=n, p=[0.5, 0.3, 0.2]),
    })


def _outcomes(rng, frame, weight1: float):
    """The world's true labels: a noisy linear rule whose first weight changes when the concept drifts."""

    score = weight1 * frame["feature1"] - 1.0 * frame["feature2"] + 0.5 * frame["feature3"]
    return (score + rng.normal(0.0, 0.6, len(frame)) > 0).astype(int).to_numpy()


def _model(frame):
    """The deployed model: the rule it learned before the concept drifted."""
    score = 1.5 * frame["feature1"] - 1.0 * frame["feature2"] + 0.5 * frame["feature3"]
    return (score > 0).astype(int).to_numpy()


def simulate(seed: int, batches: int, batch_size: int, echo=print) -> dict:
    """Log ``batches`` batches through a :class:`ProductionMonitor`; returns its 24-hour summary."""
    import numpy as np

    from mlops.monitoring.production_monitor import create_production_monitor

    rng = np.random.default_rng(seed)
    clock = _SimulatedClock(START)
    baseline = _features(rng, 2000)
    baseline_labels = _outcomes(rng, baseline, 1.5)
    monitor = create_production_monitor(
        MODEL_NAME,
        baseline_data=baseline,
        baseline_labels=baseline_labels,
        baseline_predictions=_model(baseline),
        clock=clock,
    )
    if echo:
        echo(f"Baseline: {len(baseline)} rows, measured accuracy {monitor.baseline_accuracy:.3f}")
    slow = range(batches // 3, batches // 3 + 2)
    failing = batches // 2
    drifting = range(2 * batches // 3, batches)
    try:
        for i in range(batches):
            clock.now = START + (i + 1) * BATCH_INTERVAL_SECONDS
            drifted = i in drifting
            frame = _features(rng, batch_size, shift=0.8 if drifted else 0.0)
            labels = _outcomes(rng, frame, 0.3 if drifted else 1.5)
            latencies = rng.gamma(8.0, 12.0, batch_size) * (2.6 if i in slow else 1.0)
            result = monitor.log_prediction_batch(
                features=frame,
                predictions=_model(frame),
                true_labels=labels,
                model_version="v1.2.0",
                latency_ms=latencies,
                error_count=8 if i == failing else 0,
            )
            if echo:
                m = result["metrics"]
                alerts = ", ".join(f"{a['severity']} {a['alert_type']}" for a in result["alerts_triggered"]) or "-"
                echo(f"batch {i + 1:2d}  n={m['prediction_count']}  accuracy={m['accuracy']:.3f}  "
                     f"latency={m['latency_ms']:6.1f}ms  errors={m['error_count']}  "
                     f"drift={m['drift_score']:.2f}  alerts: {alerts}")
        return monitor.get_monitoring_summary(hours=24)
    finally:
        monitor.close()


def format_summary(summary: dict) -> str:
    """The guide's "Model Performance Summary" block."""

    def num(value, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    return f"""
📊 Model Performance Summary (Last 24 Hours)
============================================
Status: {summary['status']}
Total Predictions: {summary['total_predictions']:,}
Average Accuracy: {num(summary['avg_accuracy'], '.3f')}
Average Latency: {num(summary['avg_latency_ms'], '.1f')}ms
Average Error Rate: {num(summary['avg_error_rate'], '.3f')}
Drift Incidents: {summary['drift_incidents']}
Data Quality: {num(summary['avg_data_quality'], '.3f')}

Alerts:
- Critical: {summary['alerts'].get('CRITICAL', 0)}
- Warning: {summary['alerts'].get('WARNING', 0)}
- Info: {summary['alerts'].get('INFO', 0)}
"""
