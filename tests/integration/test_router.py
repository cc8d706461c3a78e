"""The router in front of two real model versions, each a `mlops serve` + `mlops sidecar` pair.

Checks the issue's router items end to end over HTTP on 127.0.0.1: sticky salted assignment that
survives a router restart, a ConfigMap-style table swap (symlink) ramping 0.3 -> 0.5 without moving
any treatment user, feedback reaching the counters of the version that served the prediction, forged
prediction ids refused, and 502/504 answers when an upstream is down or hangs.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from mlops.core.prediction_id import sign_prediction_id
from mlops.serving.routing_table import choose_version, load_routing_table
from mlops.serving.sidecar_metrics import parse_metrics
from mlops.testing.cluster import free_port
from mlops.testing.waiting import wait_http

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KEY = "router-test-key-0123456789abcdef-0123456789"  # >= 32 bytes, as required
FEATURES = {"Age": 72.0, "MMSE": 23.0, "EDUC": 16.0}


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mlops", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env)


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _table(urls: dict[str, str], share: float, **experiment) -> dict:
    return {
        "model": "alz", "stable_version": "v1",
        "versions": {v: {"url": u, "weight": 1.0 if v == "v1" else 0.0} for v, u in urls.items()},
        "experiment": {"name": "alz_v2_test", "salt": "salt-42", "control": "v1", "treatment": "v2",
                       "treatment_share": share, "segment": None, "paused": False, **experiment},
    }


class ConfigMapDir:
    """A folder laid out like a mounted ConfigMap: routing.json -> ..data/routing.json, ..data -> ts dir.
    Kubernetes updates it by writing a new timestamped dir and atomically swapping the ..data link."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.generation = 0

    @property
    def path(self) -> Path:
        return self.root / "routing.json"

    def write(self, table: dict) -> None:
        self.generation += 1
        ts = self.root / f"..2026_{self.generation:04d}"
        ts.mkdir()
        (ts / "routing.json").write_text(json.dumps(table))
        tmp_link = self.root / "..data_tmp"
        tmp_link.symlink_to(ts.name)
        os.replace(tmp_link, self.root / "..data")
        if not self.path.is_symlink():
            self.path.symlink_to("..data/routing.json")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("router")
    # One key for the router and every server, read from one file (as mounted from the operator's Secret).
    key_file = root / "signing-key" / "key"
    key_file.parent.mkdir()
    key_file.write_text(KEY + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_PREDICTION_ID")}
    env.update({"MLOPS_PREDICTION_ID_KEY_FILE": str(key_file), "MLOPS_HOME": str(root / "home")})
    rng = np.random.default_rng(5)
    n = 400
    frame = pd.DataFrame({"Age": rng.normal(75, 8, n).round(1), "MMSE": rng.integers(15, 31, n).astype(float),
                          "EDUC": rng.integers(6, 20, n).astype(float)})
    frame["label"] = ((frame.MMSE < 24) | (frame.Age > 82)).astype(int)
    frame.to_csv(root / "train.csv", index=False)
    trainers = [
        subprocess.Popen([sys.executable, "-m", "mlops", "train", "--data", str(root / "train.csv"), "--label",
                          "label", "--out", str(root / v), "--model-name", "alz", "--version", v,
                          "--algorithm", algo], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for v, algo in (("v1", "logistic"), ("v2", "forest"))
    ]
    for proc in trainers:
        assert proc.wait(timeout=120) == 0, proc.stderr.read().decode()[-2000:]

    procs: list[subprocess.Popen] = []
    ports = {v: (free_port(), free_port()) for v in ("v1", "v2")}
    try:
        for version, (server_port, sidecar_port) in ports.items():
            sha = (root / version / "model.sha256").read_text().split()[0]
            procs.append(_start(["sidecar", "--port", str(sidecar_port), "--profile",
                                 str(root / version / "profile.json"), "--model-name", "alz"], env))
            procs.append(_start(["serve", "--model-uri", (root / version / "model.skops").as_uri(), "--sha256", sha,
                                 "--version", version, "--sidecar-url", f"http://127.0.0.1:{sidecar_port}",
                                 "--flush-interval", "0.2", "--host", "127.0.0.1", "--port", str(server_port),
                                 "--log-level", "warning"], env))
        urls = {v: f"http://127.0.0.1:{p[0]}" for v, p in ports.items()}
        config = ConfigMapDir(root / "configmap")
        config.write(_table(urls, 0.3))
        router_port = free_port()
        router_args = ["route", "--table", str(config.path), "--port", str(router_port), "--poll-interval", "0.2",
                       "--read-timeout", "1.0"]
        procs.append(_start(router_args, env))
        for i, (server_port, sidecar_port) in enumerate(ports.values()):
            wait_http(f"http://127.0.0.1:{sidecar_port}/healthz", procs[2 * i])
            wait_http(f"http://127.0.0.1:{server_port}/health", procs[2 * i + 1])
        wait_http(f"http://127.0.0.1:{router_port}/healthz", procs[-1])
        yield {"procs": procs, "env": env, "router": f"http://127.0.0.1:{router_port}", "router_args": router_args,
               "config": config, "urls": urls, "sidecars": {v: f"http://127.0.0.1:{p[1]}" for v, p in ports.items()}}
    finally:
        _stop(procs)


def _served(client: httpx.Client, router: str, users: list[str]) -> dict[str, dict]:
    answers = {}
    for user in users:
        response = client.post(router + "/predict", json={"features": FEATURES, "user_id": user})
        assert response.status_code == 200, response.text
        answers[user] = response.json()
    return answers


USERS = [f"patient_{i}" for i in range(150)]


def test_assignment_is_sticky_salted_and_survives_a_restart_and_a_ramp(stack):
    router = stack["router"]
    table = load_routing_table(stack["config"].path)
    with httpx.Client(timeout=10.0) as client:
        first = _served(client, router, USERS)
        for user, answer in first.items():
            expected_version, expected_variant = choose_version(table, user)
            assert (answer["model_version"], answer["variant"]) == (expected_version, expected_variant), user
        treated = {u for u, a in first.items() if a["variant"] == "treatment"}
        assert 0.15 < len(treated) / len(USERS) < 0.45
        # The user key can also come from the header, with the same answer.
        header = client.post(router + "/predict", json={"features": FEATURES},
                             headers={"X-User-ID": USERS[0]}).json()
        assert header["model_version"] == first[USERS[0]]["model_version"]

        # Restart the router process: assignments are a function of (salt, user), nothing to lose.
        old = stack["procs"][-1]
        _stop([old])
        new = _start(stack["router_args"], stack["env"])
        stack["procs"][-1] = new
        wait_http(router + "/healthz", new)
        again = _served(client, router, USERS)
        assert {u: a["model_version"] for u, a in again.items()} == {u: a["model_version"] for u, a in first.items()}

        # Ramp 0.3 -> 0.5 the way the operator does: a new ConfigMap revision (symlink swap).
        stack["config"].write(_table(stack["urls"], 0.5))
        deadline = time.monotonic() + 15
        while client.get(router + "/healthz").json()["experiment"]["treatment_share"] != 0.5:
            assert time.monotonic() < deadline, "router did not reload the swapped table"
            time.sleep(0.1)
        ramped = _served(client, router, USERS)
        assert all(ramped[u]["variant"] == "treatment" for u in treated)
        assert len([u for u in USERS if ramped[u]["variant"] == "treatment"]) > len(treated)

        # Paused: control only. Then back to running.
        stack["config"].write(_table(stack["urls"], 0.5, paused=True))
        while client.get(router + "/healthz").json()["experiment"]["paused"] is not True:
            assert time.monotonic() < deadline + 15
            time.sleep(0.1)
        paused = _served(client, router, USERS[:30])
        assert {a["model_version"] for a in paused.values()} == {"v1"}

        # A broken table revision is refused; the last good one keeps routing.
        stack["config"].write({"model": "alz", "stable_version": "v9", "versions": {}})
        time.sleep(1.0)
        health = client.get(router + "/healthz").json()
        assert "invalid routing table" in (health["last_reload_error"] or "") and health["experiment"]["paused"] is True
        stack["config"].write(_table(stack["urls"], 0.3))
        while client.get(router + "/healthz").json()["experiment"]["treatment_share"] != 0.3:
            time.sleep(0.1)


def test_batch_is_split_by_user_and_rows_stay_in_order(stack):
    router = stack["router"]
    table = load_routing_table(stack["config"].path)
    users = USERS[:12]
    rows = [{**FEATURES, "Age": 60.0 + i} for i in range(len(users))]
    response = httpx.post(router + "/predict/batch", json={"batch_features": rows, "user_ids": users}, timeout=10)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["user_id"] for p in predictions] == users
    assert [p["model_version"] for p in predictions] == [choose_version(table, u)[0] for u in users]
    assert len({p["model_version"] for p in predictions}) == 2


def _sidecar_feedback(url: str) -> dict[str, float]:
    return parse_metrics(httpx.get(url + "/metrics", timeout=5).text).feedback


def test_feedback_reaches_the_version_that_served_and_forged_ids_are_refused(stack):
    router, sidecars = stack["router"], stack["sidecars"]
    with httpx.Client(timeout=10.0) as client:
        answers = _served(client, router, [f"fb_{i}" for i in range(40)])
        before = {v: _sidecar_feedback(url).get(v, 0.0) for v, url in sidecars.items()}
        by_version = {"v1": 0, "v2": 0}
        items = []
        for answer in answers.values():
            by_version[answer["model_version"]] += 1
            items.append({"prediction_id": answer["prediction_id"], "true_label": 1})
        assert by_version["v1"] and by_version["v2"]
        # Half one at a time, half in one mixed-version request (the router splits it).
        for item in items[:20]:
            response = client.post(router + "/feedback", json=item)
            assert response.status_code < 300, response.text
        response = client.post(router + "/feedback", json={"feedback": items[20:]})
        assert response.status_code == 200, response.text

        deadline = time.monotonic() + 15
        while True:
            after = {v: _sidecar_feedback(url) for v, url in sidecars.items()}
            got = {v: after[v].get(v, 0.0) - before[v] for v in sidecars}
            if got == by_version or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert got == by_version
        assert "v2" not in after["v1"] and "v1" not in after["v2"]  # nothing crossed to the other version

        genuine = answers["fb_0"]["prediction_id"]
        prefix, payload, signature = genuine.split(".")
        version = answers["fb_0"]["model_version"]
        other = "v2" if version == "v1" else "v1"
        edited = base64.urlsafe_b64encode(json.dumps([other, "1", "n"]).encode()).rstrip(b"=").decode()
        forged = [
            f"{prefix}.{payload}.{signature[:-2]}AA",  # tampered signature
            f"{prefix}.{edited}.{signature}",  # payload re-pointed at the other version
            sign_prediction_id(b"not-the-key", other, "1", "nonce"),  # signed with a different key
            "garbage",
            f"{prefix}.{payload}.{signature[:-1]}é",  # non-ASCII signature (was a plain-text 500)
        ]
        for pid in forged:
            response = client.post(router + "/feedback", json={"prediction_id": pid, "true_label": 1})
            assert response.status_code == 403, (pid, response.text)
            assert "prediction id rejected" in response.json()["error"]
        response = client.post(router + "/feedback", content=b"{oops", headers={"content-type": "application/json"})
        assert response.status_code == 400
        time.sleep(0.5)
        assert {v: _sidecar_feedback(url).get(v, 0.0) for v, url in sidecars.items()} == {
            v: before[v] + by_version[v] for v in sidecars}
        metrics = client.get(router + "/metrics").text
        assert 'mlops_router_feedback_rejected_total{reason="invalid_id"} 5.0' in metrics
        assert 'mlops_router_requests_total{variant="treatment",version="v2"}' in metrics


def test_upstream_down_is_502_and_hanging_is_504(stack):
    router, config = stack["router"], stack["config"]
    hanging = socket.socket()
    hanging.bind(("127.0.0.1", 0))
    hanging.listen(16)  # accepts connections (kernel backlog) but never answers
    closed_port = free_port()
    try:
        urls = {"v1": f"http://127.0.0.1:{closed_port}", "v2": f"http://127.0.0.1:{hanging.getsockname()[1]}"}
        config.write(_table(urls, 1.0))
        deadline = time.monotonic() + 15
        while httpx.get(router + "/healthz").json()["experiment"]["treatment_share"] != 1.0:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        response = httpx.post(router + "/predict", json={"features": FEATURES}, timeout=10)  # anonymous -> v1
        assert response.status_code == 502 and response.json()["version"] == "v1"
        response = httpx.post(router + "/predict", json={"features": FEATURES, "user_id": "u"}, timeout=10)
        assert response.status_code == 504 and "timed out" in response.json()["error"]
    finally:
        hanging.close()
        config.write(_table(stack["urls"], 0.3))
        # The next test must not race the router's reload of the good table.
        deadline = time.monotonic() + 15
        while httpx.get(router + "/healthz").json()["experiment"]["treatment_share"] != 0.3:
            assert time.monotonic() < deadline, "router did not reload the restored table"
            time.sleep(0.1)


def test_an_id_signed_by_one_server_verifies_in_another(stack):
    """Two separate `mlops serve` processes read one key file: ids one signs, the other accepts."""
    router, urls = stack["router"], stack["urls"]
    with httpx.Client(timeout=10.0) as client:
        answers = _served(client, router, [f"cross_{i}" for i in range(30)])
        for answer in answers.values():
            other = "v2" if answer["model_version"] == "v1" else "v1"
            response = client.post(urls[other] + "/feedback",
                                   json={"prediction_id": answer["prediction_id"], "true_label": 1})
            assert response.status_code == 202, response.text
        forged = sign_prediction_id(b"a-different-key-of-at-least-32-bytes!!", "v1", "1", "n")
        for url in urls.values():
            response = client.post(url + "/feedback", json={"prediction_id": forged, "true_label": 1})
            assert response.status_code == 400, response.text
