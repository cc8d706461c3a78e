"""The chart's alert rules evaluated once by a real Prometheus (Debian's package) scraping a real
`mlops sidecar` process fed with prediction events: the recording rules compute the sidecar's
error ratio and latency, and the error-rate, latency, scrape-down and operator-absent alerts fire
for the version and targets that cross their thresholds, and only for them.

The rule file is loaded as shipped, except that each alert's `for:` is set to 0s (the test cannot
wait 10 minutes); `promtool test rules` covers the `for:` durations.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from mlops.testing.cluster import free_port
from mlops.testing.waiting import wait_until

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "charts" / "mlops-operator" / "files" / "prometheus-rules.yaml"


@pytest.fixture
def prometheus_binary():
    path = shutil.which("prometheus")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus is not installed; .ci/run installs Debian's prometheus package")
        pytest.skip("Debian's prometheus package is not installed (apt-get install prometheus)")
    return path


def events(version: str, n: int, start: int, error_every: int, latency: float) -> list[dict]:
    return [{
        "prediction_id": f"{version}-{start + i}", "model_name": "churn", "model_version": version,
        "timestamp": 1.7e9 + start + i, "latency_seconds": latency,
        "features": {"tenure_months": float(i % 50), "plan": "basic" if i % 2 else "plus"},
        "prediction": i % 2, "confidence": 0.8, "error": bool(error_every and i % error_every == 0),
    } for i in range(n)]


def test_alerts_fire_on_a_real_sidecar_scraped_by_a_real_prometheus(tmp_path, prometheus_binary):
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                rule["for"] = "0s"
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))

    sidecar_port, prom_port = free_port(), free_port()
    sidecar = subprocess.Popen(
        [sys.executable, "-m", "mlops", "sidecar", "--port", str(sidecar_port), "--model-name", "churn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    sidecar_url = f"http://127.0.0.1:{sidecar_port}"
    (tmp_path / "prometheus.yml").write_text(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [rules.yaml]
scrape_configs:
  - job_name: mlops-models
    static_configs:
      - targets: ["127.0.0.1:{sidecar_port}"]
        labels: {{namespace: prod, pod: churn-v1-abc}}
  - job_name: mlops-models-missing
    static_configs:
      - targets: ["127.0.0.1:9"]
        labels: {{namespace: prod, pod: churn-v2-gone}}
""")
    log = (tmp_path / "prometheus.log").open("w")
    prom = subprocess.Popen(
        [prometheus_binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    prom_url = f"http://127.0.0.1:{prom_port}"

    def diag() -> str:
        return (tmp_path / "prometheus.log").read_text()[-2000:]

    def query(expr: str) -> list[dict]:
        r = httpx.get(f"{prom_url}/api/v1/query", params={"query": expr}, timeout=5)
        return r.json()["data"]["result"] if r.status_code == 200 else []

    def safe(fn):
        def call():
            assert prom.poll() is None, diag()
            assert sidecar.poll() is None, sidecar.stderr.read().decode()[-2000:]
            try:
                return fn()
            except httpx.HTTPError:
                return None
        return call

    try:
        wait_until(safe(lambda: httpx.get(sidecar_url + "/healthz", timeout=1).status_code == 200), 60, "sidecar")
        wait_until(safe(lambda: query('up{job="mlops-models"} == 1')), 60, "Prometheus to scrape the sidecar", diag)
        # Counters must grow while Prometheus scrapes for rate() to see them: feed over ~6 scrapes.
        # v1: every 5th prediction fails, 400 ms each; v2: no failures, 10 ms each.
        with httpx.Client(timeout=30) as client:
            for step in range(6):
                body = {"predictions": events("v1", 50, step * 50, 5, 0.4) + events("v2", 50, step * 50, 0, 0.01),
                        "feedback": []}
                r = client.post(sidecar_url + "/v1/events", json=body)
                assert r.status_code == 202, r.text
                time.sleep(1.2)

        ratio = wait_until(safe(lambda: {s["metric"]["version"]: float(s["value"][1])
                                         for s in query("mlops:prediction_error_ratio:rate5m")} or None),
                           60, "the error-ratio recording rule", diag)
        assert ratio["v1"] == pytest.approx(0.2, abs=0.02)
        assert ratio["v2"] == 0
        p95 = {s["metric"]["version"]: float(s["value"][1]) for s in query("mlops:prediction_latency_seconds:p95_5m")}
        assert p95["v1"] > 0.25 > 0.05 > p95["v2"]

        def firing() -> set[tuple[str, str]]:
            alerts = httpx.get(f"{prom_url}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
            return {(a["labels"]["alertname"], a["labels"].get("version") or a["labels"].get("job", ""))
                    for a in alerts if a["state"] == "firing"}

        expected = {("MlopsModelHighErrorRate", "v1"), ("MlopsModelHighLatency", "v1"),
                    ("MlopsScrapeTargetDown", "mlops-models-missing"), ("MlopsOperatorAbsent", "")}
        got = wait_until(safe(lambda: firing() if expected <= firing() else None), 60, "the alerts to fire", diag)
        assert got == expected, got  # nothing for v2, nor for the sidecar that is up
        alerts = httpx.get(f"{prom_url}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
        err = next(a for a in alerts if a["labels"]["alertname"] == "MlopsModelHighErrorRate")
        assert err["labels"] == {"alertname": "MlopsModelHighErrorRate", "severity": "critical",
                                 "namespace": "prod", "model": "churn", "version": "v1"}
        assert err["annotations"]["summary"] == "Model churn v1 fails 20% of predictions"
        assert err["annotations"]["runbook_url"].endswith("#mlopsmodelhigherrorrate")
    finally:
        for proc in (prom, sidecar):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        prom.wait(timeout=30)
        sidecar.wait(timeout=30)
