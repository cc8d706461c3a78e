"""The Helm chart (charts/mlops-operator) checked with the real tools: `helm lint --strict` and
`helm template` for the default values and every ci/*-values.yaml, each rendering validated by
kubeconform in strict mode against schemas taken from the local kube-apiserver's OpenAPI and from
our CRDs; values.schema.json rejecting bad values with the key named; the generated files
(manifests/, the chart's crds/, the chart README's values table, the Argo CD ConfigMap patch)
current; and the issue-12 operator contract (2 replicas, PDB, readiness probe, leader election,
RBAC) present in what the chart renders."""

from __future__ import annotations

import filecmp
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import mlops

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "mlops-operator"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
VARIANTS = [None, *CI_VALUES]
MONITORING_KINDS = ("ServiceMonitor", "PodMonitor", "PrometheusRule")


def variant_id(values: Path | None) -> str:
    return "default" if values is None else values.name


def run(*cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=300, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr}\n{proc.stdout[-3000:]}")
    return proc


def template(helm: str, *args: str, values: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    extra = ["-f", str(values)] if values else []
    return run(helm, "template", "mlops-operator", str(CHART), "--namespace", "mlops-system", *extra, *args, check=check)


def objects(rendered: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(rendered) if d]


def find(objs: list[dict], kind: str, name: str | None = None) -> dict:
    matches = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(matches) == 1, (kind, name, [o["metadata"]["name"] for o in matches])
    return matches[0]


# --------------------------------------------------------------------------------- kubeconform schemas
def _strict(node):
    """Close every object schema (additionalProperties: false), as kubeconform's -strict schemas do.
    ``properties``/``definitions`` are maps of name -> schema: their keys are names, not keywords."""
    if isinstance(node, list):
        return [_strict(v) for v in node]
    if not isinstance(node, dict):
        return node
    if node.get("x-kubernetes-int-or-string") is True:
        return {"oneOf": [{"type": "string"}, {"type": "integer"}]}
    out = {}
    for key, value in node.items():
        if key in ("properties", "definitions", "patternProperties") and isinstance(value, dict):
            out[key] = {name: _strict(schema) for name, schema in value.items()}
        elif isinstance(value, (dict, list)):
            out[key] = _strict(value)
        else:
            out[key] = value
    if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


SPECIAL = {
    "io.k8s.apimachinery.pkg.util.intstr.IntOrString": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
    "io.k8s.apimachinery.pkg.api.resource.Quantity": {"oneOf": [{"type": "string"}, {"type": "number"}]},
}


@pytest.fixture(scope="module")
def schema_dir(cluster, crds_installed, tmp_path_factory) -> Path:
    """Strict JSON schemas for kubeconform: the built-in kinds from the real kube-apiserver's OpenAPI
    (/openapi/v2), our three kinds from crds/ (not from the server, so the files are what is tested)."""
    out = tmp_path_factory.mktemp("schemas")
    spec = json.loads(cluster.kubectl("get", "--raw", "/openapi/v2", timeout=120).stdout)
    definitions = {name: SPECIAL.get(name, _strict(d)) for name, d in spec["definitions"].items()}

    def refs(node, seen: set[str]) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/definitions/"):
                name = ref.removeprefix("#/definitions/")
                if name not in seen:
                    seen.add(name)
                    refs(definitions[name], seen)
            for v in node.values():
                refs(v, seen)
        elif isinstance(node, list):
            for v in node:
                refs(v, seen)

    for name, definition in definitions.items():
        for gvk in definition.get("x-kubernetes-group-version-kind") or []:
            if gvk["group"].endswith("mlops.duetmind.io"):
                continue
            group = gvk["group"] or gvk["version"]  # kubeconform's .Group: the apiVersion before "/"
            needed = {name}
            refs(definition, needed)
            doc = {"$ref": f"#/definitions/{name}", "definitions": {n: definitions[n] for n in needed}}
            (out / f"{gvk['kind'].lower()}_{group}_{gvk['version']}.json").write_text(json.dumps(doc))
    for path in sorted((REPO / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            schema = _strict(version["schema"]["openAPIV3Schema"])
            schema["properties"]["apiVersion"] = {"type": "string"}
            schema["properties"]["kind"] = {"type": "string"}
            schema["properties"]["metadata"] = {"type": "object"}
            group = crd["spec"]["group"]
            (out / f"{crd['spec']['names']['kind'].lower()}_{group}_{version['name']}.json").write_text(json.dumps(schema))
    return out


def kubeconform(tools, schema_dir: Path, *files: str, stdin: str | None = None) -> dict:
    location = str(schema_dir) + "/{{ .ResourceKind }}_{{ .Group }}_{{ .ResourceAPIVersion }}.json"
    proc = run(tools["kubeconform"], "-strict", "-summary", "-output", "json", "-schema-location", location,
               "-skip", ",".join(MONITORING_KINDS), *(files or ["-"]), input=stdin, check=False)
    report = json.loads(proc.stdout)
    report["returncode"] = proc.returncode
    return report


# --------------------------------------------------------------------------------------- static
def test_app_version_is_the_package_version():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    pyproject = re.search(r'(?m)^version = "([^"]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    assert chart["appVersion"] == mlops.__version__ == pyproject


def test_chart_crds_are_byte_identical_to_the_top_level_crds():
    top = sorted(p.name for p in (REPO / "crds").glob("*.yaml"))
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == top
    match, mismatch, errors = filecmp.cmpfiles(REPO / "crds", CHART / "crds", top, shallow=False)
    assert not mismatch and not errors, f"charts/mlops-operator/crds differ from crds/: {mismatch + errors} (make manifests)"


def test_generated_files_are_current(chart_tools):
    """manifests/, the chart's crds/, the chart README's values table and the Argo CD patch equal what
    `make manifests` renders from the chart with default values."""
    proc = run(sys.executable, str(REPO / "hack" / "render.py"), "--check", "--helm", chart_tools["helm"], check=False)
    assert proc.returncode == 0, proc.stderr


def test_the_manifests_check_fails_on_a_stale_file(chart_tools, tmp_path):
    """The check above can fail: render into a copy whose operator.yaml was edited by hand."""
    import shutil

    copy = tmp_path / "repo"
    for part in ("charts", "crds", "manifests", "hack", "deploy"):
        shutil.copytree(REPO / part, copy / part)
    path = copy / "manifests" / "operator.yaml"
    path.write_text(path.read_text().replace("replicas: 2", "replicas: 1"))
    proc = run(sys.executable, str(copy / "hack" / "render.py"), "--check", "--helm", chart_tools["helm"], check=False)
    assert proc.returncode == 1 and "-  replicas: 1" in proc.stderr and "+  replicas: 2" in proc.stderr


# ------------------------------------------------------------------------------------ lint/template
@pytest.mark.parametrize("values", VARIANTS, ids=variant_id)
def test_helm_lint_strict(chart_tools, values):
    extra = ["-f", str(values)] if values else []
    proc = run(chart_tools["helm"], "lint", "--strict", str(CHART), *extra)
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("values", VARIANTS, ids=variant_id)
def test_template_passes_kubeconform_strict(chart_tools, schema_dir, values, tmp_path):
    rendered = template(chart_tools["helm"], "--include-crds", values=values).stdout
    report = kubeconform(chart_tools, schema_dir, stdin=rendered)
    summary = report["summary"]
    assert report["returncode"] == 0 and summary["invalid"] == 0 and summary["errors"] == 0, report
    kinds = {o["kind"] for o in objects(rendered)}
    assert summary["valid"] == len([o for o in objects(rendered) if o["kind"] not in MONITORING_KINDS])
    assert {"Deployment", "ServiceAccount", "ClusterRole", "Service", "CustomResourceDefinition"} <= kinds
    # The kinds kubeconform has no schema for are checked by their own tools.
    for obj in objects(rendered):
        if obj["kind"] == "PrometheusRule":
            path = tmp_path / "rules.yaml"
            path.write_text(yaml.safe_dump(obj["spec"]))
            assert run(chart_tools["promtool"], "check", "rules", str(path)).returncode == 0


def test_kubeconform_strict_rejects_an_unknown_field(chart_tools, schema_dir):
    objs = objects(template(chart_tools["helm"]).stdout)
    deployment = find(objs, "Deployment")
    deployment["spec"]["replica"] = 2
    report = kubeconform(chart_tools, schema_dir, stdin=yaml.safe_dump(deployment))
    assert report["summary"]["invalid"] == 1
    assert "replica" in json.dumps(report["resources"])


def test_examples_pass_kubeconform_against_the_crd_schemas(chart_tools, schema_dir):
    files = [str(p) for p in sorted((REPO / "examples").rglob("*.yaml"))]
    fixtures = [str(p) for p in sorted((REPO / "deploy" / "argocd" / "health").rglob("testdata/*.yaml"))]
    report = kubeconform(chart_tools, schema_dir, *files, *fixtures)
    assert report["returncode"] == 0 and report["summary"]["valid"] == len(files) + len(fixtures), report


@pytest.mark.parametrize(("args", "key"), [
    (["--set", "replicaCount=-1"], "/replicaCount"),
    (["--set", "logFormat=xml"], "/logFormat"),
    (["--set", "replicas=2"], "replicas"),
    (["--set", "image.digest=latest"], "/image/digest"),
    (["--set", "image.pullPolicy=Sometimes"], "/image/pullPolicy"),
    (["--set", "watch.scope=everywhere"], "/watch/scope"),
    (["--set", "artifacts.allowedSchemes={ftp}"], "/artifacts/allowedSchemes/0"),
    (["--set", "prometheusUrl=prometheus:9090"], "/prometheusUrl"),
    (["--set", "ports.metrics=70000"], "/ports/metrics"),
])
def test_bad_values_are_rejected_naming_the_key(chart_tools, args, key):
    proc = template(chart_tools["helm"], *args, check=False)
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr, proc.stderr
    assert key in proc.stderr, proc.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "watch.scope=namespaced"], "watch.namespaces must list at least one namespace"),
    (["--set", "leaderElection.enabled=false"], "replicaCount > 1 needs leaderElection.enabled"),
])
def test_inconsistent_values_fail_with_a_message(chart_tools, args, message):
    proc = template(chart_tools["helm"], *args, check=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


# -------------------------------------------------------------------------- what the chart renders
def test_default_render_carries_the_operator_contract(chart_tools):
    objs = objects(template(chart_tools["helm"]).stdout)
    dep = find(objs, "Deployment", "mlops-operator")
    assert dep["spec"]["replicas"] == 2 and dep["metadata"]["namespace"] == "mlops-system"
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == f"ghcr.io/duetmind/mlops-operator:{mlops.__version__}"
    args = container["args"]
    for arg in ("--all-namespaces", "--liveness-port=8081", "--metrics-port=8082", "--log-format=json",
                "--leader-elect", "--leader-election-lease-name=mlops-operator",
                "--artifact-allowed-schemes=https,s3,gs"):
        assert arg in args, arg
    assert not any(a.startswith("--artifact-allowed-hosts") for a in args)
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert {"name": "healthz", "containerPort": 8081, "protocol": "TCP"} in container["ports"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    pdb = find(objs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]

    rules = find(objs, "ClusterRole")["rules"]

    def verbs(group: str, resource: str) -> set[str]:
        return {v for r in rules if group in r["apiGroups"] and resource in r["resources"] for v in r["verbs"]}

    assert verbs("", "secrets") >= {"get", "list", "watch", "create", "patch", "delete"}
    assert verbs("autoscaling", "horizontalpodautoscalers") >= {"get", "list", "watch", "create", "patch", "delete"}
    assert verbs("batch", "jobs") >= {"get", "list", "watch", "create", "patch", "delete"}
    for group in ("", "events.k8s.io"):
        assert verbs(group, "events") >= {"create", "patch", "update", "get", "list"}
    assert not verbs("", "nodes") and not verbs("", "namespaces")
    lease_role = find(objs, "Role", "mlops-operator-leader-election")
    assert lease_role["metadata"]["namespace"] == "mlops-system"
    assert lease_role["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                                    "verbs": ["get", "create", "update", "patch"]}]
    binding = find(objs, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "mlops-operator", "namespace": "mlops-system"}]
    assert not [o for o in objs if o["kind"] in (*MONITORING_KINDS, "NetworkPolicy", "ConfigMap")]


def test_namespaced_scope_binds_only_the_watched_namespaces(chart_tools):
    objs = objects(template(chart_tools["helm"], values=CHART / "ci" / "namespaced-values.yaml").stdout)
    assert not [o for o in objs if o["kind"] == "ClusterRoleBinding"]
    bindings = [o for o in objs if o["kind"] == "RoleBinding" and o["roleRef"]["kind"] == "ClusterRole"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    args = find(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args and "--all-namespaces" not in args


def test_monitoring_variant_ships_the_rules_and_dashboard_unchanged(chart_tools):
    objs = objects(template(chart_tools["helm"], values=CHART / "ci" / "monitoring-values.yaml").stdout)
    rule = find(objs, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    cm = find(objs, "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1" and cm["metadata"]["namespace"] == "monitoring"
    assert json.loads(cm["data"]["mlops-operator.json"]) == json.loads((CHART / "files" / "grafana-dashboard.json").read_text())
    monitor = find(objs, "ServiceMonitor")
    service = find(objs, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"] == "metrics"
    assert find(objs, "NetworkPolicy")["spec"]["podSelector"] == find(objs, "Deployment")["spec"]["selector"]


def test_production_variant_pins_the_digest_and_passes_every_setting(chart_tools):
    objs = objects(template(chart_tools["helm"], values=CHART / "ci" / "production-values.yaml").stdout)
    dep = find(objs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"].startswith("registry.example.com/mlops/mlops-operator@sha256:")
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"} and pod["tolerations"][0]["key"] == "dedicated"
    assert "requiredDuringSchedulingIgnoredDuringExecution" in pod["affinity"]["podAntiAffinity"]
    assert "--artifact-allowed-hosts=models.example.com,s3.eu-west-1.amazonaws.com" in container["args"]
    assert "--prometheus-url=http://prometheus-operated.monitoring.svc:9090" in container["args"]
    assert "--resync-interval=120" in container["args"]
    assert find(objs, "PodDisruptionBudget")["spec"]["minAvailable"] == 2


def test_single_replica_variant_has_no_leader_election_and_no_pdb(chart_tools):
    objs = objects(template(chart_tools["helm"], values=CHART / "ci" / "single-replica-values.yaml").stdout)
    dep = find(objs, "Deployment")
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--no-leader-elect" in args and "--log-format=text" in args
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    assert not [o for o in objs if o["kind"] in ("PodDisruptionBudget", "Role")]
