"""Test and demo support for ABExperiments on the local control plane, without pods that run.

Why it exists: the integration tests and ``examples/02-ab-experiment/run_local.py`` need the same
stand-ins for what a kubelet would do with KWOK pods: real ``mlops serve`` + ``mlops sidecar``
processes per version on loopback, the real ``mlops route`` reading a folder laid out like a mounted
ConfigMap, a thread copying the operator's routing ConfigMap into it (in-cluster Service URLs mapped
to the loopback servers, the ``..data`` link swapped as Kubernetes does), the operator as a process
under its own RBAC with a shiftable clock (``--clock-offset-file``), and a seeded simulator that
sends users through the router and labels predictions with a known accuracy per arm.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from mlops.operator.k8s import Kube
from mlops.testing import waiting
from mlops.testing.cluster import free_port

KEY = "k" * 40
INTERVAL = 1.0  # --metrics-interval of the operator under test
FEATURES = {"age": 71.0, "score": 24.5}


def start_mlops(args: list[str], env: dict[str, str], log: Path | None = None) -> subprocess.Popen:
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - owned by the process
    proc = subprocess.Popen([sys.executable, "-m", "mlops", *args], stdout=out, stderr=subprocess.STDOUT, env=env)
    if log:
        out.close()
    return proc


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, diag: Callable[[], str] = lambda: ""):
    """Polls every 0.1 s: the experiment tests report how fast the operator reacted."""
    return waiting.wait_until(predicate, timeout, what, diag, interval=0.1)


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 240) -> None:
    waiting.wait_http(url, proc, timeout)


def stop_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


class ConfigMapDir:
    """A folder laid out like a mounted ConfigMap (routing.json -> ..data/routing.json)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.generation = 0

    @property
    def path(self) -> Path:
        return self.root / "routing.json"

    def write(self, text: str) -> None:
        self.generation += 1
        ts = self.root / f"..2026_{self.generation:05d}"
        ts.mkdir()
        (ts / "routing.json").write_text(text)
        tmp_link = self.root / "..data_tmp"
        tmp_link.symlink_to(ts.name)
        os.replace(tmp_link, self.root / "..data")
        if not self.path.is_symlink():
            self.path.symlink_to("..data/routing.json")


class Kubelet(threading.Thread):
    """Copies the routing ConfigMap into the router's folder, Service URLs mapped to loopback."""

    def __init__(self, kube: Kube, namespace: str, name: str, folder: ConfigMapDir, urls: dict[str, str]):
        super().__init__(daemon=True)
        self.kube, self.namespace, self.name, self.folder, self.urls = kube, namespace, name, folder, urls
        self.stopped = threading.Event()
        self.last: str | None = None
        self.synced_at: list[tuple[float, dict]] = []

    def sync(self) -> bool:
        cm = self.kube.get("ConfigMap", self.namespace, f"{self.name}-routing")
        text = ((cm or {}).get("data") or {}).get("routing.json")
        if not text or text == self.last:
            return False
        table = json.loads(text)
        for version, route in table["versions"].items():
            route["url"] = self.urls[version]
        self.folder.write(json.dumps(table))
        self.last = text
        self.synced_at.append((time.monotonic(), table))
        return True

    def run(self) -> None:
        while not self.stopped.is_set():
            with contextlib.suppress(Exception):
                self.sync()
            self.stopped.wait(0.1)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Operator:
    def __init__(self, kubeconfig: Path, namespaces: list[str], workdir: Path):
        self.kubeconfig, self.namespaces, self.workdir = kubeconfig, namespaces, workdir
        self.log = workdir / "operator.log"
        self.clock_file = workdir / "clock-offset"
        self.clock_file.write_text("0")
        self.endpoints = workdir / "endpoints.json"
        self.endpoints.write_text("{}")
        self.proc: subprocess.Popen | None = None

    def start(self) -> Operator:
        args = ["operator", "--kubeconfig", str(self.kubeconfig)]
        for ns in self.namespaces:
            args += ["-n", ns]
        args += ["--bind", "127.0.0.1", "--metrics-port", "0", "--liveness-port", str(free_port()),
                 "--resync-interval", "30", "--metrics-interval", str(INTERVAL), "--metrics-endpoints",
                 str(self.endpoints), "--clock-offset-file", str(self.clock_file), "--log-format", "text"]
        self.proc = start_mlops(args, {**os.environ}, self.log)
        return self

    def shift_clock(self, hours: float) -> None:
        self.clock_file.write_text(str(float(self.clock_file.read_text() or 0) + hours * 3600))

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "operator log:\n" + "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


