"""The local cluster's real kubelet node (``start_cluster(real_node=True)``): a Pod, a 2-replica
Deployment behind a Service reached by its DNS name from another pod, a Job, the API server reached
from a pod through the ``kubernetes`` Service, names outside the cluster domain refused, and the host
exactly as before once the cluster is down (sysctls, iptables rules, links, netns, mounts, cgroups).

Everything runs in the project image (python is all the workloads need), imported into the node's
containerd; traffic stays on loopback and on the node's own bridge.
"""

from __future__ import annotations

import json
import textwrap
import time

import httpx
import pytest

from mlops.testing.cluster import start_cluster
from mlops.testing.node import host_snapshot, snapshot_diff

pytestmark = pytest.mark.slow

SECURE = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}

WEB = textwrap.dedent("""\
    import http.server, socket
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = socket.gethostname().encode()
            self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a): pass
    http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
""")

CLIENT = textwrap.dedent("""\
    import json, socket, ssl, urllib.request
    out = {"service_ip": socket.gethostbyname("echo.%(ns)s.svc.cluster.local"), "hosts": []}
    for _ in range(30):
        out["hosts"].append(urllib.request.urlopen("http://echo/", timeout=5).read().decode())
    try:
        socket.gethostbyname("example.com")
        out["outside"] = "resolved"
    except OSError as exc:
        out["outside"] = "refused: %%s" %% exc
    sa = "/var/run/secrets/kubernetes.io/serviceaccount"
    ctx = ssl.create_default_context(cafile=sa + "/ca.crt")
    req = urllib.request.Request("https://kubernetes.default.svc/version",
                                 headers={"Authorization": "Bearer " + open(sa + "/token").read()})
    out["apiserver"] = json.load(urllib.request.urlopen(req, context=ctx, timeout=5))["gitVersion"]
    print(json.dumps(out))
""")


def _container(name: str, code: str, image: str, probe: bool) -> dict:
    c = {"name": name, "image": image, "imagePullPolicy": "Never", "command": ["python", "-c", code],
         "securityContext": SECURE, "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}}}
    if probe:
        c["ports"] = [{"containerPort": 8080}]
        c["readinessProbe"] = {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1}
    return c


def _pod_spec(containers: list[dict], restart: str = "Always") -> dict:
    return {"containers": containers, "restartPolicy": restart, "terminationGracePeriodSeconds": 1,
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}}


