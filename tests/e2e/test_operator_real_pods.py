"""The whole system on real pods: the operator installed in-cluster from crds/ and manifests/ as a pod
of the project image under its ServiceAccount, in a namespace enforcing the restricted profile; a
two-version ModelDeployment whose init containers download the artifacts from an HTTP server this
test runs on the node's bridge address and verify their sha256; real requests and feedback through
the router's Service from another pod; status metrics equal to the traffic sent; a tampered artifact
turns the resource Degraded while the previous version keeps answering.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import shutil
import textwrap
import threading
import time
from pathlib import Path

import pytest
import yaml

pytestmark = [
    pytest.mark.slow,
]

REPO = Path(__file__).resolve().parents[2]
MANIFEST_IMAGE = "ghcr.io/duetmind/mlops-operator:0.1.0"  # what manifests/ and the CRD default name
OPERATOR_NS = "mlops-system"
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted",
              "pod-security.kubernetes.io/enforce-version": "latest"}


def wait_until(predicate, timeout: float, what: str, diag=lambda: ""):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last={last!r}\n{diag()}")


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def artifact_server(real_cluster, tmp_path_factory):
    """The demo's two versions served over HTTP on the node's bridge address (reachable from pods)."""
    from mlops.serving.demo import build_demo

    root = tmp_path_factory.mktemp("artifacts")
    build_demo(root)
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer((real_cluster.real_node.network.gateway, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{server.server_address[0]}:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def operator_logs(cluster) -> str:
    proc = cluster.kubectl("logs", "-n", OPERATOR_NS, "deployment/mlops-operator", "--tail=60", check=False)
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def operator_in_cluster(real_cluster, image):
    cluster = real_cluster
    cluster.real_node.tag_image(image, MANIFEST_IMAGE)
    cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
    cluster.create_namespace(OPERATOR_NS, labels=RESTRICTED)
    cluster.kubectl("apply", "-f", str(REPO / "manifests" / "rbac.yaml"))
    docs = [d for d in yaml.safe_load_all((REPO / "manifests" / "operator.yaml").read_text()) if d]
    from mlops.testing.image import podman

    flags = podman("run", "--rm", "--network", "none", image, "operator", "--help").stdout
    for doc in docs:
        if doc["kind"] == "Deployment":
            container = doc["spec"]["template"]["spec"]["containers"][0]
            assert container["image"] == MANIFEST_IMAGE
            if "--artifact-allowed-schemes" in flags:
                # The test's artifact server speaks plain HTTP on the node's bridge address.
                container["args"] += ["--artifact-allowed-schemes", "http,https,s3,gs"]
            doc["spec"]["replicas"] = 1
    cluster.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs))
    proc = cluster.kubectl("rollout", "status", "-n", OPERATOR_NS, "deployment/mlops-operator", "--timeout=240s",
                           timeout=250, check=False)
    assert proc.returncode == 0, f"operator did not become available: {proc.stderr}\n{operator_logs(cluster)}"
    yield cluster
    print(operator_logs(cluster))


CLIENT = textwrap.dedent("""\
    import json, urllib.request
    url = "http://%(svc)s"
    rows = json.loads(%(rows)r)
    out = {"versions": {}, "ok": 0, "feedback_ok": 0, "errors": []}
    for i, (row, label) in enumerate(rows):
        req = urllib.request.Request(url + "/predict", data=json.dumps({"features": row}).encode(),
                                     headers={"Content-Type": "application/json", "X-User-ID": "user-%%d" %% (i %% 7)})
        try:
            body = json.load(urllib.request.urlopen(req, timeout=30))
        except Exception as exc:
            out["errors"].append(repr(exc)); continue
        out["ok"] += 1
        out["versions"][body["model_version"]] = out["versions"].get(body["model_version"], 0) + 1
        fb = urllib.request.Request(url + "/feedback", data=json.dumps(
            {"prediction_id": body["prediction_id"], "true_label": label}).encode(),
            headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(fb, timeout=30).read()
            out["feedback_ok"] += 1
        except Exception as exc:
            out["errors"].append("feedback " + repr(exc))
    print(json.dumps(out))
""")


def run_client(cluster, ns: str, name: str, svc: str, rows: list, image: str) -> dict:
    code = CLIENT % {"svc": svc, "rows": json.dumps(rows)}
    job = {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": ns},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "client", "image": image, "imagePullPolicy": "Never",
                            "command": ["python", "-c", code],
                            "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                                "capabilities": {"drop": ["ALL"]}}}]}}},
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(job))
    done = cluster.kubectl("wait", "-n", ns, "--for=condition=Complete", f"job/{name}", "--timeout=180s",
                           timeout=190, check=False)
    logs = cluster.kubectl("logs", "-n", ns, f"job/{name}", check=False)
    assert done.returncode == 0, f"client job failed: {done.stderr}\n{logs.stdout}{logs.stderr}"
    return json.loads(logs.stdout.strip().splitlines()[-1])


def get_mdep(cluster, ns: str, name: str) -> dict:
    return json.loads(cluster.kubectl("get", "modeldeployment", name, "-n", ns, "-o", "json").stdout)


def condition(cr: dict, ctype: str) -> dict:
    return next((c for c in (cr.get("status") or {}).get("conditions") or [] if c["type"] == ctype), {})


def test_model_deployment_serves_on_real_pods_and_survives_a_tampered_artifact(
    operator_in_cluster, artifact_server, image
):
    cluster = operator_in_cluster
    base, root = artifact_server
    ns = "e2e-serving"
    cluster.create_namespace(ns, labels=RESTRICTED)
    profile = (root / "v1.0.0" / "profile.json").read_text()
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "alz-profile"},
        "data": {"profile.json": profile}}))
    versions = [
        {"name": v, "artifact": {"uri": f"{base}/{v}.0.0/model.skops", "sha256": sha256_of(root / f"{v}.0.0" / "model.skops")},
         "replicas": 1}
        for v in ("v1", "v2")
    ]
    mdep = {
        "apiVersion": "mlops.duetmind.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "alz"},
        "spec": {"modelName": "alzheimer", "stableVersion": "v1", "versions": versions,
                 "baselineProfileRef": {"configMapName": "alz-profile"},
                 "monitoring": {"collectIntervalSeconds": 5}},
    }
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(mdep))

    def ready():
        cr = get_mdep(cluster, ns, "alz")
        st = cr.get("status") or {}
        return st.get("phase") == "Ready" and st.get("observedGeneration") == cr["metadata"]["generation"] and cr

    def diag() -> str:
        pods = cluster.kubectl("get", "pods", "-n", ns, "-o", "wide", check=False).stdout
        return pods + "\n" + operator_logs(cluster)

    wait_until(ready, 420, "ModelDeployment alz Ready on real pods", diag)
    pods = json.loads(cluster.kubectl("get", "pods", "-n", ns, "-o", "json").stdout)["items"]
    assert len(pods) == 3  # router + one pod per version
    node = cluster.real_node.name
    for pod in pods:
        assert pod["spec"]["nodeName"] == node  # real pods, not KWOK
        assert all(s.get("ready") for s in pod["status"]["containerStatuses"]), pod["status"]
    model_pods = [p for p in pods if p["spec"].get("initContainers")]
    assert len(model_pods) == 2
    for pod in model_pods:
        init = cluster.kubectl("logs", "-n", ns, pod["metadata"]["name"], "-c",
                               pod["spec"]["initContainers"][0]["name"]).stdout
        assert "verified" in init and base in init, init

    # Real requests and feedback through the router's Service, from another pod, by DNS name.
    from mlops.serving.demo import FEATURES, LABEL, generate_oasis_like

    frame = generate_oasis_like(n=40, seed=11)
    rows = [({f: float(frame[f].iloc[i]) for f in FEATURES if not frame[f].isna().iloc[i]},
             int(frame[LABEL].iloc[i])) for i in range(len(frame))]
    sent = run_client(cluster, ns, "client-1", f"alz.{ns}.svc.cluster.local", rows, image)
    assert sent["ok"] == len(rows) and sent["feedback_ok"] == len(rows), sent
    assert sent["versions"] == {"v1": len(rows)}, sent  # no experiment: every user on the stable version

    def metrics_caught_up():
        m = (get_mdep(cluster, ns, "alz").get("status") or {}).get("metrics") or {}
        return m.get("predictions") == len(rows) and m.get("accuracy") is not None and m

    metrics = wait_until(metrics_caught_up, 120, f"status.metrics.predictions == {len(rows)}", diag)
    assert 0.0 <= metrics["accuracy"] <= 1.0

    # A tampered artifact: v2 now points at a file whose bytes no longer match the pinned sha256.
    tampered = root / "v2.0.0" / "tampered.skops"
    shutil.copy(root / "v2.0.0" / "model.skops", tampered)
    with tampered.open("ab") as f:
        f.write(b"tampered")
    gen_before = json.loads(cluster.kubectl("get", "deployment", "alz-v2", "-n", ns, "-o", "json").stdout)
    mdep["spec"]["versions"][1]["artifact"]["uri"] = f"{base}/v2.0.0/tampered.skops"
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(mdep))

    def degraded():
        cr = get_mdep(cluster, ns, "alz")
        return (cr["status"].get("observedGeneration") == cr["metadata"]["generation"]
                and condition(cr, "Degraded").get("status") == "True" and cr)

    cr = wait_until(degraded, 120, "Degraded after the tampered artifact", diag)
    assert "sha256" in condition(cr, "Degraded")["message"]
    gen_after = json.loads(cluster.kubectl("get", "deployment", "alz-v2", "-n", ns, "-o", "json").stdout)
    assert gen_after["metadata"]["generation"] == gen_before["metadata"]["generation"]  # not rolled out
    again = run_client(cluster, ns, "client-2", f"alz.{ns}.svc.cluster.local", rows[:5], image)
    assert again["ok"] == 5, again  # the previous artifacts still answer


def test_quickstart_example_from_the_image_becomes_ready_and_serves(operator_in_cluster, image):
    """examples/00-quickstart: the manifest the image build wrote, for the models the image carries."""
    from mlops.testing.image import podman

    cluster = operator_in_cluster
    manifest = json.loads(podman("run", "--rm", "--network", "none", "--entrypoint", "cat", image,
                                 "/opt/mlops/demo-models/quickstart.yaml").stdout)
    assert all(v["artifact"]["uri"].startswith("file:///opt/mlops/demo-models/") for v in manifest["spec"]["versions"])
    ns = "e2e-quickstart"
    cluster.create_namespace(ns, labels=RESTRICTED)
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(manifest))

    def ready():
        cr = get_mdep(cluster, ns, "quickstart")
        st = cr.get("status") or {}
        return st.get("phase") == "Ready" and st.get("observedGeneration") == cr["metadata"]["generation"] and cr

    wait_until(ready, 420, "quickstart Ready",
               lambda: cluster.kubectl("get", "pods", "-n", ns, "-o", "wide", check=False).stdout
               + operator_logs(cluster))
    from mlops.serving.demo import FEATURES, LABEL, generate_oasis_like

    frame = generate_oasis_like(n=3, seed=5)
    rows = [({f: float(frame[f].iloc[i]) for f in FEATURES if not frame[f].isna().iloc[i]},
             int(frame[LABEL].iloc[i])) for i in range(3)]
    sent = run_client(cluster, ns, "quickstart-client", f"quickstart.{ns}.svc.cluster.local", rows, image)
    assert sent["ok"] == 3 and sent["versions"] == {"v1": 3}, sent
