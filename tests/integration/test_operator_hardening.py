"""Operator hardening (issue 12) on the real local control plane, operator under its own RBAC:
ownership (no takeover, collisions), errors in status and Events, self-healing through watches
(also beside 100 resources whose metrics endpoints hang), HPA-owned replicas, the artifact fetch
policy, and leader election between two operator processes.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mlops.operator.k8s import Kube
from mlops.operator.resources import naming as n
from tests.integration.test_operator import (
    OperatorProcess,
    _healthy,
    apply,
    condition,
    get_mdep,
    is_ready,
    mdep_manifest,
    owned_objects,
    version,
    wait_until,
)

pytestmark = pytest.mark.integration

SHA = "ab" * 32


def s3_version(name: str, replicas: int = 1, **extra) -> dict:
    return {**version(name, f"s3://bucket/{name}.skops", SHA, replicas), **extra}


@pytest.fixture(scope="module")
def hard_ns(cluster) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:6]
    names = {k: f"hard-{k}-{suffix}" for k in ("own", "heal", "many", "err", "quota", "hpa")}
    for ns in names.values():
        cluster.create_namespace(ns)
    yield names
    for ns in names.values():
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


class HangingServer:
    """Accepts connections and never answers: a sidecar whose /metrics hangs."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._stop = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.5)
        while not self._stop:
            with contextlib.suppress(OSError):
                conn, _ = self.sock.accept()
                self.conns.append(conn)

    def close(self) -> None:
        self._stop = True
        self.thread.join(5)
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.fixture(scope="module")
def hanging(tmp_path_factory):
    server = HangingServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def hard_endpoints(tmp_path_factory):
    path = tmp_path_factory.mktemp("hard") / "endpoints.json"
    path.write_text("{}")
    return path


@pytest.fixture(scope="module")
def hard_operator(operator_kubeconfig, hard_ns, hard_endpoints, tmp_path_factory):
    op = OperatorProcess(operator_kubeconfig, list(hard_ns.values()), tmp_path_factory.mktemp("hardlog"),
                         "--metrics-interval", "1", "--metrics-endpoints", str(hard_endpoints),
                         "--resync-interval", "60").start()
    try:
        wait_until(lambda: _healthy(op), 60, "operator liveness endpoint", op.tail)
        yield op
    finally:
        op.stop()


def fingerprint(obj: dict) -> dict:
    meta = obj["metadata"]
    return {"rv": meta["resourceVersion"], "uid": meta["uid"], "labels": meta.get("labels"),
            "annotations": meta.get("annotations"), "owners": meta.get("ownerReferences"),
            "spec": obj.get("spec"), "data": obj.get("data")}


def reasons(kube: Kube, ns: str, name: str) -> dict[str, dict]:
    return {e["reason"]: e for e in kube.list("Event", ns) if e["involvedObject"].get("name") == name}


# ------------------------------------------------------------------------------------------ ownership
def test_user_objects_are_never_taken_over_nor_garbage_collected(cluster, admin, hard_operator, hard_ns):
    ns = hard_ns["own"]
    apply(cluster, ns, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                        "spec": {"selector": {"app": "web"}, "ports": [{"port": 443, "targetPort": 8443}]}})
    apply(cluster, ns, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web-routing"},
                        "data": {"settings": "the user's data"}})
    before = {k: fingerprint(admin.get(k, ns, nm)) for k, nm in (("Service", "web"), ("ConfigMap", "web-routing"))}

    apply(cluster, ns, mdep_manifest("web", [s3_version("v1")], "v1"))

    def conflicted():
        cr = get_mdep(admin, ns, "web")
        cond = condition(cr, "Degraded")
        return cond.get("reason") == "ResourceConflict" and cond

    cond = wait_until(conflicted, 30, "Degraded=ResourceConflict", hard_operator.tail)
    assert cond["status"] == "True"
    assert f"Service {ns}/web" in cond["message"] and f"ConfigMap {ns}/web-routing" in cond["message"]
    ev = wait_until(lambda: reasons(admin, ns, "web").get("ResourceConflict"), 15, "ResourceConflict Event")
    assert ev["type"] == "Warning" and "Service" in ev["message"]
    time.sleep(2)  # let any further reconciliation happen
    assert not owned_objects(admin, ns, "web"), "nothing is applied while a conflict blocks the resource"
    after = {k: fingerprint(admin.get(k, ns, nm)) for k, nm in (("Service", "web"), ("ConfigMap", "web-routing"))}
    assert after == before

    cluster.kubectl("delete", "-n", ns, "modeldeployment", "web", "--wait=true", "--timeout=30s")
    time.sleep(3)  # garbage collection had 0.09 s to delete them before; give it far more
    after = {k: fingerprint(admin.get(k, ns, nm)) for k, nm in (("Service", "web"), ("ConfigMap", "web-routing"))}
    assert after == before