class Scenario:
    """One namespace: a ModelDeployment `alz` (v1, v2), its router, the kubelet thread, an operator."""

    def __init__(self, cluster, admin: Kube, kubeconfig: Path, pairs: dict, models: Path, workdir: Path):
        self.cluster, self.admin, self.pairs, self.workdir = cluster, admin, pairs, workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.ns = f"abx-{uuid.uuid4().hex[:8]}"
        cluster.create_namespace(self.ns)
        self.op = Operator(kubeconfig, [self.ns], workdir)
        info = pairs["info"]
        self.op.endpoints.write_text(json.dumps({f"{self.ns}/alz": [info[v]["sidecar"] + "/metrics" for v in info]}))
        self.op.start()
        versions = [{"name": v, "artifact": {"uri": (models / v / "model.skops").as_uri(),
                                             "sha256": sha256_of(models / v / "model.skops")}} for v in ("v1", "v2")]
        self.apply({"apiVersion": "mlops.duetmind.io/v1alpha1", "kind": "ModelDeployment",
                    "metadata": {"name": "alz"},
                    "spec": {"modelName": "alz", "stableVersion": "v1", "versions": versions,
                             "monitoring": {"collectIntervalSeconds": 5}}})
        self.folder = ConfigMapDir(workdir / "configmap")
        self.kubelet = Kubelet(admin, self.ns, "alz", self.folder, {v: info[v]["server"] for v in info})
        wait_until(self.kubelet.sync, 60, "routing ConfigMap", self.op.tail)
        self.kubelet.start()
        port = free_port()
        self.router_proc = start_mlops(["route", "--table", str(self.folder.path), "--port", str(port),
                                   "--poll-interval", "0.1"], pairs["env"])
        self.router = f"http://127.0.0.1:{port}"
        wait_http(self.router + "/healthz", self.router_proc)

    def apply(self, manifest: dict) -> None:
        self.cluster.kubectl("apply", "-n", self.ns, "-f", "-", input=json.dumps(manifest))

    def experiment(self, name: str, **spec) -> None:
        self.apply({"apiVersion": "mlops.duetmind.io/v1alpha1", "kind": "ABExperiment", "metadata": {"name": name},
                    "spec": {"modelDeployment": "alz", "controlVersion": "v1", "treatmentVersion": "v2",
                             "minSamplesPerVariant": 200, "minimumDetectableEffect": 0.05, **spec}})

    def abx(self, name: str) -> dict:
        return self.admin.get("ABExperiment", self.ns, name) or {}

    def status(self, name: str) -> dict:
        return self.abx(name).get("status") or {}

    def condition(self, name: str, ctype: str) -> dict:
        return next((c for c in self.status(name).get("conditions") or [] if c["type"] == ctype), {})

    def events(self, reason: str) -> list[dict]:
        return [e for e in self.admin.list("Event", self.ns) if e.get("reason") == reason]

    def router_table(self) -> dict:
        return httpx.get(self.router + "/routing", timeout=5).json()

    def close(self) -> None:
        self.kubelet.stopped.set()
        stop_all([self.router_proc])
        self.op.stop()
        self.cluster.kubectl("delete", "namespace", self.ns, "--wait=false", check=False)



class Simulator:
    """Seeded traffic through the router: predictions, then feedback labelled to a target accuracy per arm."""

    def __init__(self, router: str, seed: int) -> None:
        self.router = router
        self.rng = np.random.default_rng(seed)
        self.sent = {"control": 0, "treatment": 0, "none": 0}  # answered predictions per arm
        self.labelled = {"control": 0, "treatment": 0}
        self.errors = {"control": 0, "treatment": 0}

    async def _one(self, client, sem, user, accuracy, bad: bool):
        async with sem:
            features = {**FEATURES, "score": "n/a"} if bad else FEATURES
            r = await client.post("/predict", json={"features": features, "user_id": user})
            variant = r.headers.get("x-mlops-variant")
            if bad:
                assert r.status_code == 422, r.text
                self.errors[variant] = self.errors.get(variant, 0) + 1
                return None
            assert r.status_code == 200, r.text
            body = r.json()
            return variant, body

    def run(self, users: list[str], accuracy: dict[str, float], *, per_user: int = 1,
            bad: Callable[[str], bool] = lambda u: False, in_arm: Callable[[str], bool] = lambda u: True) -> None:
        asyncio.run(self._run(users, accuracy, per_user, bad, in_arm))

    async def _run(self, users, accuracy, per_user, bad, in_arm):
        sem = asyncio.Semaphore(16)
        # idle connections expire before the router's keep-alive timeout (5 s): no stale-connection race
        limits = httpx.Limits(max_keepalive_connections=16, keepalive_expiry=2.0)
        async with httpx.AsyncClient(base_url=self.router, timeout=60, limits=limits) as client:
            jobs = [(u, bad(u)) for u in users for _ in range(per_user)]
            results = await asyncio.gather(*(self._one(client, sem, u, accuracy, b) for u, b in jobs))
            feedback = []
            for (user, _), result in zip(jobs, results, strict=True):
                if result is None:
                    continue
                variant, body = result
                arm = variant if variant in ("control", "treatment") and in_arm(user) else "none"
                self.sent[arm] += 1
                acc = accuracy.get(variant, 0.85)
                predicted = int(body["prediction"])
                true = predicted if self.rng.random() < acc else 1 - predicted
                feedback.append({"prediction_id": body["prediction_id"], "true_label": true})
                if arm != "none":
                    self.labelled[arm] += 1
            for start in range(0, len(feedback), 500):
                r = await client.post("/feedback", json={"feedback": feedback[start:start + 500]})
                assert r.status_code in (200, 202), r.text


