"""The README's four install blocks (Helm, plain manifests, kustomize, Argo CD) and the chart
README's upgrade/uninstall blocks, run as written with bash against a fresh local control plane of
their own (so nothing another test installed interferes): the operator Deployment becomes
Available on the KWOK node each time, `helm upgrade` changing a value rolls it to the new replica
count, and after `helm uninstall` only the CRDs remain.

Argo CD itself is not run here: its block is run against a stand-in `argocd` namespace holding an
`argocd-cm` ConfigMap and the Application CRD (schema-less), which shows that the patch and the
Applications apply; the health checks the patch installs are then executed from the patched
ConfigMap in gopher-lua, and the chart is rendered with the operator Application's values.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from mlops.testing.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "mlops-operator"
CRD_NAMES = ["modeldeployments.mlops.duetmind.io", "abexperiments.mlops.duetmind.io", "retrainpolicies.mlops.duetmind.io"]


def readme_block(path: Path, name: str | None = None, contains: str | None = None) -> str:
    text = path.read_text()
    if name is not None:
        m = re.search(rf"<!-- readme-test: {name} -->\n```bash\n(.*?)```", text, re.S)
        assert m, f"no block {name} in {path}"
        return m.group(1)
    blocks = [b for b in re.findall(r"```bash\n(.*?)```", text, re.S) if contains in b]
    assert len(blocks) == 1, (contains, blocks)
    return blocks[0]


@pytest.fixture(scope="module")
def fresh(chart_tools):
    from mlops.testing.cluster import ClusterError, kubectl_binary, missing_binaries, start_cluster

    if missing_binaries():
        pytest.fail("control-plane binaries missing: run `make tools`", pytrace=False)
    workdir = Path(tempfile.mkdtemp(prefix="mlops-install-"))
    try:
        cluster = start_cluster(workdir)
    except ClusterError as exc:
        pytest.fail(f"local control plane did not start: {exc}", pytrace=False)
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig),
           "PATH": os.pathsep.join([str(Path(chart_tools["helm"]).parent), str(Path(kubectl_binary()).parent),
                                    os.environ["PATH"]])}

    def sh(script: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=timeout)
        assert proc.returncode == 0, f"{script}\nexited {proc.returncode}:\n{proc.stderr}\n{proc.stdout}"
        return proc

    try:
        yield cluster, sh
    finally:
        cluster.stop()


def deployment(cluster, name: str = "mlops-operator", ns: str = "mlops-system") -> dict:
    return json.loads(cluster.kubectl("get", "deployment", name, "-n", ns, "-o", "json").stdout)


def assert_available(cluster, replicas: int) -> dict:
    dep = deployment(cluster)
    conditions = {c["type"]: c["status"] for c in dep["status"].get("conditions", [])}
    assert conditions.get("Available") == "True", dep["status"]
    assert dep["spec"]["replicas"] == replicas and dep["status"].get("availableReplicas") == replicas, dep["status"]
    return dep


def leftovers(cluster) -> list[str]:
    selector = "app.kubernetes.io/instance=mlops-operator"
    names = cluster.kubectl("get", "deploy,rs,pods,svc,sa,role,rolebinding,pdb,configmap,networkpolicy", "-n",
                            "mlops-system", "-l", selector, "-o", "name").stdout.split()
    names += cluster.kubectl("get", "clusterrole,clusterrolebinding", "-l", selector, "-o", "name").stdout.split()
    return names


def test_plain_manifests_then_kustomize(fresh):
    cluster, sh = fresh
    sh(readme_block(REPO / "README.md", "manifests"))
    dep = assert_available(cluster, 2)
    assert "--leader-elect" in dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert cluster.kubectl("get", "pdb", "mlops-operator", "-n", "mlops-system", check=False).returncode == 0
    # kustomize over the same objects: same result, nothing conflicts.
    sh(readme_block(REPO / "README.md", "kustomize"))
    assert_available(cluster, 2)
    for crd in CRD_NAMES:
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")
    # Make room for the Helm install (it may not adopt objects it did not create).
    cluster.kubectl("delete", "-f", str(REPO / "manifests" / "operator.yaml"), "-f", str(REPO / "manifests" / "rbac.yaml"),
                    "--wait=true", timeout=120)
    wait_until(lambda: not cluster.kubectl("get", "pods", "-n", "mlops-system", "-o", "name").stdout.strip(), 120,
               "the manifests' pods to go")


def test_helm_install_upgrade_uninstall(fresh):
    cluster, sh = fresh
    out = sh(readme_block(REPO / "README.md", "helm")).stdout
    # NOTES.txt: what was installed, how to check it, and how CRDs are upgraded.
    assert "mlops-operator 0.1.0 is installed in namespace mlops-system (2 replica(s), leader election" in out
    assert "helm show crds" in out
    dep = assert_available(cluster, 2)
    assert dep["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"

    # The chart README's CRD upgrade and upgrade blocks, then an upgrade that changes a value.
    chart_readme = CHART / "README.md"
    sh(readme_block(chart_readme, contains="helm show crds"))
    sh("helm upgrade mlops-operator charts/mlops-operator -n mlops-system --reuse-values --set replicaCount=3 --wait")
    assert_available(cluster, 3)
    history = json.loads(sh("helm history mlops-operator -n mlops-system -o json").stdout)
    assert [h["revision"] for h in history] == [1, 2, 3] and history[-1]["status"] == "deployed"

    assert leftovers(cluster)
    sh(readme_block(chart_readme, contains="helm uninstall"))
    assert wait_until(lambda: not leftovers(cluster), 120, "every chart object to be deleted") is True
    assert not sh("helm list -n mlops-system -q").stdout.strip()
    # Only the CRDs remain (Helm never deletes crds/).
    for crd in CRD_NAMES:
        assert cluster.kubectl("get", "crd", crd, check=False).returncode == 0, crd


APPLICATION_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "applications.argoproj.io"},
    "spec": {"group": "argoproj.io", "scope": "Namespaced",
             "names": {"kind": "Application", "plural": "applications", "singular": "application"},
             "versions": [{"name": "v1alpha1", "served": True, "storage": True,
                           "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]},
}


def test_argocd_block(fresh, chart_tools, tmp_path):
    cluster, sh = fresh
    cluster.create_namespace("argocd")
    cluster.kubectl("apply", "-f", "-", input=json.dumps(APPLICATION_CRD))
    cluster.kubectl("wait", "--for=condition=Established", "crd/applications.argoproj.io", "--timeout=60s")
    cluster.kubectl("create", "configmap", "argocd-cm", "-n", "argocd", "--from-literal=url=https://argocd.example.com")
    sh(readme_block(REPO / "README.md", "argocd"))

    cm = json.loads(cluster.kubectl("get", "configmap", "argocd-cm", "-n", "argocd", "-o", "json").stdout)
    assert cm["data"]["url"] == "https://argocd.example.com"  # merged, not replaced
    health = REPO / "deploy" / "argocd" / "health" / "mlops.duetmind.io"
    for kind in ("ModelDeployment", "ABExperiment", "RetrainPolicy"):
        lua = cm["data"][f"resource.customizations.health.mlops.duetmind.io_{kind}"]
        script = tmp_path / f"{kind}.lua"
        script.write_text(lua)
        for case in yaml.safe_load((health / kind / "health_test.yaml").read_text())["tests"]:
            obj = yaml.safe_load((health / kind / case["inputPath"]).read_text())
            out = subprocess.run([chart_tools["luahealth"], str(script)], input=json.dumps(obj), capture_output=True,
                                 text=True, timeout=30, check=True).stdout
            assert json.loads(out) == case["healthStatus"]

    apps = json.loads(cluster.kubectl("get", "applications", "-n", "argocd", "-o", "json").stdout)["items"]
    by_name = {a["metadata"]["name"]: a for a in apps}
    assert set(by_name) == {"mlops-operator", "mlops-examples"}
    source = by_name["mlops-operator"]["spec"]["source"]
    assert (REPO / source["path"] / "Chart.yaml").exists()
    assert (REPO / by_name["mlops-examples"]["spec"]["source"]["path"]).is_dir()
    assert "ServerSideApply=true" in by_name["mlops-examples"]["spec"]["syncPolicy"]["syncOptions"]
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(source["helm"]["valuesObject"]))
    sh(f"helm template {source['helm']['releaseName']} {source['path']} -n "
       f"{by_name['mlops-operator']['spec']['destination']['namespace']} -f {values} > /dev/null")