def test_name_collision_is_reported_on_the_resource_that_lost(cluster, admin, hard_operator, hard_ns):
    ns = hard_ns["own"]
    apply(cluster, ns, mdep_manifest("a", [s3_version("b-c")], "b-c"))
    wait_until(lambda: is_ready(admin, ns, "a"), 60, "a Ready", hard_operator.tail)
    dep_before = fingerprint(admin.get("Deployment", ns, "a-b-c"))
    apply(cluster, ns, mdep_manifest("a-b", [s3_version("c")], "c"))

    def lost():
        cond = condition(get_mdep(admin, ns, "a-b"), "Degraded")
        return cond.get("reason") == "ResourceConflict" and cond

    cond = wait_until(lost, 30, "a-b Degraded=ResourceConflict", hard_operator.tail)
    assert f"Deployment {ns}/a-b-c" in cond["message"] and "ModelDeployment a" in cond["message"]
    assert get_mdep(admin, ns, "a-b")["status"]["phase"] == "Degraded"
    assert condition(get_mdep(admin, ns, "a"), "Degraded")["status"] == "False"
    time.sleep(1)
    assert fingerprint(admin.get("Deployment", ns, "a-b-c"))["spec"] == dep_before["spec"]
    assert is_ready(admin, ns, "a")


# ------------------------------------------------------------------------------------------ healing
def _heals(cluster, admin: Kube, ns: str, name: str, op: OperatorProcess) -> dict[str, float]:
    took = {}
    svc = admin.get("Service", ns, f"{name}-v1")
    cluster.kubectl("delete", "service", "-n", ns, f"{name}-v1", "--wait=false")
    t0 = time.monotonic()  # from the moment the change is made (kubectl's own start-up excluded)
    wait_until(lambda: (admin.get("Service", ns, f"{name}-v1") or {}).get("metadata", {}).get("uid")
               not in (None, svc["metadata"]["uid"]), 5, "deleted Service re-created within 5 s", op.tail)
    took["service"] = time.monotonic() - t0

    cluster.kubectl("scale", "deployment", "-n", ns, f"{name}-v1", "--replicas=3")
    t0 = time.monotonic()
    time.sleep(0.3)
    wait_until(lambda: admin.get("Deployment", ns, f"{name}-v1")["spec"]["replicas"] == 1, 5,
               "kubectl scale reverted within 5 s", op.tail)
    took["scale"] = time.monotonic() - t0

    cm = admin.get("ConfigMap", ns, f"{name}-routing")
    cluster.kubectl("patch", "configmap", "-n", ns, f"{name}-routing", "--type=merge",
                    "-p", json.dumps({"data": {"routing.json": "{}"}}))
    t0 = time.monotonic()
    wait_until(lambda: admin.get("ConfigMap", ns, f"{name}-routing")["data"] == cm["data"], 5,
               "edited routing ConfigMap restored within 5 s", op.tail)
    took["configmap"] = time.monotonic() - t0
    print("healed in (s):", {k: round(v, 2) for k, v in took.items()})
    return took


def test_deleted_scaled_and_edited_children_heal_within_seconds(cluster, admin, hard_operator, hard_ns):
    ns = hard_ns["heal"]
    apply(cluster, ns, mdep_manifest("h", [s3_version("v1")], "v1"))
    wait_until(lambda: is_ready(admin, ns, "h"), 60, "h Ready", hard_operator.tail)
    took = _heals(cluster, admin, ns, "h", hard_operator)
    assert max(took.values()) < 5, took