def arm_totals(info: dict, experiment: str) -> tuple[float, float]:
    """(predictions, labels) of ``experiment`` held by the sidecars right now (``/v1/arms``)."""
    from mlops.core.arm_counts import table_from_list

    predictions = labelled = 0.0
    for v in info.values():
        body = httpx.get(v["sidecar"] + "/v1/arms", timeout=5).json()
        for (exp, _phase, _arm), counts in table_from_list(body["arms"]).items():
            if exp == experiment:
                predictions += counts.predictions
                labelled += counts.labelled
    return predictions, labelled


def users(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{i}" for i in range(n)]




def train_models(root: Path) -> Path:
    """Train v1 (logistic) and v2 (forest) of model `alz` with `mlops train` into ``root/v1``, ``root/v2``."""
    import pandas as pd

    rng = np.random.default_rng(5)
    n = 400
    frame = pd.DataFrame({"age": rng.normal(70, 8, n).round(1), "score": rng.normal(25, 3, n).round(2)})
    frame["label"] = ((frame.score < 24) | (frame.age > 78)).astype(int)
    frame.to_csv(root / "train.csv", index=False)
    env = {**os.environ, "MLOPS_HOME": str(root / "home")}
    trainers = [subprocess.Popen([sys.executable, "-m", "mlops", "train", "--data", str(root / "train.csv"),
                                  "--label", "label", "--out", str(root / v), "--model-name", "alz", "--version", v,
                                  "--algorithm", algo], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                for v, algo in (("v1", "logistic"), ("v2", "forest"))]
    for proc in trainers:
        if proc.wait(timeout=180) != 0:
            raise RuntimeError(f"mlops train failed: {proc.stderr.read().decode()[-2000:]}")
    return root


def start_pairs(models: Path, home: Path) -> dict[str, Any]:
    """One `mlops serve` + `mlops sidecar` pair per version; stop with ``stop_all(pairs["procs"].values())``."""
    env = {**os.environ, "MLOPS_PREDICTION_ID_KEY": KEY, "MLOPS_HOME": str(home)}
    home.mkdir(parents=True, exist_ok=True)
    procs: dict[str, subprocess.Popen] = {}
    info: dict[str, dict] = {}
    try:
        for v in ("v1", "v2"):
            sp, mp = free_port(), free_port()
            # as in the pod: per-arm counts survive a clean restart (the state volume outlives the container)
            sidecar_args = ["sidecar", "--port", str(sp), "--model-name", "alz",
                            "--arms-state", str(home / f"{v}-arms-state.json")]
            procs[f"{v}-sidecar"] = start_mlops(sidecar_args, env)
            procs[f"{v}-server"] = start_mlops([
                "serve", "--model-uri", (models / v / "model.skops").as_uri(), "--sha256",
                sha256_of(models / v / "model.skops"), "--version", v, "--model-name", "alz",
                "--sidecar-url", f"http://127.0.0.1:{sp}", "--flush-interval", "0.1", "--host", "127.0.0.1",
                "--port", str(mp), "--log-level", "warning"], env)
            info[v] = {"server": f"http://127.0.0.1:{mp}", "sidecar": f"http://127.0.0.1:{sp}",
                       "sidecar_args": sidecar_args}
        for v in ("v1", "v2"):
            wait_http(info[v]["sidecar"] + "/healthz", procs[f"{v}-sidecar"])
            wait_http(info[v]["server"] + "/health", procs[f"{v}-server"])
    except BaseException:
        stop_all(list(procs.values()))
        raise
    return {"info": info, "procs": procs, "env": env}
