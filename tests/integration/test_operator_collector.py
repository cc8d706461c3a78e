"""The collector's three sources give the sidecar's own numbers: the endpoint override (two real HTTP
servers on loopback serving sidecar expositions) and the Prometheus query API (a loopback server
answering /api/v1/query with the same series, as Prometheus would after scraping both pods, and a real
Prometheus server from Debian scraping the two endpoints).
No cluster needed: neither source touches the API server without a baseline profile reference.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

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


def snapshot(n_pred, correct, wrong, errors, fast, slow) -> SidecarSnapshot:
    buckets = {}
    for le in LATENCY_BUCKETS:
        buckets[le] = (fast if le >= 0.002 else 0) + (slow if le >= 0.2 else 0)
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


A = snapshot(120, 70, 30, 2, 110, 10)
B = snapshot(80, 30, 10, 0, 60, 20)
EXPECTED = to_status_metrics(summarize(merge_snapshots([A, B])), T)


class _Server:
    def __init__(self, handler_fn):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server API
                status, ctype, body = handler_fn(self.path)
                outer.paths.append(self.path)
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.paths: list[str] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def cr():
    return {"metadata": {"name": "alz", "namespace": "ns", "uid": "u"},
            "spec": {"modelName": "alz", "stableVersion": "v1",
                     "versions": [{"name": "v1", "artifact": {"uri": "s3://b/m", "sha256": "a" * 64}}]}}


def test_endpoint_override_merges_two_sidecars(tmp_path):
    servers = [_Server(lambda path, s=s: (200, "text/plain", render_metrics(s).encode())) for s in (A, B)]
    try:
        endpoints = tmp_path / "endpoints.json"
        endpoints.write_text(json.dumps({"ns/alz": [s.url + "/metrics" for s in servers]}))
        collector = Collector(None, endpoints_file=str(endpoints))
        got = collector.collect(cr(), normalize_spec(cr()["spec"]), T)
        assert got == EXPECTED
        assert got["predictions"] == 200 and got["accuracy"] == pytest.approx(100 / 140)
        assert got["errorRate"] == pytest.approx(2 / 200)
        # another ModelDeployment is not in the file: falls through to pod discovery, which needs a cluster
        assert collector.override_endpoints("ns", "other") is None
    finally:
        for s in servers:
            s.close()


def test_one_sidecar_down_still_reports_the_others(tmp_path):
    server = _Server(lambda path: (200, "text/plain", render_metrics(A).encode()))
    try:
        endpoints = tmp_path / "endpoints.json"
        endpoints.write_text(json.dumps({"ns/alz": [server.url + "/metrics", "http://127.0.0.1:9/metrics"]}))
        got = Collector(None, endpoints_file=str(endpoints), timeout=2).collect(cr(), normalize_spec(cr()["spec"]), T)
        assert got["predictions"] == 120
    finally:
        server.close()


def test_prometheus_query_api_gives_the_same_numbers():
    series = []
    for pod, snap in (("alz-v1-abc-1", A), ("alz-v1-abc-2", B)):
        for family in text_string_to_metric_families(render_metrics(snap)):
            for sample in family.samples:
                metric = {"__name__": sample.name, **sample.labels, "namespace": "ns", "pod": pod}
                series.append({"metric": metric, "value": [1700000000.0, repr(float(sample.value))]})

    def answer(path):
        query = urllib.parse.parse_qs(urllib.parse.urlparse(path).query)["query"][0]
        assert 'namespace="ns"' in query and 'pod=~"alz-.*"' in query
        body = {"status": "success", "data": {"resultType": "vector", "result": series}}
        return 200, "application/json", json.dumps(body).encode()

    prom = _Server(answer)
    try:
        got = Collector(None, prometheus_url=prom.url).collect(cr(), normalize_spec(cr()["spec"]), T)
        assert got == EXPECTED
        assert prom.paths and prom.paths[0].startswith("/api/v1/query")
    finally:
        prom.close()


@pytest.fixture
def prometheus_binary():
    if PROMETHEUS is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus is not installed; .ci/run installs Debian's prometheus package")
        pytest.skip("Debian's prometheus package is not installed (apt-get install prometheus)")
    return PROMETHEUS


def test_real_prometheus_scrape_then_query_gives_the_sidecars_numbers(tmp_path, prometheus_binary):
    servers = [_Server(lambda path, s=s: (200, "text/plain", render_metrics(s).encode())) for s in (A, B)]
    targets = "\n".join(
        f"""      - targets: ["{srv.url.removeprefix('http://')}"]
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

        got = Collector(None, prometheus_url=url).collect(cr(), normalize_spec(cr()["spec"]), T)
        assert got == EXPECTED
        assert got["predictions"] == 200
        assert got["accuracy"] == pytest.approx(100 / 140)
        assert got["errorRate"] == pytest.approx(2 / 200)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
        for srv in servers:
            srv.close()
