"""The CRDs against the real API server: they install, the examples apply, defaults and printer
columns work, `kubectl explain` teaches, status is a subresource, and a corpus of invalid resources
is each rejected by server-side dry-run with a message naming the offending field. The pydantic
models reject the same specs."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from mlops.operator import api

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
# Folders with resources to apply (00-quickstart's manifest is written by the image build, with the
# digests of the demo models it carries).
EXAMPLES = sorted(p for p in (REPO / "examples").iterdir() if p.is_dir() and any(p.glob("*.yaml")))
DELETE = object()


def example(kind: str) -> dict[str, Any]:
    for folder in EXAMPLES:
        for path in sorted(folder.glob("*.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                if doc and doc.get("kind") == kind and doc.get("apiVersion") == api.API_VERSION:
                    return doc
    raise AssertionError(f"no example of {kind}")


def mutate(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    keys = path.split(".")
    node: Any = doc
    for key in keys[:-1]:
        node = node[int(key)] if key.isdigit() else node[key]
    last = int(keys[-1]) if keys[-1].isdigit() else keys[-1]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return doc


MDEP, ABX, RTP = "ModelDeployment", "ABExperiment", "RetrainPolicy"
STEPS_DOWN = {"strategy": "steps", "steps": [{"split": 0.5, "afterHours": 0}, {"split": 0.2, "afterHours": 24}]}

# (kind, what is wrong, path, new value, field the server must name)
INVALID = [
    (MDEP, "modelName missing", "spec.modelName", DELETE, "spec.modelName"),
    (MDEP, "modelName not a DNS label", "spec.modelName", "Churn_Model", "spec.modelName"),
    (MDEP, "stableVersion not listed", "spec.stableVersion", "v9", "spec.stableVersion"),
    (MDEP, "no versions", "spec.versions", [], "spec.versions"),
    (MDEP, "duplicate version names", "spec.versions.1.name", "v1", "spec.versions[1]"),
    (MDEP, "sha256 too short", "spec.versions.0.artifact.sha256", "abc123", "spec.versions[0].artifact.sha256"),
    (MDEP, "sha256 uppercase", "spec.versions.0.artifact.sha256", "A" * 64, "spec.versions[0].artifact.sha256"),
    (MDEP, "sha256 missing", "spec.versions.0.artifact.sha256", DELETE, "spec.versions[0].artifact.sha256"),
    (MDEP, "artifact scheme ftp", "spec.versions.0.artifact.uri", "ftp://host/m.skops", "spec.versions[0].artifact.uri"),
    (MDEP, "format pickle", "spec.versions.0.artifact.format", "pickle", "spec.versions[0].artifact.format"),
    (MDEP, "negative replicas", "spec.versions.0.replicas", -1, "spec.versions[0].replicas"),
    (MDEP, "cpu not a quantity", "spec.versions.0.resources.limits.cpu", "lots", "spec.versions[0].resources.limits"),
    (MDEP, "feature type float", "spec.featureSchema.0.type", "float", "spec.featureSchema[0].type"),
    (MDEP, "pull policy unknown", "spec.imagePullPolicy", "Sometimes", "spec.imagePullPolicy"),
    (MDEP, "warning latency above critical", "spec.monitoring.alerts.warningLatencyMs", 900, "spec.monitoring.alerts.criticalLatencyMs"),
    (MDEP, "warning accuracy drop above critical", "spec.monitoring.alerts.warningAccuracyDrop", 0.3, "spec.monitoring.alerts.criticalAccuracyDrop"),
    (MDEP, "drift threshold above 1", "spec.monitoring.alerts.driftThreshold", 1.5, "spec.monitoring.alerts.driftThreshold"),
    (MDEP, "zero critical latency", "spec.monitoring.alerts.criticalLatencyMs", 0, "spec.monitoring.alerts.criticalLatencyMs"),
    (MDEP, "collect interval 1 s", "spec.monitoring.collectIntervalSeconds", 1, "spec.monitoring.collectIntervalSeconds"),
    (MDEP, "baseline accuracy above 1", "spec.monitoring.baselineAccuracy", 1.2, "spec.monitoring.baselineAccuracy"),
    (MDEP, "header with a space", "spec.routing.userKeyHeader", "X User", "spec.routing.userKeyHeader"),
    (MDEP, "profile ref without ConfigMap", "spec.baselineProfileRef", {"key": "p.json"}, "spec.baselineProfileRef.configMapName"),
    (ABX, "treatment equals control", "spec.treatmentVersion", "v1", "spec.treatmentVersion"),
    (ABX, "split above 1", "spec.trafficSplit", 1.5, "spec.trafficSplit"),
    (ABX, "negative split", "spec.trafficSplit", -0.1, "spec.trafficSplit"),
    (ABX, "alpha 0.5", "spec.significanceLevel", 0.5, "spec.significanceLevel"),
    (ABX, "power 1", "spec.statisticalPower", 1, "spec.statisticalPower"),
    (ABX, "primary metric auc", "spec.primaryMetric", "auc", "spec.primaryMetric"),
    (ABX, "steps strategy without steps", "spec.ramping", {"strategy": "steps"}, "spec.ramping.steps"),
    (ABX, "ramp goes down", "spec.ramping", STEPS_DOWN, "spec.ramping.steps"),
    (ABX, "ramp split above 1", "spec.ramping.steps.0.split", 2, "spec.ramping.steps[0].split"),
    (ABX, "guardrail metric unknown", "spec.guardrails.0.metric", "auc", "spec.guardrails[0].metric"),
    (ABX, "zero samples per variant", "spec.minSamplesPerVariant", 0, "spec.minSamplesPerVariant"),
    (ABX, "zero duration", "spec.durationDays", 0, "spec.durationDays"),
    (ABX, "no model deployment", "spec.modelDeployment", DELETE, "spec.modelDeployment"),
    (RTP, "no trigger enabled", "spec.triggers", {}, "spec.triggers"),
    (RTP, "zero retrains per day", "spec.constraints.maxRetrainsPerDay", 0, "spec.constraints.maxRetrainsPerDay"),
    (RTP, "concurrency Allow", "spec.constraints.concurrency", "Allow", "spec.constraints.concurrency"),
    (RTP, "zero drift threshold", "spec.triggers.drift.threshold", 0, "spec.triggers.drift.threshold"),
    (RTP, "zero new samples", "spec.triggers.newData.minNewSamples", 0, "spec.triggers.newData.minNewSamples"),
    (RTP, "job without pod template", "spec.jobTemplate.spec", {"backoffLimit": 1}, "spec.jobTemplate.spec.template"),
    (RTP, "experiment split above 1", "spec.onSuccess.trafficSplit", 2, "spec.onSuccess.trafficSplit"),
    (RTP, "model deployment not a name", "spec.modelDeployment", "Bad_Name", "spec.modelDeployment"),
    (RTP, "negative hours between retrains", "spec.constraints.minHoursBetweenRetrains", -1, "spec.constraints.minHoursBetweenRetrains"),
]


def test_the_corpus_is_large_and_covers_every_kind():
    assert len(INVALID) >= 25
    assert {case[0] for case in INVALID} == {MDEP, ABX, RTP}


def test_crds_establish(cluster, crds_installed):
    assert sorted(crds_installed) == sorted(f"{plural}.{api.GROUP}" for plural, _, _ in api.KINDS.values())


def test_examples_apply_with_defaults_and_printer_columns(cluster, crds_installed, namespace):
    for folder in EXAMPLES:
        cluster.kubectl("apply", "-n", namespace, "-f", str(folder))
    mdep = json.loads(cluster.kubectl("get", "mdep", "churn", "-n", namespace, "-o", "json").stdout)
    spec = api.ModelDeploymentSpec.model_validate(mdep["spec"])
    # Server-side defaults equal the models' defaults.
    assert mdep["spec"]["image"] == api.DEFAULT_IMAGE
    assert mdep["spec"]["versions"][1]["artifact"]["format"] == "skops"
    assert mdep["spec"]["monitoring"]["alerts"]["dataQualityThreshold"] == spec.monitoring.alerts.data_quality_threshold == 0.95
    assert mdep["spec"]["monitoring"]["enabled"] is True
    assert mdep["spec"]["featureSchema"][0]["required"] is True
    for kind, short in ((ABX, "abx"), (RTP, "rtp")):
        items = json.loads(cluster.kubectl("get", short, "-n", namespace, "-o", "json").stdout)["items"]
        assert len(items) == 1
        api.KINDS[kind][1].model_validate(items[0]["spec"])
    rtp = json.loads(cluster.kubectl("get", "rtp", "-n", namespace, "-o", "json").stdout)["items"][0]
    assert rtp["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["name"] == "train"

    status = api.ModelDeploymentStatus(
        phase="Ready",
        observed_generation=mdep["metadata"]["generation"],
        current_version="v1",
        metrics=api.DeploymentMetrics(accuracy=0.91, drift_score=0.05, predictions=1200),
        conditions=[
            api.Condition(type="Ready", status="True", reason="ReplicasReady", message="3/3 ready",
                          last_transition_time="2026-01-01T00:00:00Z")
        ],
    )
    cluster.kubectl(
        "patch", "mdep", "churn", "-n", namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": status.model_dump(by_alias=True, exclude_none=True)}),
    )
    table = cluster.kubectl("get", "mdep", "-n", namespace).stdout.splitlines()
    assert table[0].split()[:6] == ["NAME", "READY", "PHASE", "VERSION", "ACCURACY", "DRIFT"]
    assert table[1].split()[:6] == ["churn", "True", "Ready", "v1", "0.91", "0.05"]

    header = cluster.kubectl("get", "abx", "-n", namespace).stdout.splitlines()[0]
    for column in ("PHASE", "SPLIT", "N-CONTROL", "N-TREATMENT", "P-VALUE", "WINNER"):
        assert column in header
    header = cluster.kubectl("get", "rtp", "-n", namespace).stdout.splitlines()[0]
    for column in ("PHASE", "LAST RUN", "RESULT", "RUNS 24H", "PENDING", "JOB"):
        assert column in header
    everything = cluster.kubectl("get", "mlops", "-n", namespace, "-o", "name").stdout.split()
    assert sorted(everything) == sorted(
        [
            f"modeldeployment.{api.GROUP}/churn",
            f"abexperiment.{api.GROUP}/churn-v2-vs-v1",
            f"retrainpolicy.{api.GROUP}/churn-retrain",
        ]
    )


def test_status_is_a_subresource_validated_by_the_schema(cluster, crds_installed, namespace):
    cluster.kubectl("apply", "-n", namespace, "-f", str(REPO / "examples" / "01-model-deployment"))
    # Status written through the main resource is ignored ...
    cluster.kubectl("patch", "mdep", "churn", "-n", namespace, "--type=merge", "-p", '{"status": {"phase": "Ready"}}')
    got = json.loads(cluster.kubectl("get", "mdep", "churn", "-n", namespace, "-o", "json").stdout)
    assert "status" not in got or "phase" not in got["status"]
    # ... and an invalid status is rejected on the subresource.
    bad = cluster.kubectl(
        "patch", "mdep", "churn", "-n", namespace, "--subresource=status", "--type=merge",
        "-p", '{"status": {"phase": "Bogus"}}', check=False,
    )
    assert bad.returncode != 0 and "status.phase" in bad.stderr


def test_kubectl_explain_teaches_the_fields(cluster, crds_installed):
    out = cluster.kubectl("explain", "modeldeployment.spec").stdout
    for text in ("stableVersion", "The version that serves all traffic", "featureSchema", "monitoring", "-required-"):
        assert text in out, text
    sha = cluster.kubectl("explain", "mdep.spec.versions.artifact.sha256").stdout
    assert "64 lowercase hex characters" in sha
    assert "sequential" in cluster.kubectl("explain", "abx.status.pValue").stdout
    assert "Forbid" in cluster.kubectl("explain", "rtp.spec.constraints.concurrency").stdout


@pytest.mark.parametrize(
    ("kind", "why", "path", "value", "field"), INVALID, ids=[f"{c[0]}: {c[1]}" for c in INVALID]
)
def test_invalid_resource_is_rejected_naming_the_field(cluster, crds_installed, kind, why, path, value, field):
    doc = mutate(example(kind), path, value)
    doc["metadata"]["name"] = "invalid"
    proc = cluster.kubectl(
        "create", "--dry-run=server", "-n", "default", "-f", "-", input=json.dumps(doc), check=False
    )
    assert proc.returncode != 0, f"accepted: {why}"
    assert "is invalid" in proc.stderr, proc.stderr
    assert field in proc.stderr, proc.stderr
    with pytest.raises(ValidationError):
        api.KINDS[kind][1].model_validate(doc["spec"])


@pytest.mark.parametrize("kind", [MDEP, ABX, RTP])
def test_each_example_passes_server_side_dry_run_unchanged(cluster, crds_installed, kind):
    doc = example(kind)
    proc = cluster.kubectl("create", "--dry-run=server", "-n", "default", "-f", "-", input=json.dumps(doc), check=False)
    assert proc.returncode == 0, proc.stderr