@pytest.mark.slow
def test_healing_is_not_delayed_by_100_resources_whose_metrics_hang(cluster, admin, hard_operator, hard_ns,
                                                                   hard_endpoints, hanging):
    ns, many = hard_ns["heal"], hard_ns["many"]
    url = f"http://127.0.0.1:{hanging.port}/metrics"
    names = [f"m{i}" for i in range(100)]
    table = {f"{many}/{name}": [url] for name in names}
    table[f"{ns}/h2"] = [url]
    hard_endpoints.write_text(json.dumps(table))
    apply(cluster, ns, mdep_manifest("h2", [s3_version("v1")], "v1"))
    wait_until(lambda: is_ready(admin, ns, "h2"), 120, "h2 Ready", hard_operator.tail)
    try:
        for name in names:  # version scaled to 0: no model pods, the router pod alone (it may stay Pending)
            apply(cluster, many, mdep_manifest(name, [s3_version("v1", replicas=0)], "v1"))
        wait_until(lambda: all((get_mdep(admin, many, nm).get("status") or {}).get("observedGeneration")
                               for nm in names), 180, "all 100 reconciled", hard_operator.tail)
        wait_until(lambda: len(hanging.conns) >= 4, 30, "collections hanging on the sidecar endpoints")
        took = _heals(cluster, admin, ns, "h2", hard_operator)
        assert max(took.values()) < 5, took
        assert len(hanging.conns) >= 4  # the scrapes were still hanging meanwhile
    finally:
        hard_endpoints.write_text("{}")
        cluster.kubectl("delete", "namespace", many, "--wait=false", check=False)


# ------------------------------------------------------------------------------------------ errors
def test_unschedulable_pods_and_failed_applies_reach_status_and_events(cluster, admin, hard_operator, hard_ns):
    ns = hard_ns["err"]
    big = s3_version("v1", resources={"requests": {"cpu": "5000", "memory": "1Gi"}})
    apply(cluster, ns, mdep_manifest("big", [big], "v1"))

    def unschedulable():
        cond = condition(get_mdep(admin, ns, "big"), "Ready")
        return cond.get("reason") == "Unschedulable" and cond

    cond = wait_until(unschedulable, 60, "Ready=False reason Unschedulable", hard_operator.tail)
    assert "Insufficient cpu" in cond["message"] or "nodes are available" in cond["message"], cond
    assert wait_until(lambda: reasons(admin, ns, "big").get("Unschedulable"), 15, "Unschedulable Event")

    # a quota that forbids Services: the apply failure is a condition naming the object, and an Event
    ns = hard_ns["quota"]
    apply(cluster, ns, {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "no-services"},
                        "spec": {"hard": {"services": "0"}}})
    time.sleep(1)
    apply(cluster, ns, mdep_manifest("q", [s3_version("v1")], "v1"))

    def apply_failed():
        cond = condition(get_mdep(admin, ns, "q"), "Degraded")
        return cond.get("reason") == "ApplyFailed" and cond

    cond = wait_until(apply_failed, 60, "Degraded=ApplyFailed", hard_operator.tail)
    assert f"Service {ns}/q" in cond["message"] and "403" in cond["message"]
    assert wait_until(lambda: reasons(admin, ns, "q").get("ApplyFailed"), 15, "ApplyFailed Event")


def test_ready_false_posts_an_event_and_stable_at_zero_is_not_ready(cluster, admin, hard_operator, hard_ns):
    ns = hard_ns["err"]
    manifest = mdep_manifest("z", [s3_version("v1")], "v1")
    apply(cluster, ns, manifest)
    wait_until(lambda: is_ready(admin, ns, "z"), 60, "z Ready", hard_operator.tail)
    manifest["spec"]["versions"][0]["replicas"] = 0
    apply(cluster, ns, manifest)

    def not_serving():
        cr = get_mdep(admin, ns, "z")
        cond = condition(cr, "Ready")
        return (cr["status"].get("observedGeneration") == cr["metadata"]["generation"]
                and cond.get("reason") == "StableVersionNotServing" and cr)

    cr = wait_until(not_serving, 60, "Ready=False StableVersionNotServing", hard_operator.tail)
    assert condition(cr, "Ready")["status"] == "False" and cr["status"]["phase"] != "Ready"
    ev = wait_until(lambda: reasons(admin, ns, "z").get("StableVersionNotServing"), 15, "Warning Event")
    assert ev["type"] == "Warning"
    # "verified" is only said of digests the operator checked (s3:// is left to the init container)
    assert "all artifacts verified" not in condition(cr, "Degraded")["message"]
    # status is written under the operator's own field manager
    managers = {m["manager"] for m in cr["metadata"]["managedFields"] if m.get("subresource") == "status"}
    assert managers == {n.FIELD_MANAGER}, managers


