"""The user's guide's monitoring snippets, run as written (with a seed prepended), against the real
monitor and its SQLite store; assertions are on what they print. Sections: Quick Start, Alert
Configuration, Real-time Metrics (Monitoring Dashboard), Incident Response Workflow; plus the
`mlops demo` command that prints the same summary block."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.integration

QUICK_START = '''
from mlops.monitoring.production_monitor import create_production_monitor
import pandas as pd
import numpy as np

# Create sample baseline data
baseline_data = pd.DataFrame({
    'feature1': np.random.normal(0, 1, 1000),
    'feature2': np.random.normal(0, 1, 1000),
    'feature3': np.random.normal(0, 1, 1000)
})
baseline_labels = pd.Series(np.random.choice([0, 1], 1000))

# Initialize production monitor
monitor = create_production_monitor(
    model_name="alzheimer_classifier",
    baseline_data=baseline_data,
    baseline_labels=baseline_labels
)

# Log predictions for monitoring
current_data = pd.DataFrame({
    'feature1': np.random.normal(0.1, 1, 100),  # Slight drift
    'feature2': np.random.normal(0, 1, 100),
    'feature3': np.random.normal(0, 1, 100)
})
predictions = np.random.choice([0, 1], 100)
true_labels = np.random.choice([0, 1], 100)

result = monitor.log_prediction_batch(
    features=current_data,
    predictions=predictions,
    true_labels=true_labels,
    model_version="v1.2.0",
    latency_ms=120.0
)

print(f"Logged {result['metrics']['prediction_count']} predictions")
print(f"Accuracy: {result['metrics']['accuracy']:.3f}")
print(f"Drift Score: {result['metrics']['drift_score']:.3f}")

# Get monitoring summary
summary = monitor.get_monitoring_summary(hours=24)
print(f"System Status: {summary['status']}")
print(f"Total Predictions: {summary['total_predictions']}")
print(f"Average Accuracy: {summary['avg_accuracy']:.3f}")
'''

ALERT_CONFIGURATION = '''
from mlops.monitoring.production_monitor import AlertConfig

# Custom alert configuration
alert_config = AlertConfig(
    critical_accuracy_drop=0.05,    # 5% accuracy drop triggers critical alert
    warning_accuracy_drop=0.02,     # 2% accuracy drop triggers warning
    critical_error_rate=0.02,       # 2% error rate triggers critical alert
    critical_latency_ms=500.0,      # 500ms latency triggers critical alert
    drift_threshold=0.1             # 10% drift threshold
)

monitor = create_production_monitor(
    model_name="alzheimer_classifier",
    alert_config=alert_config
)
'''

REAL_TIME_METRICS = '''
# Get comprehensive monitoring summary
summary = monitor.get_monitoring_summary(hours=24)

print(f"""
📊 Model Performance Summary (Last 24 Hours)
============================================
Status: {summary['status']}
Total Predictions: {summary['total_predictions']:,}
Average Accuracy: {summary['avg_accuracy']:.3f}
Average Latency: {summary['avg_latency_ms']:.1f}ms
Average Error Rate: {summary['avg_error_rate']:.3f}
Drift Incidents: {summary['drift_incidents']}
Data Quality: {summary['avg_data_quality']:.3f}

