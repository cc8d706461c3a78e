"""The collector's Prometheus source against a real Prometheus server (Debian's `prometheus`, which
`.ci/run` installs): Prometheus scrapes two loopback endpoints serving sidecar expositions, labelled
the way the Kubernetes service discovery labels pods, and the collector's instant query must give
exactly the numbers of merging the two sidecars directly."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from mlops.operator.collector import Collector, to_status_metrics
from mlops.operator.resources.spec import normalize_spec
from mlops.serving.sidecar_metrics import (
    LATENCY_BUCKETS,
    SidecarSnapshot,
    merge_snapshots,
    render_metrics,
    summarize,
)
from mlops.testing.cluster import free_port

pytestmark = pytest.mark.integration
T = "2026-01-01T00:00:00Z"
PROMETHEUS = shutil.which("prometheus")


def _snapshot(n_pred, correct, wrong, errors, fast, slow) -> SidecarSnapshot:
    buckets = {le: (fast if le >= 0.002 else 0) + (slow if le >= 0.2 else 0) for le in LATENCY_BUCKETS}
    return SidecarSnapshot(
        model="alz",
        predictions={"v1": n_pred},
        errors={"v1": errors},
        feedback={"v1": correct + wrong},
        confusion={("v1", "1", "1"): correct, ("v1", "0", "1"): wrong},
        latency_buckets={"v1": buckets},
        latency_sum={"v1": fast * 0.0015 + slow * 0.15},
        latency_count={"v1": fast + slow},
    )


def _serve(text: str) -> ThreadingHTTPServer:
    body = text.encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server API
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


@pytest.fixture
def prometheus_binary():
    if PROMETHEUS is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus is not installed; .ci/run installs Debian's prometheus package")
        pytest.skip("Debian's prometheus package is not installed (apt-get install prometheus)")
    return PROMETHEUS


def test_real_prometheus_scrape_then_query_gives_the_sidecars_numbers(tmp_path, prometheus_binary):
    a, b = _snapshot(120, 70, 30, 2, 110, 10), _snapshot(80, 30, 10, 0, 60, 20)
    expected = to_status_metrics(summarize(merge_snapshots([a, b])), T)
    servers = [_serve(render_metrics(s)) for s in (a, b)]
    targets = "\n".join(
        f"""      - targets: ["127.0.0.1:{srv.server_address[1]}"]
        labels: {{namespace: "ns", pod: "alz-v1-5d4f-{i}"}}"""
        for i, srv in enumerate(servers)
    )
    config = tmp_path / "prometheus.yml"
    config.write_text(
        f"""global:
  scrape_interval: 1s
scrape_configs:
  - job_name: sidecars
    static_configs:
{targets}
"""
    )
    port = free_port()
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [prometheus_binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            try:
                r = httpx.get(f"{url}/api/v1/query", params={"query": "count(mlops_predictions_total)"}, timeout=2)
                result = r.json()["data"]["result"] if r.status_code == 200 else []
                if result and result[0]["value"][1] == "2":
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "Prometheus did not scrape both sidecars within 60 s"
            time.sleep(0.5)

        cr = {"metadata": {"name": "alz", "namespace": "ns", "uid": "u"},
              "spec": {"modelName": "alz", "stableVersion": "v1",
                       "versions": [{"name": "v1", "artifact": {"uri": "s3://b/m", "sha256": "a" * 64}}]}}
        got = Collector(None, prometheus_url=url).collect(cr, normalize_spec(cr["spec"]), T)
        assert got == expected
        assert got["predictions"] == 200
        assert got["accuracy"] == pytest.approx(100 / 140)
        assert got["errorRate"] == pytest.approx(2 / 200)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
        for srv in servers:
            srv.shutdown()
            srv.server_close()
