"""GitOps on the real local control plane: the examples applied server-side by a second field
manager (as Argo CD does with ServerSideApply=true) are reconciled by a real `mlops operator`
running under the chart's RBAC (manifests/rbac.yaml), then re-applied; nothing the user wrote in
spec, labels or annotations changes or is taken over by the operator, and `kubectl diff
--server-side` (Argo CD's server-side diff) reports no drift. A third manager that does take a
field over is caught by the same checks, so they can fail."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from mlops.testing.waiting import wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
MANAGER = "argocd-controller"
KINDS = {"ModelDeployment": "modeldeployments", "ABExperiment": "abexperiments", "RetrainPolicy": "retrainpolicies"}


def example_objects() -> list[dict]:
    out = []
    for path in sorted(EXAMPLES.rglob("*.yaml")):
        out += [doc for doc in yaml.safe_load_all(path.read_text()) if doc and doc.get("kind") in KINDS]
    return out


def get(cluster, ns: str, kind: str, name: str) -> dict:
    return json.loads(cluster.kubectl("get", KINDS[kind], name, "-n", ns, "-o", "json",
                                      "--show-managed-fields").stdout)


def fields_of(obj: dict, manager: str) -> set[str]:
    """Dotted paths of the leaf fields ``manager`` owns (from managedFields' fieldsV1)."""
    out: set[str] = set()

    def walk(node: dict, prefix: str) -> None:
        for key, child in node.items():
            if key == ".":
                continue
            path = f"{prefix}.{key[2:]}" if key.startswith("f:") else f"{prefix}[{key}]"
            if child:
                walk(child, path)
            else:
                out.add(path.lstrip("."))

    for entry in obj["metadata"].get("managedFields") or []:
        if entry["manager"] == manager and entry.get("subresource") is None:
            walk(entry.get("fieldsV1") or {}, "")
    return out


def user_paths(obj: dict) -> set[str]:
    """Leaf paths of what the user wrote: spec, labels, annotations (lists as a whole)."""
    out: set[str] = set()

    def walk(node, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, child in node.items():
                walk(child, f"{prefix}.{key}")
        else:
            out.add(prefix.lstrip("."))

    walk(obj.get("spec") or {}, "spec")
    for key in ("labels", "annotations"):
        walk((obj["metadata"].get(key)) or {}, f"metadata.{key}")
    return {p for p in out if p not in ("metadata.labels", "metadata.annotations")}


def contains(live, wanted) -> bool:
    """Everything in ``wanted`` is in ``live`` with the same value (defaults may add more)."""
    if isinstance(wanted, dict):
        return isinstance(live, dict) and all(k in live and contains(live[k], v) for k, v in wanted.items())
    if isinstance(wanted, list):
        return isinstance(live, list) and len(live) == len(wanted) and all(map(contains, live, wanted))
    return live == wanted


def apply_examples(cluster, ns: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl("apply", "--server-side", f"--field-manager={MANAGER}", "-n", ns,
                           "-R", "-f", str(EXAMPLES), *extra, check=False)


@pytest.fixture(scope="module")
def gitops_operator(cluster, crds_installed, tmp_path_factory):
    """`mlops operator` under the ServiceAccount and RBAC of the chart-rendered manifests/rbac.yaml."""
    ns = f"gitops-{uuid.uuid4().hex[:6]}"
    cluster.create_namespace("mlops-system")
    cluster.create_namespace(ns)
    cluster.kubectl("apply", "-f", str(REPO / "manifests" / "rbac.yaml"))
    kubeconfig = cluster.service_account_kubeconfig("mlops-system", "mlops-operator")
    port = free = None
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    log_path = tmp_path_factory.mktemp("gitops") / "operator.log"
    log = open(log_path, "ab")  # noqa: SIM115 - owned by the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlops", "operator", "--kubeconfig", str(kubeconfig), "-n", ns,
         "--bind", "127.0.0.1", "--liveness-port", str(port), "--metrics-port", str(free),
         "--resync-interval", "2", "--no-verify-artifacts", "--log-format", "text"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    log.close()

    def tail() -> str:
        return "operator log:\n" + "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])

    def healthy() -> bool:
        assert proc.poll() is None, tail()
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        return False

    try:
        wait_until(healthy, 60, "operator /healthz", tail)
        yield ns, tail
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_examples_show_no_drift_after_the_operator_reconciles(cluster, gitops_operator):
    ns, tail = gitops_operator
    first = apply_examples(cluster, ns)
    assert first.returncode == 0, first.stderr
    objects = example_objects()
    assert {o["kind"] for o in objects} == set(KINDS)

    # The operator really reconciled (status for the current generation): a no-op operator would
    # make this test vacuous.
    def reconciled():
        cr = get(cluster, ns, "ModelDeployment", "churn")
        st = cr.get("status") or {}
        return st.get("observedGeneration") == cr["metadata"]["generation"] and st.get("phase") and cr
    mdep = wait_until(reconciled, 90, "the operator to write the ModelDeployment's status", tail)
    managers = {e["manager"] for e in mdep["metadata"]["managedFields"]}
    assert len(managers - {MANAGER}) >= 1, managers  # the operator wrote something of its own
    time.sleep(3)  # one more resync of the operator

    before = {(o["kind"], o["metadata"]["name"]): get(cluster, ns, o["kind"], o["metadata"]["name"]) for o in objects}
    again = apply_examples(cluster, ns)  # no --force-conflicts: a field taken over would conflict here
    assert again.returncode == 0, again.stderr
    diff = cluster.kubectl("diff", "--server-side", "--force-conflicts", f"--field-manager={MANAGER}", "-n", ns, "-R", "-f", str(EXAMPLES),
                           check=False)
    assert diff.returncode == 0, f"kubectl diff --server-side shows drift:\n{diff.stdout}{diff.stderr}"

    for obj in objects:
        key = (obj["kind"], obj["metadata"]["name"])
        live = get(cluster, ns, *key)
        # The spec did not change (same generation) and still holds exactly what the user wrote.
        assert live["metadata"]["generation"] == before[key]["metadata"]["generation"], key
        assert contains(live["spec"], obj["spec"]), key
        for meta in ("labels", "annotations"):
            assert contains(live["metadata"].get(meta) or {}, obj["metadata"].get(meta) or {}), (key, meta)
        # Every field the user wrote is still owned by the user's manager, and by nobody else.
        mine = fields_of(live, MANAGER)
        wanted = user_paths(obj)
        assert all(any(f == p or f.startswith(p + ".") or f.startswith(p + "[") for f in mine) for p in wanted), \
            (key, sorted(p for p in wanted if not any(f.startswith(p) for f in mine)))
        for entry in live["metadata"]["managedFields"]:
            if entry["manager"] == MANAGER or entry.get("subresource") == "status":
                continue
            theirs = fields_of(live, entry["manager"])
            taken = {f for f in theirs if f.startswith("spec") or any(f == p or f.startswith(p + ".") for p in wanted)}
            assert not taken, f"{key}: manager {entry['manager']} owns user fields {sorted(taken)}"


def test_a_field_taken_over_is_detected(cluster, gitops_operator):
    """The checks above can fail: another manager forcing a spec field shows as drift and as a conflict."""
    ns, _ = gitops_operator
    assert apply_examples(cluster, ns).returncode == 0
    intruder = {"apiVersion": "mlops.duetmind.io/v1alpha1", "kind": "RetrainPolicy",
                "metadata": {"name": "churn-retrain"}, "spec": {"requireApproval": False}}
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=intruder", "-n", ns, "-f", "-",
                    input=json.dumps(intruder))
    live = get(cluster, ns, "RetrainPolicy", "churn-retrain")
    assert "spec.requireApproval" in fields_of(live, "intruder")
    assert "spec.requireApproval" not in fields_of(live, MANAGER)
    diff = cluster.kubectl("diff", "--server-side", "--force-conflicts", f"--field-manager={MANAGER}", "-n", ns, "-R", "-f", str(EXAMPLES),
                           check=False)
    assert diff.returncode == 1 and "requireApproval" in diff.stdout
    conflict = apply_examples(cluster, ns)
    assert conflict.returncode != 0 and "conflict" in conflict.stderr.lower()
    # Argo CD would then force it back.
    assert apply_examples(cluster, ns, "--force-conflicts").returncode == 0
    assert "spec.requireApproval" in fields_of(get(cluster, ns, "RetrainPolicy", "churn-retrain"), MANAGER)
