"""Idle API writes: a ModelDeployment whose sidecars keep failing costs one Warning Event per failure
episode, even when the error of the moment flaps (a 503 one time, a timeout the next, as on a loaded
node). Before, every change of the error text was a new Event: about 8 Event writes a minute at 100
idle ModelDeployments with unreachable sidecars (benchmarks/operator.py), growing with the count."""

from __future__ import annotations

import itertools
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mlops.operator.collector import CollectError, Collector
from mlops.operator.handlers import Controller, OperatorConfig
from mlops.operator.resources import naming as n


class RecordingKube:
    """Only what the Controller touches on the collection path; Events are recorded, not sent."""

    def __init__(self) -> None:
        self.on_request = None
        self.events: list[tuple[str, str, str]] = []

    def post_event(self, cr, etype, reason, message, now) -> None:
        self.events.append((etype, reason, message))


@pytest.fixture
def flapping_sidecar():
    """A sidecar stand-in that alternates between a 503 and a response slower than the timeout."""
    turns = itertools.count()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server API
            if next(turns) % 2:
                time.sleep(0.6)
            self.send_response(503)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    finally:
        server.shutdown()
        server.server_close()


def _cr(name: str) -> dict:
    return {"apiVersion": "mlops.duetmind.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": "ns", "uid": "u-1", "generation": 1},
            "spec": {"modelName": name, "stableVersion": "v1", "versions": [
                {"name": "v1", "artifact": {"uri": "s3://b/m.skops", "sha256": "ab" * 32}}]}}


def test_a_flapping_error_is_one_episode_and_one_event(tmp_path, flapping_sidecar, caplog):
    endpoints = tmp_path / "endpoints.json"
    endpoints.write_text(json.dumps({"ns/m": [flapping_sidecar]}))
    kube = RecordingKube()
    controller = Controller(kube, OperatorConfig(namespaces=["ns"], metrics_endpoints_file=str(endpoints)))
    controller.collector.timeout = 0.3
    controller.known[("ns", "m")] = _cr("m")
    caplog.set_level("DEBUG", logger="mlops.operator")
    try:
        for _ in range(6):
            assert controller.scrape_sync("ns", "m") is None
    finally:
        controller.shutdown()
    # the log follows the same rule: one warning per episode (1,000 resources with dead sidecars
    # must not write 2,000 warnings a minute), the repeats at debug level
    failures = [r for r in caplog.records if "metrics collection for ns/m failed" in r.getMessage()]
    assert [r.levelname for r in failures] == ["WARNING"] + ["DEBUG"] * 5, [r.levelname for r in failures]
    texts = {e[2] for e in kube.events}
    assert [e[1] for e in kube.events] == ["MetricsCollectionFailed"], kube.events
    assert texts and all(flapping_sidecar in t for t in texts)
    # a new set of failing sources is a new episode
    controller._scrape_failed(controller.known[("ns", "m")], "no sidecar answered: other", episode=("other",))
    assert len(kube.events) == 2


def test_collect_error_names_the_failing_sources_sorted_and_pod_order_is_stable():
    collector = Collector(None, timeout=0.2)
    with pytest.raises(CollectError) as info:
        collector._scrape(["http://127.0.0.1:9/metrics", "http://127.0.0.1:7/metrics"])
    assert info.value.sources == ("http://127.0.0.1:7/metrics", "http://127.0.0.1:9/metrics")

    def pod(ip):
        return {"metadata": {"labels": {"app.kubernetes.io/component": n.COMPONENT_MODEL}},
                "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}}

    for order in (["10.0.0.2", "10.0.0.1"], ["10.0.0.1", "10.0.0.2"]):
        c = Collector(None, pod_source=lambda ns, inst, order=order: [pod(ip) for ip in order])
        assert c.pod_endpoints({"metadata": {"name": "m", "namespace": "ns"}}) == [
            "http://10.0.0.1:9090/metrics", "http://10.0.0.2:9090/metrics"]
