"""The local control plane behaves like a cluster: API ready, workloads scheduled and made Ready by
KWOK, Jobs complete, garbage collection cascades, RBAC separates ServiceAccounts from the admin, and
PodSecurity admission rejects non-compliant pods. `up`/`down` leave no process behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlops.testing import cluster as cluster_mod
from mlops.testing.waiting import wait_until

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def get_json(cluster, *args: str) -> dict:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def deployment(name: str, replicas: int) -> str:
    return json.dumps(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "labels": {"app": name}},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10"}]},
                },
            },
        }
    )


def job(name: str, annotations: dict[str, str] | None = None) -> str:
    return json.dumps(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": name},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "metadata": {"annotations": annotations or {}},
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": "main", "image": "busybox:1.36", "command": ["true"]}],
                    },
                },
            },
        }
    )


def test_api_server_is_ready_and_reports_its_pinned_version(cluster):
    assert cluster.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)["serverVersion"]
    assert version["gitVersion"] == cluster_mod.K8S_VERSION
    nodes = get_json(cluster, "nodes")["items"]
    assert [n["metadata"]["name"] for n in nodes] == cluster.node_names


def test_deployment_reaches_two_ready_replicas_and_deletion_garbage_collects(cluster, namespace):
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=deployment("web", 2))
    wait_until(
        lambda: get_json(cluster, "deployment", "web", "-n", namespace).get("status", {}).get("readyReplicas") == 2,
        90,
        "2 ready replicas",
    )
    pods = get_json(cluster, "pods", "-n", namespace, "-l", "app=web")["items"]
    assert len(pods) == 2
    assert all(p["spec"]["nodeName"] in cluster.node_names for p in pods)
    assert all(p["status"]["phase"] == "Running" for p in pods)
    replicasets = get_json(cluster, "replicasets", "-n", namespace, "-l", "app=web")["items"]
    assert len(replicasets) == 1

    cluster.kubectl("delete", "deployment", "web", "-n", namespace, "--wait=false")
    wait_until(
        lambda: not get_json(cluster, "replicasets", "-n", namespace, "-l", "app=web")["items"],
        90,
        "ReplicaSet garbage-collected",
    )
    wait_until(
        lambda: not get_json(cluster, "pods", "-n", namespace, "-l", "app=web")["items"],
        90,
        "Pods garbage-collected",
    )


def test_job_completes(cluster, namespace):
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=job("train"))
    cluster.kubectl("wait", "-n", namespace, "--for=condition=Complete", "--timeout=90s", "job/train", timeout=100)
    status = get_json(cluster, "job", "train", "-n", namespace)["status"]
    assert status["succeeded"] == 1


def test_job_pod_annotated_to_fail_fails_the_job(cluster, namespace):
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=job("bad", {"mlops.duetmind.io/kwok-fail": "true"}))
    cluster.kubectl("wait", "-n", namespace, "--for=condition=Failed", "--timeout=90s", "job/bad", timeout=100)
    assert get_json(cluster, "job", "bad", "-n", namespace)["status"].get("succeeded", 0) == 0


def test_restricted_namespace_rejects_a_non_compliant_pod(cluster, restricted_namespace):
    privileged = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "root-pod"},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36", "securityContext": {"privileged": True}}]},
    }
    proc = cluster.kubectl(
        "apply", "-n", restricted_namespace, "--dry-run=server", "-f", "-", input=json.dumps(privileged), check=False
    )
    assert proc.returncode != 0
    assert "violates PodSecurity" in proc.stderr and "privileged" in proc.stderr

    compliant = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "ok-pod"},
        "spec": {
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "c",
                    "image": "busybox:1.36",
                    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                }
            ],
        },
    }
    cluster.kubectl("apply", "-n", restricted_namespace, "--dry-run=server", "-f", "-", input=json.dumps(compliant))


def test_service_account_credentials_are_subject_to_rbac(cluster, namespace):
    kubeconfig = cluster.service_account_kubeconfig(namespace, "operator")
    who = json.loads(cluster.kubectl("auth", "whoami", "-o", "json", kubeconfig=kubeconfig).stdout)
    assert who["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:operator"
    denied = cluster.kubectl("get", "pods", "-n", namespace, kubeconfig=kubeconfig, check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()

    cluster.kubectl("create", "role", "pod-reader", "-n", namespace, "--verb=get,list", "--resource=pods")
    cluster.kubectl(
        "create", "rolebinding", "pod-reader", "-n", namespace, "--role=pod-reader",
        f"--serviceaccount={namespace}:operator",
    )
    wait_until(
        lambda: cluster.kubectl("get", "pods", "-n", namespace, kubeconfig=kubeconfig, check=False).returncode == 0,
        30,
        "RBAC grant to take effect",
    )
    still_denied = cluster.kubectl("get", "secrets", "-n", "kube-system", kubeconfig=kubeconfig, check=False)
    assert still_denied.returncode != 0
    admin = json.loads(cluster.kubectl("auth", "whoami", "-o", "json").stdout)["status"]["userInfo"]
    assert "system:masters" in admin["groups"]


def test_api_client_talks_to_the_cluster(cluster, namespace):
    from kubernetes import client

    with cluster.api_client() as api:
        names = [ns.metadata.name for ns in client.CoreV1Api(api).list_namespace().items]
    assert namespace in names


def test_build_script_and_python_agree_on_the_binary_folder():
    printed = subprocess.run(
        ["bash", str(REPO / "hack" / "build-control-plane.sh"), "--print"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert Path(printed) == cluster_mod.bin_dir()


@pytest.mark.slow
def test_cli_up_then_down_leaves_no_process(tmp_path):
    if cluster_mod.missing_binaries():
        pytest.fail("control-plane binaries missing: run `make tools`", pytrace=False)
    workdir = tmp_path / "cli-cluster"
    env = {**os.environ}
    up = subprocess.run(
        [sys.executable, "-m", "mlops.testing.cluster", "up", "--dir", str(workdir)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    pids = {}
    try:
        assert up.returncode == 0, up.stderr
        assert f"export KUBECONFIG={workdir / 'kubeconfig'}" in up.stdout
        pids = json.loads((workdir / "cluster.json").read_text())["pids"]
        assert set(pids) == set(cluster_mod.BINARIES)
        ready = subprocess.run(
            [cluster_mod.kubectl_binary(), "--kubeconfig", str(workdir / "kubeconfig"), "get", "--raw", "/readyz"],
            capture_output=True, text=True, timeout=30,
        )
        assert ready.stdout.strip() == "ok"
    finally:
        down = subprocess.run(
            [sys.executable, "-m", "mlops.testing.cluster", "down", "--dir", str(workdir)],
            capture_output=True, text=True, timeout=120, env=env,
        )
    assert down.returncode == 0, down.stderr
    assert not workdir.exists()
    assert pids, "no PIDs recorded"
    assert not [name for name, pid in pids.items() if cluster_mod._pid_runs(pid, name)]
