"""A retried event batch is counted once: the server's SidecarSink retries a POST whose response was
lost, and a real ``mlops sidecar`` process ignores a ``batch_id`` it has already applied. Batches
without a batch id (the old wire format) stay valid and are always applied."""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
import time

import httpx
import orjson
import pytest

from mlops.serving.sidecar import RecentIds
from mlops.serving.sinks import PredictionRecord, SidecarSink
from mlops.testing.cluster import free_port

pytestmark = [pytest.mark.integration]


@pytest.fixture()
def sidecar():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mlops", "sidecar", "--host", "127.0.0.1", "--port", str(port),
                             "--model-name", "m"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"sidecar exited: {proc.stdout.read()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("sidecar did not start")
    yield url
    proc.terminate()
    proc.wait(30)


def _metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith(name + "_created"))


class _LosesFirstResponse(http.server.BaseHTTPRequestHandler):
    """Forwards each POST to the sidecar; for the first one it drops the sidecar's answer and closes
    the connection, like a network blip after the sidecar applied the batch."""

    upstream = ""
    posts: list[bytes] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["content-length"]))
        type(self).posts.append(body)
        answer = httpx.post(self.upstream + self.path, content=body,
                            headers={"content-type": "application/json"}, timeout=10)
        if len(type(self).posts) == 1:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_response(answer.status_code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer.content)))
        self.end_headers()
        self.wfile.write(answer.content)

    def log_message(self, *args) -> None:
        return None


def _records(n: int) -> list[PredictionRecord]:
    return [PredictionRecord(f"id{i}", "m", "v1", 1_700_000_000.0 + i, 0.002, {"x": float(i)}, 1, 0.9)
            for i in range(n)]


def test_a_retry_after_a_lost_response_is_counted_once(sidecar):
    handler = type("Handler", (_LosesFirstResponse,), {"upstream": sidecar, "posts": []})
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        sink = SidecarSink(f"http://127.0.0.1:{proxy.server_address[1]}", timeout=5, retries=2)
        sink.write(_records(7), [])  # first attempt applied but unanswered, the retry is a duplicate
        sink.write(_records(3), [])  # a new batch: new id, applied
        sink.close()
    finally:
        proxy.shutdown()
        proxy.server_close()
    posts = [orjson.loads(p) for p in handler.posts]
    assert len(posts) == 3 and posts[0] == posts[1] and posts[2]["batch_id"] != posts[0]["batch_id"]
    assert _metric(sidecar, "mlops_predictions_total") == 10
    assert _metric(sidecar, "mlops_sidecar_duplicate_batches_total") == 1


def test_batches_without_an_id_are_still_accepted_and_always_applied(sidecar):
    old = {"predictions": [{"prediction_id": "p", "model_name": "m", "model_version": "v1",
                            "timestamp": 1.0, "latency_seconds": 0.001, "features": {}, "prediction": 1,
                            "confidence": 0.9, "error": False}]}
    for _ in range(2):
        r = httpx.post(f"{sidecar}/v1/events", json=old, timeout=10)
        assert r.status_code == 202 and r.json() == {"accepted": 1}
    with_id = {**old, "batch_id": "b-1"}
    first = httpx.post(f"{sidecar}/v1/events", json=with_id, timeout=10)
    again = httpx.post(f"{sidecar}/v1/events", json=with_id, timeout=10)
    assert first.json() == {"accepted": 1}
    assert again.status_code == 202 and again.json() == {"accepted": 0, "duplicate_batch": "b-1"}
    assert _metric(sidecar, "mlops_predictions_total") == 3
    bad = httpx.post(f"{sidecar}/v1/events", json={**old, "batch_id": ""}, timeout=10)
    assert bad.status_code == 422


def test_recent_ids_memory_is_bounded():
    ids = RecentIds(3)
    for i in range(5):
        ids.add(f"b{i}")
    assert len(ids) == 3 and "b0" not in ids and "b1" not in ids and "b4" in ids
