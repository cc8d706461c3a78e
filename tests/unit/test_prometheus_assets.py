"""The Prometheus and Grafana assets are checked by Prometheus' own tools, not by reading them:
`promtool check rules` and `promtool test rules` on the alert rules, Prometheus' PromQL parser
(through `promtool check rules`) on every dashboard query, and the kube-state-metrics config's
paths against the CRD schemas."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "charts" / "mlops-operator" / "files" / "prometheus-rules.yaml"
DASHBOARD = REPO / "charts" / "mlops-operator" / "files" / "grafana-dashboard.json"
RUNBOOKS = REPO / "docs" / "runbooks.md"
KSM = REPO / "deploy" / "kube-state-metrics" / "custom-resource-state.yaml"
CRD_FILES = {"ModelDeployment": "modeldeployments.yaml", "ABExperiment": "abexperiments.yaml",
             "RetrainPolicy": "retrainpolicies.yaml"}
# The issue's list: accuracy drop, drift, error rate, latency, SRM, guardrail breach, retraining
# failures, operator reconcile errors, absent scrapes.
REQUIRED_ALERTS = {
    "MlopsModelAccuracyDrop", "MlopsModelDrifting", "MlopsFeatureDistributionShift", "MlopsModelHighErrorRate",
    "MlopsModelHighLatency", "MlopsExperimentSampleRatioMismatch", "MlopsExperimentGuardrailBreached",
    "MlopsRetrainingJobFailed", "MlopsRetrainPolicyLastRunFailed", "MlopsOperatorReconcileErrors",
    "MlopsOperatorAbsent", "MlopsScrapeTargetDown",
}


def promtool(tools, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tools["promtool"], *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def alerts() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [r for g in groups for r in g["rules"] if "alert" in r]


def test_promtool_check_rules(chart_tools):
    proc = promtool(chart_tools, "check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_promtool_test_rules(chart_tools):
    proc = promtool(chart_tools, "test", "rules", "rules.test.yaml", cwd=REPO / "deploy" / "prometheus")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_every_alert_of_the_issue_exists_and_is_unit_tested():
    names = {a["alert"] for a in alerts()}
    assert names >= REQUIRED_ALERTS
    tested = {t["alertname"] for case in yaml.safe_load((REPO / "deploy" / "prometheus" / "rules.test.yaml").read_text())["tests"]
              for t in case.get("alert_rule_test", [])}
    assert names <= tested, f"alerts without a promtool unit test: {sorted(names - tested)}"


def test_every_alert_has_summary_description_severity_and_a_runbook_section():
    anchors = {re.sub(r"[^a-z0-9-]", "", line[3:].strip().lower().replace(" ", "-"))
               for line in RUNBOOKS.read_text().splitlines() if line.startswith("## ")}
    for rule in alerts():
        ann = rule.get("annotations", {})
        assert ann.get("summary") and ann.get("description"), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        url = ann["runbook_url"]
        assert url.startswith("https://github.com/duetmind/mlops-operator/blob/main/docs/runbooks.md#"), url
        assert url.split("#", 1)[1] == rule["alert"].lower() and url.split("#", 1)[1] in anchors, rule["alert"]


# ------------------------------------------------------------------------------------- dashboard
GRAFANA_INTERVALS = ("$__rate_interval", "$__interval", "$__range")


def substitute(expr: str) -> str:
    """Grafana's variables by values PromQL accepts, as Grafana would interpolate them."""
    for var in GRAFANA_INTERVALS:
        expr = expr.replace(var, "5m")
    return re.sub(r"\$\{?(\w+)\}?", "value", expr)


def dashboard_queries() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            out.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", var["definition"])
            assert m, var["definition"]
            out.append((f"variable {var['name']}", m.group(1)))
    return out


def check_parses(tools, tmp_path: Path, queries: list[tuple[str, str]]) -> subprocess.CompletedProcess[str]:
    rules = {"groups": [{"name": f"q{i}", "rules": [{"record": f"dashboard:query_{i}", "expr": substitute(expr)}]}
                        for i, (_, expr) in enumerate(queries)]}
    path = tmp_path / "queries.yaml"
    path.write_text(yaml.safe_dump(rules))
    return promtool(tools, "check", "rules", str(path))


def test_every_dashboard_query_parses(chart_tools, tmp_path):
    queries = dashboard_queries()
    assert len(queries) >= 20
    proc = check_parses(chart_tools, tmp_path, queries)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # One group per query: an error would name the group, i.e. the query's index.
    assert f"SUCCESS: {len(queries)} rules found" in proc.stdout


def test_the_parser_check_catches_a_broken_query(chart_tools, tmp_path):
    proc = check_parses(chart_tools, tmp_path, [("ok", "rate(mlops_predictions_total[$__rate_interval])"),
                                                ("broken", "sum by (version (rate(mlops_predictions_total[5m]))")])
    assert proc.returncode != 0
    assert "q1" in proc.stdout + proc.stderr


