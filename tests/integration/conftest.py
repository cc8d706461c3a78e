"""Fixtures for the integration tier that needs the real local Kubernetes control plane.

The cluster starts lazily (only when a test asks for ``cluster``), once per session, on free ports in
a temp folder, and is torn down even when tests fail. Missing binaries fail loudly with the command
that builds them: nothing is skipped silently. Tests that need no cluster pay nothing: the cluster
module is imported inside the fixtures.
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RESTRICTED_NAMESPACE = "mlops-restricted"


@pytest.fixture(scope="session")
def cluster():
    from mlops.testing.cluster import ClusterError, missing_binaries, start_cluster

    missing = missing_binaries()
    if missing:
        pytest.fail(
            f"control-plane binaries missing ({', '.join(missing)}): run `make tools` once "
            "(bash hack/build-control-plane.sh builds them from Go modules and caches them)",
            pytrace=False,
        )
    workdir = Path(tempfile.mkdtemp(prefix="mlops-cluster-"))
    try:
        local = start_cluster(workdir)
    except ClusterError as exc:
        pytest.fail(f"local control plane did not start: {exc}", pytrace=False)
    try:
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="session")
def restricted_namespace(cluster) -> str:
    """A namespace enforcing the `restricted` Pod Security Standard (PodSecurity admission)."""
    cluster.create_namespace(
        RESTRICTED_NAMESPACE,
        labels={
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest",
        },
    )
    return RESTRICTED_NAMESPACE


@pytest.fixture
def namespace(cluster):
    """A fresh namespace per test, deleted afterwards (without waiting for finalization)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    cluster.create_namespace(name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def crds_installed(cluster) -> list[str]:
    """Apply crds/ and wait until every CRD is Established; returns the CRD names."""
    cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    names = [
        item["metadata"]["name"]
        for item in json.loads(cluster.kubectl("get", "-f", str(REPO / "crds"), "-o", "json").stdout)["items"]
    ]
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", *[f"crd/{n}" for n in names])
    # Discovery can lag Established by a moment; kubectl explain and get by short name need it.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if cluster.kubectl("get", "mdep,abx,rtp", "-A", check=False).returncode == 0:
            break
        time.sleep(0.5)
    return names


# ---- the operator under its own RBAC (shared by the operator test modules)
@pytest.fixture(scope="session")
def operator_kubeconfig(cluster, crds_installed) -> Path:
    """The operator's own ServiceAccount token, bound by manifests/rbac.yaml and nothing else."""
    cluster.create_namespace("mlops-system")
    cluster.kubectl("apply", "-f", str(REPO / "manifests" / "rbac.yaml"))
    kubeconfig = cluster.service_account_kubeconfig("mlops-system", "mlops-operator")
    # It is not an admin: it may not touch Nodes, RBAC, or Leases outside its own namespace.
    for verb, what, *ns in (("list", "nodes"), ("create", "clusterroles"), ("create", "leases", "-n", "default")):
        denied = cluster.kubectl("auth", "can-i", verb, what, *(ns or ["-A"]), kubeconfig=kubeconfig, check=False)
        assert denied.stdout.strip() == "no", (verb, what)
    return kubeconfig


@pytest.fixture(scope="session")
def admin(cluster):
    from mlops.operator.k8s import Kube

    return Kube(cluster.api_client())