def test_real_node_runs_pods_deployments_services_dns_and_jobs_and_restores_the_host(
    image, real_node_prerequisites, tmp_path
):
    before = host_snapshot()
    cluster = start_cluster(tmp_path / "cluster", real_node=True)
    try:
        node = cluster.real_node
        assert node is not None
        cluster.load_image(image)
        info = json.loads(cluster.kubectl("get", "node", node.name, "-o", "json").stdout)
        assert info["status"]["nodeInfo"]["kubeletVersion"] == "v1.36.3"
        assert info["status"]["nodeInfo"]["containerRuntimeVersion"] in ("containerd://2.4.2", "containerd://v2.4.2")
        assert "kwok.x-k8s.io/node" not in info["metadata"].get("annotations", {})

        ns = "realnode"
        cluster.create_namespace(ns, labels={"pod-security.kubernetes.io/enforce": "restricted"})
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "single", "namespace": ns},
               "spec": _pod_spec([_container("web", WEB, image, probe=True)])}
        labels = {"app": "echo"}
        deployment = {
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "echo", "namespace": ns},
            "spec": {"replicas": 2, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": _pod_spec([_container("web", WEB, image, probe=True)])}},
        }
        service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo", "namespace": ns},
                   "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]}}
        for doc in (pod, deployment, service):
            cluster.kubectl("apply", "-f", "-", input=json.dumps(doc))
        t0 = time.monotonic()
        cluster.kubectl("wait", "-n", ns, "--for=condition=Ready", "pod/single", "--timeout=120s", timeout=130)
        cluster.kubectl("rollout", "status", "-n", ns, "deployment/echo", "--timeout=120s", timeout=130)
        ready_seconds = time.monotonic() - t0

        # The pod really runs: its IP on the node's bridge answers HTTP from the host, logs come from kubelet.
        single = json.loads(cluster.kubectl("get", "pod", "single", "-n", ns, "-o", "json").stdout)
        assert single["spec"]["nodeName"] == node.name
        pod_ip = single["status"]["podIP"]
        assert pod_ip.startswith(node.network.subnet.rsplit(".", 1)[0] + ".")
        assert httpx.get(f"http://{pod_ip}:8080/", timeout=5).text == "single"
        replicas = json.loads(cluster.kubectl("get", "pods", "-n", ns, "-l", "app=echo", "-o", "json").stdout)
        names = {p["metadata"]["name"] for p in replicas["items"]}
        assert len(names) == 2 and all(p["spec"]["nodeName"] == node.name for p in replicas["items"])

        job = {
            "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "client", "namespace": ns},
            "spec": {"backoffLimit": 0, "template": {"spec": _pod_spec(
                [_container("client", CLIENT % {"ns": ns}, image, probe=False)], restart="Never")}},
        }
        cluster.kubectl("apply", "-f", "-", input=json.dumps(job))
        done = cluster.kubectl("wait", "-n", ns, "--for=condition=Complete", "job/client", "--timeout=120s",
                               timeout=130, check=False)
        logs = cluster.kubectl("logs", "-n", ns, "job/client", check=False)
        assert done.returncode == 0, f"job did not complete: {done.stderr}\n{logs.stdout}{logs.stderr}"
        result = json.loads(logs.stdout.strip().splitlines()[-1])
        svc_ip = json.loads(cluster.kubectl("get", "svc", "echo", "-n", ns, "-o", "json").stdout)["spec"]["clusterIP"]
        assert result["service_ip"] == svc_ip
        assert set(result["hosts"]) == names, result  # both replicas answered through the Service
        assert result["outside"].startswith("refused"), result  # no upstream forwarding
        assert result["apiserver"] == "v1.36.3"  # pods reach the API server (kubernetes Service)
        print(json.dumps({"pod_and_deployment_ready_seconds": round(ready_seconds, 1)}))
    finally:
        cluster.stop()
    after = host_snapshot()
    assert snapshot_diff(before, after) == {}


def test_cli_up_after_a_crashed_real_node_cleans_up_and_down_restores_the_host(
    image, real_node_prerequisites, tmp_path
):
    """`make cluster REAL_NODE=1` is `python -m mlops.testing.cluster up --real-node`. A run killed
    without `down` (every process SIGKILLed, state left behind) is undone by the next `up`, and `down`
    leaves the host as it was."""
    import os
    import signal
    import subprocess
    import sys

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mlops.testing.cluster", *args], capture_output=True,
                              text=True, timeout=300, check=False)

    before = host_snapshot()
    first = cli("up", "--real-node", "--dir", str(tmp_path / "first"))
    assert first.returncode == 0, first.stderr
    assert "real node real-node-" in first.stdout
    state = json.loads((tmp_path / "first" / "cluster.json").read_text())
    crashed_bridge = state["real_node"]["network"]["bridge"]
    assert crashed_bridge in host_snapshot()["links"]
    for pid in [*state["real_node"]["pids"].values(), *state["pids"].values()]:
        os.kill(pid, signal.SIGKILL)

    second = cli("up", "--real-node", "--dir", str(tmp_path / "second"))
    try:
        assert second.returncode == 0, second.stderr
        assert crashed_bridge not in host_snapshot()["links"]  # the crashed run's bridge is gone
        status = cli("status", "--dir", str(tmp_path / "second"))
        assert status.returncode == 0 and json.loads(status.stdout)["readyz"] is True
    finally:
        down = cli("down", "--dir", str(tmp_path / "second"))
    assert down.returncode == 0, down.stderr
    assert snapshot_diff(before, host_snapshot()) == {}
