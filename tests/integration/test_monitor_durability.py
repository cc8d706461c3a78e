"""Durability and concurrency of the production monitor on real SQLite files and real processes:
a SIGKILLed process loses no acknowledged batch, and concurrent threads lose no prediction."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pandas as pd
import pytest

from mlops.monitoring.production_monitor import ProductionMonitor, create_production_monitor

pytestmark = pytest.mark.integration

WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    import pandas as pd
    from mlops.monitoring.production_monitor import create_production_monitor

    rng = np.random.default_rng(0)
    baseline = pd.DataFrame({"a": rng.normal(0, 1, 500), "b": rng.normal(0, 1, 500)})
    monitor = create_production_monitor("durable_model", baseline_data=baseline)
    i = 0
    while True:
        i += 1
        n = 10 + i % 7
        frame = pd.DataFrame({"a": rng.normal(0, 1, n), "b": rng.normal(0, 1, n)})
        labels = rng.integers(0, 2, n)
        monitor.log_prediction_batch(frame, rng.integers(0, 2, n), labels, latency_ms=5.0)
        print(f"ok {i} {n}", flush=True)
    """
)

READER = textwrap.dedent(
    """
    import json
    from mlops.monitoring.production_monitor import ProductionMonitor

    monitor = ProductionMonitor("durable_model")
    summary = monitor.get_monitoring_summary(hours=24)
    print(json.dumps({"summary": summary, "has_baseline": monitor.drift_monitor is not None}))
    """
)


def _env(home) -> dict[str, str]:
    return {**os.environ, "MLOPS_HOME": str(home), "PYTHONUNBUFFERED": "1"}


def test_sigkill_loses_no_acknowledged_batch(_isolated_mlops_home):
    writer = subprocess.Popen([sys.executable, "-c", WRITER], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=_env(_isolated_mlops_home))
    acknowledged = []
    try:
        for line in writer.stdout:
            if line.startswith("ok "):
                _, index, n = line.split()
                acknowledged.append(int(n))
            if len(acknowledged) >= 40:
                break
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    assert writer.returncode == -signal.SIGKILL
    assert len(acknowledged) == 40, writer.stderr.read()

    reader = subprocess.run([sys.executable, "-c", READER], capture_output=True, text=True,
                            env=_env(_isolated_mlops_home), timeout=120, check=True)
    report = json.loads(reader.stdout)
    summary = report["summary"]
    # the writer may have committed a batch or two after its last "ok" reached us; none may be missing
    assert summary["total_batches"] >= len(acknowledged)
    assert summary["total_predictions"] >= sum(acknowledged)
    assert summary["labelled_predictions"] == summary["total_predictions"]
    assert report["has_baseline"] is True


def test_concurrent_threads_lose_no_prediction():
    rng = np.random.default_rng(1)
    baseline = pd.DataFrame({"a": rng.normal(0, 1, 300)})
    shared = create_production_monitor("concurrent_model", baseline_data=baseline)
    second = ProductionMonitor("concurrent_model")  # another object on the same database file
    sizes = {t: [int(s) for s in np.random.default_rng(t).integers(1, 30, 25)] for t in range(6)}
    errors: list[BaseException] = []
    start = threading.Barrier(len(sizes))

    def work(t: int) -> None:
        monitor = shared if t % 3 else second
        local = np.random.default_rng(100 + t)
        try:
            start.wait()
            for n in sizes[t]:
                frame = pd.DataFrame({"a": local.normal(0, 1, n)})
                monitor.log_prediction_batch(frame, local.integers(0, 2, n), local.integers(0, 2, n),
                                             latency_ms=1.0, error_count=1)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in sizes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    expected = sum(sum(v) for v in sizes.values())
    batches = sum(len(v) for v in sizes.values())
    summary = ProductionMonitor("concurrent_model").get_monitoring_summary()
    assert summary["total_predictions"] == expected
    assert summary["total_batches"] == batches
    assert summary["failed_predictions"] == batches
    assert summary["avg_error_rate"] == pytest.approx(batches / (expected + batches))


def test_retention_bounds_the_history(_isolated_mlops_home):
    from mlops.store.monitoring_store import MonitoringStore

    now = [1_800_000_000.0]
    store = MonitoringStore("retained", retention_seconds=3600, max_batches=50, max_alerts=5)
    monitor = ProductionMonitor("retained", store=store, clock=lambda: now[0],
                                alert_config={"cooldown_seconds": 0})
    rng = np.random.default_rng(2)
    for _ in range(80):
        monitor.log_prediction_batch(pd.DataFrame({"a": rng.normal(0, 1, 5)}), [0] * 5, latency_ms=900.0)
        now[0] += 1
    store.prune(now[0])
    summary = monitor.get_monitoring_summary()
    assert summary["total_batches"] == 50 and summary["total_predictions"] == 250
    assert sum(summary["alerts"].values()) == 5
    now[0] += 7200
    store.prune(now[0])
    assert monitor.get_monitoring_summary(hours=1000)["total_batches"] == 0