def test_events_are_aggregated_into_one_object_with_a_count(admin, hard_ns):
    ns = hard_ns["err"]
    cr = {"apiVersion": n.API_VERSION, "kind": n.KIND,
          "metadata": {"name": "agg", "namespace": ns, "uid": str(uuid.uuid4())}}
    for i in range(3):
        admin.post_event(cr, "Warning", "Repeated", "same thing again", time.time() + i)
    fresh = Kube(admin.api)  # another process (restart, second replica): still the same Event
    fresh.post_event(cr, "Warning", "Repeated", "same thing again", time.time() + 5)
    evs = [e for e in admin.list("Event", ns) if e["involvedObject"].get("name") == "agg"]
    assert len(evs) == 1 and evs[0]["count"] == 4, evs


# ------------------------------------------------------------------------------------------ autoscaling
def test_hpa_scaling_is_not_reverted(cluster, admin, hard_operator, hard_ns):
    ns = hard_ns["hpa"]
    auto = s3_version("v1", autoscaling={"minReplicas": 1, "maxReplicas": 5, "targetCPUUtilizationPercentage": 70})
    apply(cluster, ns, mdep_manifest("auto", [auto], "v1"))
    wait_until(lambda: is_ready(admin, ns, "auto"), 60, "auto Ready", hard_operator.tail)
    hpa = admin.get("HorizontalPodAutoscaler", ns, "auto-v1")
    assert hpa["spec"]["maxReplicas"] == 5 and hpa["spec"]["scaleTargetRef"]["name"] == "auto-v1"
    # what the HPA controller does: write the scale subresource
    cluster.kubectl("scale", "deployment", "-n", ns, "auto-v1", "--replicas=3")
    wait_until(lambda: is_ready(admin, ns, "auto")
               and get_mdep(admin, ns, "auto")["status"]["versions"][0]["readyReplicas"] == 3, 60,
               "3 ready replicas reported", hard_operator.tail)
    cluster.kubectl("annotate", "modeldeployment", "-n", ns, "auto", "poke=1")  # any event, then wait
    time.sleep(6)
    dep = admin.get("Deployment", ns, "auto-v1")
    assert dep["spec"]["replicas"] == 3
    owners = [m for m in dep["metadata"]["managedFields"] if m["manager"] == n.FIELD_MANAGER]
    assert owners and all("f:replicas" not in json.dumps(m.get("fieldsV1", {}).get("f:spec", {})) for m in owners)


# ------------------------------------------------------------------------------------------ artifacts
class CountingHandler(BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self):  # noqa: N802
        CountingHandler.hits.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"mlops_predictions_total 1\n")

    def log_message(self, *args):
        pass