Alerts:
- Critical: {summary['alerts'].get('CRITICAL', 0)}
- Warning: {summary['alerts'].get('WARNING', 0)}
- Info: {summary['alerts'].get('INFO', 0)}
""")
'''

INCIDENT_RESPONSE = '''
def handle_critical_alert(alert_type, metrics):
    """Handle critical alerts with automated response."""

    if alert_type == "accuracy_drop":
        # Trigger immediate retraining
        trigger.force_retrain(f"Critical accuracy drop: {metrics['accuracy']}")

        # Activate rollback if available
        if hasattr(server, 'rollback_model'):
            server.rollback_model("previous_stable")

    elif alert_type == "high_error_rate":
        # Scale down traffic to problematic model
        if ab_manager.active_experiments:
            for exp_name in ab_manager.active_experiments:
                ab_manager.pause_experiment(exp_name)

    elif alert_type == "concept_drift":
        # Schedule immediate retraining
        trigger.force_retrain("Concept drift detected")

        # Notify ML team
        send_notification(
            channel="ml-ops-alerts",
            message=f"Concept drift detected - retraining initiated"
        )

# Register alert handler
monitor.register_alert_handler(handle_critical_alert)
'''


def run(code: str, namespace: dict, capsys) -> str:
    exec(compile(code, "<guide>", "exec"), namespace)
    return capsys.readouterr().out


def printed(out: str, label: str) -> str:
    match = re.search(rf"^{re.escape(label)}: ?(.*)$", out, re.MULTILINE)
    assert match, f"{label!r} not printed in:\n{out}"
    return match.group(1)


def test_quick_start(capsys):
    namespace: dict = {}
    out = run("import numpy as np\nnp.random.seed(0)\n" + QUICK_START, namespace, capsys)
    expected_accuracy = float(np.mean(namespace["predictions"] == namespace["true_labels"]))
    assert "Logged 100 predictions" in out
    assert printed(out, "Accuracy") == f"{expected_accuracy:.3f}"
    drift = float(printed(out, "Drift Score"))
    assert 0.0 <= drift <= 1.0 and drift == pytest.approx(namespace["result"]["metrics"]["drift_score"], abs=5e-4)
    assert printed(out, "System Status") in {"HEALTHY", "DEGRADED", "CRITICAL"}
    assert printed(out, "Total Predictions") == "100"
    assert printed(out, "Average Accuracy") == f"{expected_accuracy:.3f}"


def test_quick_start_detects_a_large_drift(capsys):
    # the same code with a drift the tests can see in 100 rows (the guide's 0.1 SD usually passes unseen)
    namespace: dict = {}
    code = QUICK_START.replace("np.random.normal(0.1, 1, 100)", "np.random.normal(1.0, 1, 100)")
    out = run("import numpy as np\nnp.random.seed(1)\n" + code, namespace, capsys)
    assert namespace["result"]["metrics"]["feature_drift_detected"] is True
    assert namespace["result"]["metrics"]["drifted_features"] == ["feature1"]
    assert printed(out, "Drift Score") == "0.333"


def test_alert_configuration(capsys):
    namespace: dict = {}
    run("from mlops.monitoring.production_monitor import create_production_monitor\n" + ALERT_CONFIGURATION,
        namespace, capsys)
    config = namespace["monitor"].alert_config
    assert (config.critical_accuracy_drop, config.warning_accuracy_drop, config.critical_error_rate,
            config.critical_latency_ms, config.drift_threshold) == (0.05, 0.02, 0.02, 500.0, 0.1)
    assert config.warning_latency_ms == 200.0


def test_real_time_metrics_after_batches_of_10_20_30(capsys):
    from mlops.monitoring.production_monitor import create_production_monitor

    rng = np.random.default_rng(5)
    monitor = create_production_monitor(
        "alzheimer_classifier", baseline_data=pd.DataFrame({"f": rng.normal(0, 1, 500)})
    )
    correct = 0
    for n, latency, errors in ((10, 100.0, 0), (20, 130.0, 1), (30, 250.0, 0)):
        labels = rng.integers(0, 2, n)
        predictions = labels.copy()
        predictions[: n // 5] = 1 - predictions[: n // 5]  # 80% right
        correct += n - n // 5
        monitor.log_prediction_batch(pd.DataFrame({"f": rng.normal(0, 1, n)}), predictions, labels,
                                     latency_ms=latency, error_count=errors)
    out = run(REAL_TIME_METRICS, {"monitor": monitor}, capsys)
    assert printed(out, "Total Predictions") == "60"
    assert printed(out, "Average Accuracy") == f"{correct / 60:.3f}"
    assert printed(out, "Average Latency") == f"{(10 * 100 + 20 * 130 + 30 * 250) / 60:.1f}ms"
    assert printed(out, "Average Error Rate") == f"{1 / 61:.3f}"
    assert printed(out, "- Critical") == "1"  # 1 failure in 21 requests (4.8%) in batch 2
    assert printed(out, "- Warning") == "1"  # 250 ms in batch 3
    assert printed(out, "Status") == "CRITICAL"


def test_incident_response_handler_drives_retraining(capsys):
    from mlops.monitoring.data_trigger import create_data_trigger
    from mlops.monitoring.production_monitor import create_production_monitor

    rng = np.random.default_rng(9)
    baseline = pd.DataFrame({"f": rng.normal(0, 1, 1000)})
    labels = rng.integers(0, 2, 1000)
    baseline_predictions = labels.copy()
    baseline_predictions[:100] = 1 - baseline_predictions[:100]  # baseline accuracy 0.9
    monitor = create_production_monitor("alzheimer_classifier", baseline_data=baseline, baseline_labels=labels,
                                        baseline_predictions=baseline_predictions)
    trigger = create_data_trigger("alzheimer_classifier", production_monitor=monitor)
    retrains: list[tuple[str, str]] = []
    trigger.retraining_handler = lambda trigger_type, reason: retrains.append((trigger_type, reason)) or True
    notifications: list[dict] = []

    class Server:
        def __init__(self):
            self.rollbacks = []

        def rollback_model(self, target):
            self.rollbacks.append(target)

    server = Server()
    namespace = {"monitor": monitor, "trigger": trigger, "server": server, "ab_manager": None,
                 "send_notification": lambda **kw: notifications.append(kw)}
    run(INCIDENT_RESPONSE, namespace, capsys)

    current = pd.DataFrame({"f": rng.normal(0, 1, 400)})
    y = rng.integers(0, 2, 400)
    predictions = y.copy()
    predictions[:160] = 1 - predictions[:160]  # accuracy 0.6
    result = monitor.log_prediction_batch(current, predictions, y, model_version="v1.2.0", latency_ms=50.0)
    raised = {a["alert_type"] for a in result["alerts_triggered"]}
    assert {"accuracy_drop", "concept_drift"} <= raised
    assert server.rollbacks == ["previous_stable"]
    assert notifications == [{"channel": "ml-ops-alerts", "message": "Concept drift detected - retraining initiated"}]
    # the retraining engine's limits may coalesce the second request; at least the first ran
    assert retrains and retrains[0][1].startswith("Critical accuracy drop: 0.6")


def test_mlops_demo_prints_the_summary_deterministically(tmp_path):
    command = [sys.executable, "-m", "mlops", "demo", "--quiet"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    second = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    assert first.stdout == second.stdout
    out = first.stdout
    assert "📊 Model Performance Summary (Last 24 Hours)" in out
    assert printed(out, "Total Predictions") == "12,000"
    assert printed(out, "Status") == "CRITICAL"
    assert int(printed(out, "Drift Incidents")) >= 1
    assert int(printed(out, "- Critical")) >= 1 and int(printed(out, "- Warning")) >= 1


def test_mlops_demo_keeps_state_with_home_and_refuses_to_mix(tmp_path):
    home = tmp_path / "demo-home"
    command = [sys.executable, "-m", "mlops", "demo", "--quiet", "--batches", "6", "--home", str(home)]
    subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    assert (home / "demo_classifier" / "monitoring.db").exists()
    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2
    assert again.stderr.strip().count("\n") == 0 and "already holds demo state" in again.stderr
    reader = textwrap.dedent(f"""
        import os
        os.environ["MLOPS_HOME"] = {str(home)!r}
        from mlops.monitoring.production_monitor import ProductionMonitor
        print(ProductionMonitor("demo_classifier").get_monitoring_summary(hours=24 * 365 * 10)["total_predictions"])
    """)
    out = subprocess.run([sys.executable, "-c", reader], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "3000"