def test_dashboard_uses_the_datasource_variable_everywhere():
    dash = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    text = DASHBOARD.read_text()
    # No hard-coded datasource UIDs: every "uid" of a datasource reference is the variable.
    refs = re.findall(r'"datasource":\s*\{[^}]*"uid":\s*"([^"]*)"', text)
    assert refs and set(refs) == {"${datasource}"}
    for panel in dash["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for topic in ("predictions", "accuracy", "p50", "p95", "p99", "drift", "missing", "arm", "retraining"):
        assert topic in titles, topic


def test_dashboard_queries_read_only_metrics_that_exist():
    """Every metric a query names is exported by the sidecar, router, operator, kube-state-metrics
    (our custom-resource config or its standard Job metrics) or is one of our recording rules."""
    from mlops.operator.metrics import OperatorMetrics
    from mlops.serving import sidecar_metrics

    known = {getattr(sidecar_metrics, n) for n in dir(sidecar_metrics) if n.isupper()
             and isinstance(getattr(sidecar_metrics, n), str) and getattr(sidecar_metrics, n).startswith("mlops_")}
    known |= {sidecar_metrics.LATENCY + "_bucket"}
    for family in OperatorMetrics().registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        known |= {family.name + suffix for suffix in suffixes}
    known |= {"mlops_router_requests_total", "mlops_router_treatment_share", "kube_job_status_succeeded",
              "kube_job_status_failed", "kube_job_owner"}
    ksm = yaml.safe_load(KSM.read_text())
    for res in ksm["spec"]["resources"]:
        known |= {f"{res['metricNamePrefix']}_{m['name']}" for m in res["metrics"]}
    known |= {r["record"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "record" in r}
    functions = {"sum", "rate", "histogram_quantile", "scalar", "max", "by", "on", "group_left", "label_values"}
    for where, expr in dashboard_queries() + [(r.get("alert", r.get("record")), r["expr"])
                                              for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]:
        cleaned = re.sub(r'\{[^}]*\}|\([^()]*\)\s*(?=\()|"[^"]*"', " ", expr)
        names = set(re.findall(r"\b(mlops[:_][a-z0-9_:]+|kube_[a-z_]+)\b", cleaned)) - functions
        assert names <= known, f"{where}: unknown metrics {sorted(names - known)}"


# ---------------------------------------------------------------------------- kube-state-metrics
def _schema_has(schema: dict, path: list[str]) -> dict | None:
    node = schema
    for key in path:
        props = node.get("properties") or {}
        if key not in props:
            return None
        node = props[key]
    return node


def test_kube_state_metrics_paths_exist_in_the_crd_schemas():
    ksm = yaml.safe_load(KSM.read_text())
    assert ksm["kind"] == "CustomResourceStateMetrics"
    seen = set()
    for res in ksm["spec"]["resources"]:
        gvk = res["groupVersionKind"]
        seen.add(gvk["kind"])
        crd = yaml.safe_load((REPO / "crds" / CRD_FILES[gvk["kind"]]).read_text())
        assert gvk["group"] == crd["spec"]["group"]
        version = next(v for v in crd["spec"]["versions"] if v["name"] == gvk["version"])
        schema = version["schema"]["openAPIV3Schema"]
        for m in res["metrics"]:
            each = m["each"]
            spec = each["gauge"] if each["type"] == "Gauge" else each["stateSet"]
            node = _schema_has(schema, spec["path"])
            assert node is not None, f"{gvk['kind']} {m['name']}: {spec['path']} is not in the CRD"
            if each["type"] == "StateSet":
                allowed = node.get("enum")
                if allowed:
                    assert set(spec["list"]) == set(allowed), m["name"]
            if "labelsFromPath" in spec:  # a list of objects: the paths are inside each item
                item = node["items"]
                for sub in list(spec["labelsFromPath"].values()) + [spec.get("valueFrom", [])]:
                    assert _schema_has(item, sub) is not None, f"{m['name']}: {sub}"
    assert seen == set(CRD_FILES)


@pytest.mark.parametrize("alert", sorted(REQUIRED_ALERTS))
def test_status_based_alerts_read_series_the_ksm_config_exports(alert):
    rule = next(a for a in alerts() if a["alert"] == alert)
    ksm = yaml.safe_load(KSM.read_text())
    exported = {f"{r['metricNamePrefix']}_{m['name']}" for r in ksm["spec"]["resources"] for m in r["metrics"]}
    for name in re.findall(r"\b(mlops_(?:modeldeployment|abexperiment|retrainpolicy)_[a-z_]+)", rule["expr"]):
        assert name in exported, f"{alert}: {name}"