def test_ssrf_and_file_oracle_uris_are_refused_and_nothing_is_fetched(cluster, admin, operator_kubeconfig,
                                                                      tmp_path):
    ns = f"ssrf-{uuid.uuid4().hex[:6]}"
    cluster.create_namespace(ns)
    server = ThreadingHTTPServer(("127.0.0.1", 0), CountingHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    op = OperatorProcess(operator_kubeconfig, [ns], tmp_path).start()  # default policy
    try:
        wait_until(lambda: _healthy(op), 60, "operator up", op.tail)
        port = server.server_address[1]
        host_file = "/etc/hostname"
        apply(cluster, ns, mdep_manifest("ssrf", [version("v1", f"http://127.0.0.1:{port}/metrics", SHA)], "v1"))
        apply(cluster, ns, mdep_manifest("oracle", [version("v1", f"file://{host_file}", SHA)], "v1"))

        def degraded(name):
            cr = get_mdep(admin, ns, name)
            return (cr.get("status") or {}).get("observedGeneration") == cr["metadata"]["generation"] and cr

        cr = wait_until(lambda: degraded("ssrf"), 60, "ssrf reconciled", op.tail)
        cond = condition(cr, "Degraded")
        assert cond["status"] == "True" and "refused" in cond["message"] and "loopback" in cond["message"]
        assert admin.get("Deployment", ns, "ssrf-v1") is None  # not rolled out either

        cr = wait_until(lambda: degraded("oracle"), 60, "oracle reconciled", op.tail)
        text = json.dumps(cr["status"])
        assert "file:// is not read by the operator" in text
        import hashlib
        from pathlib import Path

        if Path(host_file).exists():
            assert hashlib.sha256(Path(host_file).read_bytes()).hexdigest() not in text
        assert "sha256 mismatch" not in text
        time.sleep(1)
        assert CountingHandler.hits == [], CountingHandler.hits
    finally:
        op.stop()
        server.shutdown()
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


# ------------------------------------------------------------------------------------------ leader election
def _metric(op: OperatorProcess, name: str, where=lambda labels: True) -> float:
    total = 0.0
    for line in op.metrics_text().splitlines():
        if line.startswith(name) and not line.startswith("#") and where(line.rsplit(" ", 1)[0]):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _writes(labels: str) -> bool:
    """Requests that change something, except the Lease every candidate reads and contends for."""
    return 'resource="leases"' not in labels and any(f'verb="{v}"' in labels for v in
                                                      ("apply", "patch", "post", "put", "delete"))


@pytest.mark.slow
def test_two_operators_one_leader_and_failover_after_sigkill(cluster, admin, operator_kubeconfig, tmp_path):
    ns = f"le-{uuid.uuid4().hex[:6]}"
    cluster.create_namespace(ns)
    lease = f"le-{uuid.uuid4().hex[:6]}"
    # a 10 s lease (default 15 s): the bound is lease + 2 s, and the test machine may be heavily loaded
    common = ["--leader-elect", "--leader-election-namespace", "mlops-system", "--leader-election-lease-name", lease,
              "--lease-duration", "10"]
    ops = {ident: OperatorProcess(operator_kubeconfig, [ns], tmp_path, *common,
                                  "--leader-election-identity", ident).start() for ident in ("op-a", "op-b")}
    try:
        for op in ops.values():
            wait_until(lambda op=op: _healthy(op), 180, "operator up", op.tail)  # two start at once on a loaded machine
        manifest = mdep_manifest("le", [s3_version("v1")], "v1")
        apply(cluster, ns, manifest)
        wait_until(lambda: is_ready(admin, ns, "le"), 60, "le Ready", lambda: "\n".join(o.tail() for o in ops.values()))
        holder = admin.get("Lease", "mlops-system", lease)["spec"]["holderIdentity"]
        standby = "op-b" if holder == "op-a" else "op-a"
        assert holder in ops
        assert _metric(ops[holder], "mlops_operator_leader") == 1
        assert _metric(ops[standby], "mlops_operator_leader") == 0
        # exactly one reconciles: the standby wrote nothing (it only watches, and reads the Lease)
        assert _metric(ops[holder], "mlops_operator_api_requests_total", _writes) > 0
        assert _metric(ops[standby], "mlops_operator_api_requests_total", _writes) == 0
        assert _metric(ops[standby], "mlops_operator_reconciles_total") == 0

        ops[holder].kill()
        killed = time.monotonic()
        manifest["spec"]["versions"][0]["replicas"] = 2
        apply(cluster, ns, manifest)
        wait_until(lambda: admin.get("Deployment", ns, "le-v1")["spec"]["replicas"] == 2, 25,
                   "spec change applied by the new leader", ops[standby].tail)
        handover = time.monotonic() - killed
        print(f"leader handover after SIGKILL: {handover:.1f} s")
        assert handover < 20, handover
        assert admin.get("Lease", "mlops-system", lease)["spec"]["holderIdentity"] == standby
        assert _metric(ops[standby], "mlops_operator_leader") == 1
        assert _metric(ops[standby], "mlops_operator_api_requests_total", _writes) > 0
    finally:
        for op in ops.values():
            op.stop()
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
