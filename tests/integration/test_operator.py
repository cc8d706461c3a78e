"""The operator against the real local control plane, running as a real `mlops operator` process under
its own ServiceAccount bound to manifests/rbac.yaml (not the admin credential).

Workload pods are KWOK pods (they become Ready without running); the metrics test starts real
`mlops serve` + `mlops sidecar` processes on loopback and points the collector at them with the
endpoint override file.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from mlops.operator.k8s import Kube
from mlops.operator.ownership import ANN_APPLIED_HASH
from mlops.operator.resources import naming as n
from mlops.operator.resources.model_deployment import ANN_ROUTING_HASH
from mlops.testing.cluster import free_port
from mlops.testing.waiting import wait_http, wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------- helpers
class OperatorProcess:
    """`mlops operator` as a subprocess, logging to a file."""

    def __init__(self, kubeconfig: Path, namespaces: list[str], workdir: Path, *extra: str):
        self.kubeconfig = kubeconfig
        self.namespaces = namespaces
        self.log_path = workdir / f"operator-{uuid.uuid4().hex[:6]}.log"
        self.extra = extra
        self.proc: subprocess.Popen | None = None
        self.metrics_port = free_port()
        self.liveness_port = free_port()

    def start(self) -> OperatorProcess:
        args = [sys.executable, "-m", "mlops", "operator", "--kubeconfig", str(self.kubeconfig)]
        for ns in self.namespaces:
            args += ["-n", ns]
        args += ["--bind", "127.0.0.1", "--metrics-port", str(self.metrics_port),
                 "--liveness-port", str(self.liveness_port), "--resync-interval", "5", *self.extra]
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "operator log:\n" + "\n".join(text[-lines:])

    def metrics_text(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mdep_manifest(name: str, versions: list[dict], stable: str, **spec) -> dict:
    return {
        "apiVersion": "mlops.duetmind.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {"modelName": name, "stableVersion": stable, "versions": versions, **spec},
    }


def version(name: str, uri: str, sha: str, replicas: int = 1) -> dict:
    return {"name": name, "artifact": {"uri": uri, "sha256": sha}, "replicas": replicas}


def apply(cluster, namespace: str, manifest: dict) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))


def get_mdep(kube: Kube, namespace: str, name: str) -> dict:
    return kube.get_mdep(namespace, name) or {}


def is_ready(kube: Kube, namespace: str, name: str) -> bool:
    cr = get_mdep(kube, namespace, name)
    st = cr.get("status") or {}
    return st.get("phase") == "Ready" and st.get("observedGeneration") == cr["metadata"]["generation"]


def owned_objects(kube: Kube, namespace: str, name: str) -> dict[tuple[str, str], dict]:
    out = {}
    for kind in ("Deployment", "Service", "ConfigMap", "ServiceAccount"):
        for obj in kube.list(kind, namespace, n.owned_selector(name)):
            out[(kind, obj["metadata"]["name"])] = obj
    return out


def condition(cr: dict, ctype: str) -> dict:
    return next((c for c in (cr.get("status") or {}).get("conditions") or [] if c["type"] == ctype), {})


def events(kube: Kube, namespace: str, reason: str) -> list[dict]:
    return [e for e in kube.list("Event", namespace) if e.get("reason") == reason]


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def module_namespaces(cluster, restricted_namespace) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:6]
    names = {"main": f"op-main-{suffix}", "art": f"op-art-{suffix}", "metrics": f"op-metrics-{suffix}"}
    for ns in names.values():
        cluster.create_namespace(ns)
    names["restricted"] = restricted_namespace
    yield names
    for key, ns in names.items():
        if key != "restricted":
            cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture(scope="module")
def endpoints_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("operator") / "endpoints.json"
    path.write_text("{}")
    return path


@pytest.fixture(scope="module")
def operator(operator_kubeconfig, module_namespaces, endpoints_file, tmp_path_factory):
    op = OperatorProcess(
        operator_kubeconfig, list(module_namespaces.values()), tmp_path_factory.mktemp("oplog"),
        "--metrics-interval", "1", "--metrics-endpoints", str(endpoints_file),
        # these tests verify file:// artifacts of the test's own files: the administrator opts in
        "--artifact-allowed-schemes", "file,https,s3,gs",
    ).start()
    try:
        wait_until(lambda: _healthy(op), 60, "operator liveness endpoint", op.tail)
        yield op
    finally:
        op.stop()


def _healthy(op: OperatorProcess) -> bool:
    if op.proc.poll() is not None:
        raise AssertionError(f"operator exited with {op.proc.returncode}\n{op.tail()}")
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"http://127.0.0.1:{op.liveness_port}/healthz", timeout=1).status_code == 200
    return False


@pytest.fixture
def artifacts(tmp_path) -> dict[str, tuple[str, str]]:
    """Three distinct artifact files: version -> (file:// URI, sha256)."""
    out = {}
    for v in ("v1", "v2", "v3"):
        path = tmp_path / f"model-{v}.skops"
        path.write_bytes(f"model {v} ".encode() * 100)
        out[v] = (path.as_uri(), sha256_of(path))
    return out


# ---------------------------------------------------------------------------------------------- tests
def test_examples_reconcile_to_ready_in_the_restricted_namespace(cluster, admin, operator, module_namespaces):
    ns = module_namespaces["restricted"]
    examples = []
    for path in sorted((REPO / "examples").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "ModelDeployment":
                examples.append(doc)
    assert examples, "examples/ has no ModelDeployment"
    for doc in examples:
        apply(cluster, ns, doc)
    for doc in examples:
        name = doc["metadata"]["name"]
        wait_until(lambda name=name: is_ready(admin, ns, name), 90, f"{name} Ready", operator.tail)
        cr = get_mdep(admin, ns, name)
        objs = owned_objects(admin, ns, name)
        versions = doc["spec"]["versions"]
        assert len(objs) == 4 + 2 * len(versions)  # SA, router Deployment + Service + ConfigMap, per version 2
        for obj in objs.values():
            refs = obj["metadata"]["ownerReferences"]
            assert refs == [{"apiVersion": "mlops.duetmind.io/v1alpha1", "kind": "ModelDeployment", "name": name,
                             "uid": cr["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]
        # The signing key router and model pods share: one Secret, owned, created once with >= 32 bytes.
        secret = admin.get("Secret", ns, n.signing_key_secret_name(name))
        assert secret is not None and secret["metadata"]["ownerReferences"][0]["uid"] == cr["metadata"]["uid"]
        assert len(base64.b64decode(secret["data"]["key"])) >= 32
        st = cr["status"]
        assert condition(cr, "Ready")["status"] == "True"
        assert st["url"] == f"http://{name}.{ns}.svc.cluster.local"
        assert {v["name"]: v["readyReplicas"] for v in st["versions"]} == {
            v["name"]: v.get("replicas", 1) for v in versions}
        # The pods exist and are Ready in a namespace enforcing the restricted profile: PodSecurity admitted them.
        pods = admin.list("Pod", ns, f"{n.LABEL_DEPLOYMENT}={name}")
        assert len(pods) == sum(v.get("replicas", 1) for v in versions) + 1
        for pod in pods:
            assert any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"]["conditions"])
    failed = [e for e in admin.list("Event", ns) if e.get("reason") == "FailedCreate"]
    assert not failed, [e["message"] for e in failed]


@pytest.mark.slow
def test_updates_touch_only_what_changed_prune_and_garbage_collection(cluster, admin, operator,
                                                                      module_namespaces, artifacts):
    ns = module_namespaces["main"]
    (u1, s1), (u2, s2), (u3, s3) = artifacts["v1"], artifacts["v2"], artifacts["v3"]
    spec_versions = [version("v1", u1, s1), version("v2", u2, s2)]
    apply(cluster, ns, mdep_manifest("m", spec_versions, "v1"))
    wait_until(lambda: is_ready(admin, ns, "m"), 60, "m Ready", operator.tail)

    def fingerprint():
        return {key: (obj["metadata"].get("generation"), obj["metadata"]["resourceVersion"])
                for key, obj in owned_objects(admin, ns, "m").items()}

    def changed(before, after):
        keys = set(before) | set(after)
        # Deployments: generation moves only with spec changes (status updates move resourceVersion)
        return {k for k in keys if k not in before or k not in after
                or (before[k][0] if k[0] == "Deployment" else before[k][1])
                != (after[k][0] if k[0] == "Deployment" else after[k][1])}

    def applies() -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in operator.metrics_text().splitlines()
                   if line.startswith("mlops_operator_api_requests_total{") and 'verb="apply"' in line)

    wait_until(lambda: is_ready(admin, ns, "m"), 30, "m settled")
    time.sleep(1)
    key_before = admin.get("Secret", ns, "m-signing-key")["data"]["key"]
    before, applied_before = fingerprint(), applies()
    time.sleep(6)  # at least one periodic resync: nothing changed, so nothing is even sent
    assert changed(before, fingerprint()) == set()
    assert applies() == applied_before, "a resync re-applied unchanged objects"

    spec_versions[0]["replicas"] = 2
    apply(cluster, ns, mdep_manifest("m", spec_versions, "v1"))
    wait_until(lambda: is_ready(admin, ns, "m")
               and get_mdep(admin, ns, "m")["status"]["versions"][0]["readyReplicas"] == 2, 60, "v1 at 2", operator.tail)
    after = fingerprint()
    assert changed(before, after) == {("Deployment", "m-v1")}

    spec_versions.append(version("v3", u3, s3))
    apply(cluster, ns, mdep_manifest("m", spec_versions, "v1"))
    wait_until(lambda: is_ready(admin, ns, "m"), 60, "m Ready with v3", operator.tail)
    after2 = fingerprint()
    # the router Deployment rolls too: its pod template carries the routing table's hash, so
    # status.currentVersion only moves once every router pod serves the new table
    assert changed(after, after2) == {("Deployment", "m-v3"), ("Service", "m-v3"), ("ConfigMap", "m-routing"),
                                      ("Deployment", "m")}
    table = json.loads(owned_objects(admin, ns, "m")[("ConfigMap", "m-routing")]["data"]["routing.json"])
    assert table["stable_version"] == "v1" and table["versions"]["v1"]["weight"] == 1.0
    assert set(table["versions"]) == {"v1", "v2", "v3"}

    del spec_versions[1]  # remove v2
    apply(cluster, ns, mdep_manifest("m", spec_versions, "v1"))
    wait_until(lambda: ("Deployment", "m-v2") not in owned_objects(admin, ns, "m"), 60, "v2 pruned", operator.tail)
    remaining = set(owned_objects(admin, ns, "m"))
    assert ("Service", "m-v2") not in remaining
    assert {("Deployment", "m-v1"), ("Deployment", "m-v3"), ("Service", "m-v3")} <= remaining
    assert events(admin, ns, "Pruned")
    wait_until(lambda: not admin.list("Pod", ns, f"{n.LABEL_VERSION}=v2"), 60, "v2 pods gone")

    assert admin.get("Secret", ns, "m-signing-key")["data"]["key"] == key_before  # never regenerated
    cluster.kubectl("delete", "-n", ns, "modeldeployment", "m", "--wait=true", "--timeout=30s")
    wait_until(lambda: admin.get("Secret", ns, "m-signing-key") is None, 60, "signing key garbage-collected")
    wait_until(lambda: not owned_objects(admin, ns, "m") and not admin.list("Pod", ns, f"{n.LABEL_DEPLOYMENT}=m"),
               60, "garbage collection of everything m owned")


def test_invalid_artifact_keeps_previous_version_serving(cluster, admin, operator, module_namespaces, artifacts):
    ns = module_namespaces["art"]
    u1, s1 = artifacts["v1"]
    apply(cluster, ns, mdep_manifest("a", [version("v1", u1, s1)], "v1"))
    wait_until(lambda: is_ready(admin, ns, "a"), 60, "a Ready", operator.tail)
    dep_before = admin.get("Deployment", ns, "a-v1")

    wrong = "0" * 64
    apply(cluster, ns, mdep_manifest("a", [version("v1", u1, wrong)], "v1"))

    def degraded():
        cr = get_mdep(admin, ns, "a")
        return (cr["status"].get("observedGeneration") == cr["metadata"]["generation"]
                and condition(cr, "Degraded").get("status") == "True" and cr)

    cr = wait_until(degraded, 60, "Degraded condition", operator.tail)
    cond = condition(cr, "Degraded")
    assert cond["reason"] == "ArtifactVerificationFailed"
    assert "sha256 mismatch" in cond["message"] and s1 in cond["message"]
    assert cr["status"]["phase"] == "Degraded"
    dep_after = admin.get("Deployment", ns, "a-v1")
    assert dep_after["metadata"]["annotations"][n.ANN_ARTIFACT_SHA256] == s1
    assert dep_after["metadata"]["generation"] == dep_before["metadata"]["generation"]
    assert dep_after["status"].get("readyReplicas") == 1
    evs = wait_until(lambda: events(admin, ns, "ArtifactVerificationFailed"), 30, "Warning Event")
    assert evs[0]["type"] == "Warning" and "sha256 mismatch" in evs[0]["message"]

    # A new stable version whose artifact fails is not rolled out: traffic stays on v1.
    bad_uri = u1.replace("model-v1", "missing")
    apply(cluster, ns, mdep_manifest("a", [version("v1", u1, s1), version("v2", bad_uri, s1)], "v2"))
    cr = wait_until(lambda: (lambda c: c["status"].get("observedGeneration") == c["metadata"]["generation"] and c)(
        get_mdep(admin, ns, "a")), 60, "observed new generation", operator.tail)
    assert admin.get("Deployment", ns, "a-v2") is None
    table = json.loads(admin.get("ConfigMap", ns, "a-routing")["data"]["routing.json"])
    assert table["stable_version"] == "v1" and list(table["versions"]) == ["v1"]
    assert cr["status"]["currentVersion"] == "v1"
    assert "no such file" in condition(cr, "Degraded")["message"]
    assert "mlops_operator_reconciles_total" in operator.metrics_text()


# ---------------------------------------------------------------------------------------------- metrics
@pytest.fixture(scope="module")
def trained_model(tmp_path_factory):
    rng = np.random.default_rng(7)
    rows = 1500
    frame = pd.DataFrame({"age": rng.normal(70, 8, rows), "score": rng.normal(25, 3, rows),
                          "group": rng.choice(["a", "b"], rows)})
    logit = 0.15 * (frame["age"] - 70) - 0.4 * (frame["score"] - 25) + (frame["group"] == "a") * 0.5
    frame["label"] = (logit + rng.normal(0, 1, rows) > 0).astype(int)
    out = tmp_path_factory.mktemp("model")
    frame.to_csv(out / "train.csv", index=False)
    subprocess.run([sys.executable, "-m", "mlops", "train", "--data", str(out / "train.csv"), "--label", "label",
                    "--out", str(out / "m"), "--model-name", "alz", "--version", "v1"], check=True,
                   capture_output=True, timeout=180)
    return out / "m", frame


@pytest.fixture(scope="module")
def serving_pairs(trained_model, tmp_path_factory):
    """Two real `mlops serve` + `mlops sidecar` process pairs on loopback, one model version."""
    model_dir, _ = trained_model
    model = model_dir / "model.skops"
    procs, pairs = [], []
    try:
        for i in range(2):
            home = tmp_path_factory.mktemp(f"home{i}")
            env = {**os.environ, "MLOPS_HOME": str(home)}
            sp, mp = free_port(), free_port()
            sidecar = subprocess.Popen([sys.executable, "-m", "mlops", "sidecar", "--port", str(sp), "--profile",
                                        str(model_dir / "profile.json"), "--model-name", "alz"],
                                       env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(sidecar)
            server = subprocess.Popen([sys.executable, "-m", "mlops", "serve", "--host", "127.0.0.1", "--port", str(mp),
                                       "--model-uri", model.as_uri(), "--sha256", sha256_of(model), "--version", "v1",
                                       "--model-name", "alz", "--sidecar-url", f"http://127.0.0.1:{sp}",
                                       "--flush-interval", "0.2", "--log-level", "warning"],
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(server)
            pairs.append((f"http://127.0.0.1:{mp}", f"http://127.0.0.1:{sp}"))
        for (server_url, sidecar_url), i in zip(pairs, range(2), strict=True):
            wait_http(sidecar_url + "/healthz", procs[2 * i])
            wait_http(server_url + "/health", procs[2 * i + 1])
        yield pairs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


def _send(server_url: str, frame: pd.DataFrame) -> tuple[int, int]:
    """Predict every row, send its true label as feedback; returns (predictions, correct)."""
    correct = 0
    with httpx.Client(base_url=server_url, timeout=10) as client:
        feedback = []
        for row in frame.to_dict("records"):
            label = int(row.pop("label"))
            resp = client.post("/predict", json={"features": row})
            assert resp.status_code == 200, resp.text
            body = resp.json()
            correct += int(int(body["prediction"]) == label)
            feedback.append({"prediction_id": body["prediction_id"], "true_label": label})
        resp = client.post("/feedback", json={"feedback": feedback})
        assert resp.status_code in (200, 202), resp.text
    return len(frame), correct


@pytest.mark.slow
def test_metrics_from_two_real_sidecars_reach_status(cluster, admin, operator, module_namespaces, endpoints_file,
                                                     trained_model, serving_pairs):
    ns = module_namespaces["metrics"]
    model_dir, frame = trained_model
    model = model_dir / "model.skops"
    profile = (model_dir / "profile.json").read_text()
    apply(cluster, ns, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "alz-profile"},
                        "data": {"profile.json": profile}})
    apply(cluster, ns, mdep_manifest("alz", [version("v1", model.as_uri(), sha256_of(model))], "v1",
                                     baselineProfileRef={"configMapName": "alz-profile"},
                                     monitoring={"collectIntervalSeconds": 5}))
    endpoints_file.write_text(json.dumps({f"{ns}/alz": [sc + "/metrics" for _, sc in serving_pairs]}))
    wait_until(lambda: is_ready(admin, ns, "alz"), 60, "alz Ready", operator.tail)

    sample = frame.sample(100, random_state=1)
    n1, c1 = _send(serving_pairs[0][0], sample.iloc[:60])
    n2, c2 = _send(serving_pairs[1][0], sample.iloc[60:])
    total, pooled = n1 + n2, (c1 + c2) / (n1 + n2)

    def metrics_caught_up():
        m = (get_mdep(admin, ns, "alz").get("status") or {}).get("metrics") or {}
        return m.get("predictions") == total and m.get("accuracy") is not None and m

    m = wait_until(metrics_caught_up, 60, f"status.metrics.predictions == {total}", operator.tail)
    assert m["accuracy"] == pytest.approx(pooled, abs=1e-6)
    assert m["errorRate"] == 0.0 and m["latencyP50Ms"] > 0 and m["latencyP95Ms"] >= m["latencyP50Ms"]
    assert m["collectedAt"].endswith("Z")
    cr = get_mdep(admin, ns, "alz")
    assert condition(cr, "Drifting")["status"] == "False", condition(cr, "Drifting")

    drifted = frame.sample(300, random_state=2).copy()
    drifted["age"] = drifted["age"] + 25  # far outside the baseline
    _send(serving_pairs[0][0], drifted.iloc[:150])
    _send(serving_pairs[1][0], drifted.iloc[150:])

    def drift_collected():
        c = get_mdep(admin, ns, "alz")
        m = (c.get("status") or {}).get("metrics") or {}
        return m.get("predictions") == total + 300 and condition(c, "Drifting").get("status") == "True" and c

    cr = wait_until(drift_collected, 60, "all drifted traffic collected and Drifting=True", operator.tail)
    assert "age" in cr["status"]["metrics"]["driftedFeatures"]
    assert "score" not in cr["status"]["metrics"]["driftedFeatures"]
    assert "age" in condition(cr, "Drifting")["message"]
    assert any(a["type"] == "Drift" for a in cr["status"]["alerts"])
    assert wait_until(lambda: events(admin, ns, "FeatureDrift"), 30, "drift Event")


# ---------------------------------------------------------------------------------------------- chaos
def _normalized(admin: Kube, ns: str, names: list[str]) -> dict:
    """Owned objects with everything instance-specific removed, so two namespaces compare equal."""
    out = {}
    for name in names:
        for (kind, obj_name), obj in owned_objects(admin, ns, name).items():
            meta = obj["metadata"]
            body = {k: v for k, v in obj.items() if k not in ("metadata", "status")}
            # the applied-hash covers namespace and owner uid, which differ between the two namespaces
            meta["annotations"] = {k: v for k, v in (meta.get("annotations") or {}).items() if k != ANN_APPLIED_HASH}
            if kind == "Deployment":  # the routing table (and so its hash) names the namespace
                (body["spec"]["template"]["metadata"].get("annotations") or {}).pop(ANN_ROUTING_HASH, None)
            if kind == "Service":  # allocated by the API server, differs per object
                body["spec"] = {k: v for k, v in body["spec"].items() if k not in ("clusterIP", "clusterIPs")}
            text = json.dumps({"labels": meta.get("labels"), "annotations": meta.get("annotations"),
                               "owners": [(r["kind"], r["name"]) for r in meta.get("ownerReferences", [])],
                               "body": body}, sort_keys=True)
            out[(kind, obj_name)] = json.loads(text.replace(ns, "NS"))
    return out


def _replicasets_per_deployment(admin: Kube, ns: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for rs in admin.list("ReplicaSet", ns):
        for ref in rs["metadata"].get("ownerReferences", []):
            counts[ref["name"]] = counts.get(ref["name"], 0) + 1
    return counts


@pytest.mark.slow
def test_sigkill_during_reconciliation_converges_to_the_clean_result(cluster, admin, operator_kubeconfig,
                                                                    tmp_path):
    suffix = uuid.uuid4().hex[:6]
    clean_ns, chaos_ns = f"chaos-clean-{suffix}", f"chaos-kill-{suffix}"
    for ns in (clean_ns, chaos_ns):
        cluster.create_namespace(ns)
    sha = "ab" * 32
    manifests = [
        mdep_manifest(f"c{i}", [version("v1", f"s3://bucket/c{i}/v1.skops", sha, replicas=2),
                                version("v2", f"gs://bucket/c{i}/v2.skops", sha)], "v1")
        for i in range(4)
    ]
    names = [m["metadata"]["name"] for m in manifests]

    def all_ready(ns):
        return all(is_ready(admin, ns, name) for name in names)

    try:
        clean = OperatorProcess(operator_kubeconfig, [clean_ns], tmp_path).start()
        try:
            for m in manifests:
                apply(cluster, clean_ns, m)
            wait_until(lambda: all_ready(clean_ns), 120, "clean run Ready", clean.tail)
        finally:
            clean.stop()

        for m in manifests:
            apply(cluster, chaos_ns, m)
        rng = random.Random(20261126)
        killed = OperatorProcess(operator_kubeconfig, [chaos_ns], tmp_path)
        for round_ in range(5):
            killed.start()
            time.sleep(rng.uniform(1.5, 4.0))  # start-up takes ~1.5 s: kills land during reconciliation
            killed.kill()
            if round_ == 2:  # change the spec between kills as well
                manifests[0]["spec"]["versions"][0]["replicas"] = 3
                apply(cluster, chaos_ns, manifests[0])
                apply(cluster, clean_ns, manifests[0])
        final = OperatorProcess(operator_kubeconfig, [chaos_ns, clean_ns], tmp_path).start()
        try:
            wait_until(lambda: all_ready(chaos_ns) and all_ready(clean_ns), 120, "converged", final.tail)
            time.sleep(1)
            got, want = _normalized(admin, chaos_ns, names), _normalized(admin, clean_ns, names)
            assert set(got) == set(want)
            assert got == want
            # No duplicates: one ReplicaSet per Deployment (a replicas change is no new template)
            rs = _replicasets_per_deployment(admin, chaos_ns)
            assert len(rs) == 3 * len(names) and set(rs.values()) == {1}, rs
            # No orphans: everything labelled as ours has a live owner
            uids = {get_mdep(admin, chaos_ns, name)["metadata"]["uid"] for name in names}
            for kind in ("Deployment", "Service", "ConfigMap", "ServiceAccount"):
                for obj in admin.list(kind, chaos_ns, f"app.kubernetes.io/managed-by={n.MANAGED_BY}"):
                    assert {r["uid"] for r in obj["metadata"]["ownerReferences"]} <= uids
        finally:
            final.stop()
    finally:
        for ns in (clean_ns, chaos_ns):
            cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
