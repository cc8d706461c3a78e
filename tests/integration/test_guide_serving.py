"""The guide's "Production Model Serving" section, as written: its curl examples against a real
`mlops serve --demo` process (what `make run` starts) on a free port, and its Python Quick Start."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from mlops.testing.cluster import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Copied verbatim from the guide (PRODUCTION_MLOPS_GUIDE.md, "API Endpoints").
GUIDE_CURLS = {
    "health": "curl http://localhost:5000/health",
    "single": """curl -X POST http://localhost:5000/predict \\
  -H "Content-Type: application/json" \\
  -d '{
    "features": {
      "M/F": 0,
      "Age": 72,
      "EDUC": 16,
      "SES": 3,
      "MMSE": 23,
      "CDR": 0.5,
      "eTIV": 1450,
      "nWBV": 0.72,
      "ASF": 1.15
    },
    "user_id": "patient_12345",
    "experiment_name": "alzheimer_model_v2_test"
  }'""",
    "batch": """curl -X POST http://localhost:5000/predict/batch \\
  -H "Content-Type: application/json" \\
  -d '{
    "batch_features": [
      {"M/F": 0, "Age": 72, "EDUC": 16, "MMSE": 23},
      {"M/F": 1, "Age": 68, "EDUC": 12, "MMSE": 28}
    ],
    "user_ids": ["patient_1", "patient_2"]
  }'""",
    "monitoring": "curl http://localhost:5000/monitoring/status?hours=24",
    "experiment": "curl http://localhost:5000/experiments/alzheimer_model_v2_test/status",
}


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("mlops-home")
    port = free_port()
    env = {**os.environ, "MLOPS_HOME": str(home)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlops", "serve", "--demo", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "warning"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited early: {proc.stdout.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("server did not become healthy")
    yield port
    proc.terminate()
    # uvicorn shuts down gracefully, then re-raises SIGTERM: the conventional "terminated" status.
    assert proc.wait(30) in (0, -signal.SIGTERM)


def _curl(name: str, port: int) -> tuple[int, dict]:
    command = GUIDE_CURLS[name].replace("localhost:5000", f"127.0.0.1:{port}").replace("\\\n", " ")
    argv = shlex.split(command) + ["-s", "-w", "\n%{http_code}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout
    body, _, status = out.rpartition("\n")
    return int(status), json.loads(body)


def test_guide_curl_examples_work_as_written(demo_server):
    port = demo_server
    status, health = _curl("health", port)
    assert status == 200
    assert health["status"] == "healthy" and health["model_name"] == "alzheimer_classifier"
    assert health["current_model_version"] == "v1.0.0" and health["models_loaded"] == ["v1.0.0", "v2.0.0"]
    assert {"uptime_seconds", "request_count", "error_count"} <= set(health)

    status, single = _curl("single", port)
    assert status == 200
    assert single["prediction"] in (0, 1) and single["user_id"] == "patient_12345"
    assert single["variant"] in ("control", "treatment")
    assert single["model_version"] == {"control": "v1.0.0", "treatment": "v2.0.0"}[single["variant"]]
    assert 0.5 <= single["confidence"] <= 1.0 and single["latency_ms"] > 0 and single["timestamp"].endswith("Z")
    # The same user always gets the same variant (sticky assignment).
    assert _curl("single", port)[1]["variant"] == single["variant"]

    status, batch = _curl("batch", port)
    assert status == 200 and batch["count"] == 2
    assert [p["user_id"] for p in batch["predictions"]] == ["patient_1", "patient_2"]
    assert all(p["prediction"] in (0, 1) and p["prediction_id"] for p in batch["predictions"])

    feedback = httpx.post(f"http://127.0.0.1:{port}/feedback",
                          json={"prediction_id": single["prediction_id"], "true_label": 1}, timeout=10)
    assert feedback.status_code == 202 and feedback.json()["experiment_outcomes"] == 1

    status, monitoring = _curl("monitoring", port)
    assert status == 200 and monitoring["period_hours"] == 24
    assert monitoring["total_predictions"] == 4 and monitoring["status"] in ("HEALTHY", "DEGRADED", "CRITICAL")

    status, experiment = _curl("experiment", port)
    assert status == 200
    assert experiment["experiment_name"] == "alzheimer_model_v2_test" and experiment["status"] == "running"
    assert sum(experiment["sample_counts"].values()) == 2


def test_guide_python_quick_start(tmp_path, monkeypatch):
    from mlops.serving.demo import build_demo
    from mlops.serving.production_server import create_production_server

    artifacts = build_demo(tmp_path / "models")
    monkeypatch.chdir(tmp_path)
    Path("data/processed").mkdir(parents=True)
    Path("data/processed/baseline_features.csv").write_bytes(artifacts.baseline_csv.read_bytes())

    # --- the guide's Quick Start, as written ---
    server = create_production_server(
        model_name="alzheimer_classifier",
        enable_monitoring=True,
        enable_ab_testing=True
    )
    server.load_model_version("v1.0.0", uri=artifacts.model_uris["v1.0.0"])
    server.setup_baseline_monitoring("data/processed/baseline_features.csv")
    # ---
    assert server.baseline["rows"] == 500 and server.baseline["labelled"]
    assert server.monitor.baseline_accuracy is not None
    results = server.predict_batch([{"M/F": 0, "Age": 72, "EDUC": 16, "MMSE": 23}] * 3)
    assert len(results) == 3 and all(r["model_version"] == "v1.0.0" for r in results)
    server.close()
    assert server.monitor.get_monitoring_summary(hours=1)["total_predictions"] == 3
