"""The pydantic models in mlops/operator/api.py and the CRD schemas in crds/ describe the same API.

Both sides are normalised to one tree (type, properties, required, enum, default, bounds, pattern,
lengths, items, additional properties) and compared in both directions, so a field added, renamed,
made required or given another default on one side only fails here with its path.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from mlops.operator import api

ROOT = Path(__file__).resolve().parents[2]
CRD_FILES = {
    "ModelDeployment": "modeldeployments.yaml",
    "ABExperiment": "abexperiments.yaml",
    "RetrainPolicy": "retrainpolicies.yaml",
}
FREE = "<any>"


def load_crd(kind: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / "crds" / CRD_FILES[kind]).read_text())


def crd_schema(kind: str) -> dict[str, Any]:
    (version,) = load_crd(kind)["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


def _bounds(lo, lo_excl, hi, hi_excl):
    return {
        k: v
        for k, v in (("lo", lo), ("lo_excl", lo_excl or None), ("hi", hi), ("hi_excl", hi_excl or None))
        if v is not None
    }


def apply_defaults(node: dict[str, Any], value: Any) -> Any:
    """What the API server stores for ``value``: nested defaults filled in, recursively."""
    if node.get("type") == "object" and isinstance(value, dict):
        for name, child in node.get("properties", {}).items():
            if name in value:
                value[name] = apply_defaults(child, value[name])
            elif "default" in child:
                value[name] = apply_defaults(child, copy.deepcopy(child["default"]))
    return value


def norm_crd(node: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = "int-or-string"
    elif "type" in node:
        out["type"] = node["type"]
    else:
        return {"type": FREE}
    for key in ("enum", "pattern", "minLength", "maxLength", "minItems", "maxItems", "maxProperties"):
        if key in node:
            out[key] = node[key]
    if "default" in node:
        out["default"] = apply_defaults(node, copy.deepcopy(node["default"]))
    b = _bounds(node.get("minimum"), node.get("exclusiveMinimum"), node.get("maximum"), node.get("exclusiveMaximum"))
    if b:
        out["bounds"] = b
    if node.get("type") == "object":
        out["properties"] = {k: norm_crd(v) for k, v in node.get("properties", {}).items()}
        out["required"] = sorted(node.get("required", []))
        if node.get("x-kubernetes-preserve-unknown-fields"):
            out["additional"] = {"type": FREE}
        elif "additionalProperties" in node:
            out["additional"] = norm_crd(node["additionalProperties"])
    if node.get("type") == "array":
        out["items"] = norm_crd(node["items"])
    return out


class PydanticSide:
    """Normalises a model's JSON schema (by alias) into the same tree as ``norm_crd``."""

    def __init__(self, model: type[BaseModel]):
        self.model = model
        self.schema = model.model_json_schema(by_alias=True)
        self.defs = self.schema.get("$defs", {})

    def resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            node = {**self.defs[node["$ref"].split("/")[-1]], **{k: v for k, v in node.items() if k != "$ref"}}
        if "anyOf" in node:
            branches = [b for b in node["anyOf"] if b != {"type": "null"}]
            rest = {k: v for k, v in node.items() if k != "anyOf"}
            if len(branches) == 1:
                return self.resolve({**rest, **branches[0]})
            types = sorted(self.resolve(b).get("type", "") for b in branches)
            if types == ["integer", "string"]:
                pattern = next(b.get("pattern") for b in branches if b.get("type") == "string")
                return {**rest, "x-int-or-string": True, "pattern": pattern}
            raise AssertionError(f"unsupported union {node}")
        return node

    def norm(self, node: dict[str, Any], default_present: bool) -> dict[str, Any]:
        node = self.resolve(node)
        out: dict[str, Any] = {}
        if node.get("x-int-or-string"):
            out["type"] = "int-or-string"
        elif "type" in node:
            out["type"] = node["type"]
        else:
            return {"type": FREE}
        if "const" in node:
            out["enum"] = [node["const"]]
        for key in ("enum", "pattern", "minLength", "maxLength", "maxProperties"):
            if key in node:
                out[key] = node[key]
        if node.get("type") == "array":
            for src, dst in (("minItems", "minItems"), ("maxItems", "maxItems")):
                if src in node:
                    out[dst] = node[src]
        if default_present and node.get("default") is not None:
            out["default"] = node["default"]
        b = _bounds(
            node.get("minimum", node.get("exclusiveMinimum")),
            "exclusiveMinimum" in node,
            node.get("maximum", node.get("exclusiveMaximum")),
            "exclusiveMaximum" in node,
        )
        if b:
            out["bounds"] = b
        if node.get("type") == "object":
            props = node.get("properties", {})
            out["properties"] = {k: self.norm(v, "default" in v) for k, v in props.items()}
            out["required"] = sorted(node.get("required", []))
            extra = node.get("additionalProperties")
            if extra is True:
                out["additional"] = {"type": FREE}
            elif isinstance(extra, dict):
                out["additional"] = self.norm(extra, False)
        if node.get("type") == "array":
            out["items"] = self.norm(node["items"], False)
        return out

    def tree(self) -> dict[str, Any]:
        return self.norm(self.schema, False)


def model_defaults_as_crd(model: type[BaseModel], tree: dict[str, Any]) -> None:
    """pydantic omits default_factory defaults from JSON schema: fill in the sub-model it builds, as
    the API server stores it (the CRD side applies nested defaults to its object defaults)."""
    for name, field in model.model_fields.items():
        alias = field.alias or name
        default = field.get_default(call_default_factory=True) if field.default_factory else None
        if isinstance(default, BaseModel):
            tree["properties"][alias]["default"] = default.model_dump(by_alias=True, exclude_none=True)
        ann = field.annotation
        sub = _submodel(ann)
        if sub is not None and alias in tree["properties"]:
            node = tree["properties"][alias]
            if node.get("type") == "array":
                node = node["items"]
            if node.get("type") == "object" and "properties" in node:
                model_defaults_as_crd(sub, node)


def _submodel(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _submodel(arg)
        if found is not None:
            return found
    return None


def diff(a: Any, b: Any, path: str = "") -> list[str]:
    """Differences between two normalised trees (a = CRD, b = pydantic)."""
    if isinstance(a, dict) and isinstance(b, dict):
        problems = []
        for key in sorted(set(a) | set(b)):
            if key not in a:
                problems.append(f"{path}.{key}: only in the pydantic model ({b[key]!r})")
            elif key not in b:
                problems.append(f"{path}.{key}: only in the CRD ({a[key]!r})")
            else:
                problems.extend(diff(a[key], b[key], f"{path}.{key}"))
        return problems
    if isinstance(a, float | int) and isinstance(b, float | int) and not isinstance(a, bool):
        return [] if math.isclose(a, b) else [f"{path}: CRD {a!r} != model {b!r}"]
    return [] if a == b else [f"{path}: CRD {a!r} != model {b!r}"]


CASES = [
    (kind, part, model)
    for kind, (_plural, spec_model, status_model) in api.KINDS.items()
    for part, model in (("spec", spec_model), ("status", status_model))
]


@pytest.mark.parametrize(("kind", "part", "model"), CASES, ids=[f"{k}.{p}" for k, p, _ in CASES])
def test_model_and_crd_schema_agree(kind, part, model):
    crd = norm_crd(crd_schema(kind)["properties"][part])
    py = PydanticSide(model).tree()
    model_defaults_as_crd(model, py)
    # The CRD describes each object; pydantic's title/description live outside the compared keys.
    crd.pop("default", None)
    problems = diff(crd, py, f"{kind}.{part}")
    assert not problems, "\n".join(problems)


def test_the_comparison_notices_a_difference():
    crd = norm_crd(crd_schema("ModelDeployment")["properties"]["spec"])
    broken = copy.deepcopy(crd)
    broken["properties"]["monitoring"]["properties"]["alerts"]["properties"]["driftThreshold"]["default"] = 0.2
    del broken["properties"]["routing"]
    broken["required"].append("image")
    py = PydanticSide(api.ModelDeploymentSpec).tree()
    model_defaults_as_crd(api.ModelDeploymentSpec, py)
    problems = "\n".join(diff(broken, py))
    assert "driftThreshold.default" in problems
    assert "routing: only in the pydantic model" in problems
    assert ".required" in problems


@pytest.mark.parametrize("kind", list(CRD_FILES))
def test_crd_metadata(kind):
    crd = load_crd(kind)
    plural, _, _ = api.KINDS[kind]
    names = crd["spec"]["names"]
    assert crd["metadata"]["name"] == f"{plural}.{api.GROUP}"
    assert crd["spec"]["group"] == api.GROUP
    assert names["kind"] == kind and names["plural"] == plural
    assert names["categories"] == ["mlops"]
    assert names["shortNames"] == [{"ModelDeployment": "mdep", "ABExperiment": "abx", "RetrainPolicy": "rtp"}[kind]]
    (version,) = crd["spec"]["versions"]
    assert version["name"] == api.VERSION and version["subresources"] == {"status": {}}
    columns = {c["name"] for c in version["additionalPrinterColumns"]}
    expected = {
        "ModelDeployment": {"Ready", "Version", "Accuracy", "Drift"},
        "ABExperiment": {"Phase", "Split", "N-Control", "N-Treatment", "P-Value", "Winner"},
        "RetrainPolicy": {"Phase", "Last Run", "Runs 24h", "Pending", "Job"},
    }[kind]
    assert expected <= columns
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert {"observedGeneration", "conditions", "phase"} <= set(status)


def _undescribed(node: dict[str, Any], path: str) -> list[str]:
    missing = []
    for name, child in node.get("properties", {}).items():
        if name not in ("apiVersion", "kind", "metadata") and "description" not in child:
            missing.append(f"{path}.{name}")
        missing += _undescribed(child, f"{path}.{name}")
    if "items" in node:
        missing += _undescribed(node["items"], f"{path}[]")
    return missing


@pytest.mark.parametrize("kind", list(CRD_FILES))
def test_every_spec_field_has_a_description(kind):
    spec = crd_schema(kind)["properties"]["spec"]
    assert not _undescribed(spec, "spec")


# ----------------------------------------------------------------- the models themselves

VALID_MDEP = {
    "modelName": "churn",
    "stableVersion": "v1",
    "versions": [
        {"name": "v1", "artifact": {"uri": "file:///models/v1.skops", "sha256": "a" * 64}},
        {
            "name": "v2",
            "artifact": {"uri": "s3://bucket/v2.joblib", "sha256": "b" * 64, "format": "joblib"},
            "replicas": 2,
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": 1}},
        },
    ],
    "featureSchema": [{"name": "age", "type": "number"}, {"name": "plan", "type": "string", "required": False}],
    "monitoring": {"baselineAccuracy": 0.91, "alerts": {"driftThreshold": 0.2}},
}


def test_validate_raw_camelcase_dict_and_dump_it_back():
    spec = api.ModelDeploymentSpec.model_validate(VALID_MDEP)
    assert spec.stable_version == "v1"
    assert spec.version("v2").artifact.format == "joblib"
    assert spec.version("v1").artifact.format == "skops"
    assert spec.monitoring.alerts.drift_threshold == 0.2
    assert spec.monitoring.alerts.critical_latency_ms == 500
    assert spec.routing.user_key_header == "X-User-ID"
    dumped = spec.model_dump(by_alias=True, exclude_none=True)
    assert dumped["versions"][1]["resources"] == VALID_MDEP["versions"][1]["resources"]
    assert dumped["monitoring"]["alerts"]["driftThreshold"] == 0.2
    assert dumped["featureSchema"][0] == {"name": "age", "type": "number", "required": True}
    assert api.ModelDeploymentSpec.model_validate(dumped) == spec


def test_snake_case_names_are_accepted_too():
    spec = api.ABExperimentSpec(model_deployment="churn", control_version="v1", treatment_version="v2")
    assert spec.traffic_split == 0.5 and spec.ramping.strategy == "immediate"
    assert spec.model_dump(by_alias=True, exclude_none=True)["controlVersion"] == "v1"


def test_status_dumps_to_camelcase():
    status = api.ModelDeploymentStatus(
        phase="Ready",
        observed_generation=3,
        metrics=api.DeploymentMetrics(latency_p95_ms=12.5, drift_score=0.0, drifted_features=[]),
        conditions=[
            api.Condition(type="Ready", status="True", reason="AllReplicasReady", message="", last_transition_time="2026-01-01T00:00:00Z")
        ],
    )
    dumped = status.model_dump(by_alias=True, exclude_none=True)
    assert dumped["observedGeneration"] == 3
    assert dumped["metrics"] == {"latencyP95Ms": 12.5, "driftScore": 0.0, "driftedFeatures": []}
    assert dumped["conditions"][0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"


def _with(base: dict, path: str, value: Any) -> dict:
    doc = copy.deepcopy(base)
    keys = path.split(".")
    node = doc
    for key in keys[:-1]:
        node = node[int(key)] if key.isdigit() else node.setdefault(key, {})
    node[keys[-1]] = value
    return doc


@pytest.mark.parametrize(
    ("model", "doc", "needle"),
    [
        (api.ModelDeploymentSpec, _with(VALID_MDEP, "stableVersion", "v9"), "stableVersion"),
        (api.ModelDeploymentSpec, _with(VALID_MDEP, "versions.1.name", "v1"), "duplicate name"),
        (api.ModelDeploymentSpec, _with(VALID_MDEP, "versions.0.artifact.sha256", "abc"), "sha256"),
        (api.ModelDeploymentSpec, _with(VALID_MDEP, "versions.0.artifact.uri", "ftp://x/y"), "uri"),
        (api.ModelDeploymentSpec, _with(VALID_MDEP, "monitoring.alerts.warningLatencyMs", 900), "critical_latency_ms"),
        (api.ModelDeploymentSpec, _with(VALID_MDEP, "versions.0.resources", {"limits": {"cpu": "lots"}}), "limits"),
        (
            api.ABExperimentSpec,
            {"modelDeployment": "m", "controlVersion": "v1", "treatmentVersion": "v1"},
            "treatmentVersion must differ",
        ),
        (
            api.ABExperimentSpec,
            {"modelDeployment": "m", "controlVersion": "v1", "treatmentVersion": "v2", "ramping": {"strategy": "steps"}},
            "at least one step",
        ),
        (
            api.ABExperimentSpec,
            {
                "modelDeployment": "m", "controlVersion": "v1", "treatmentVersion": "v2",
                "ramping": {"strategy": "steps", "steps": [{"split": 0.5, "afterHours": 1}, {"split": 0.1, "afterHours": 2}]},
            },
            "must not decrease",
        ),
        (
            api.ABExperimentSpec,
            {"modelDeployment": "m", "controlVersion": "v1", "treatmentVersion": "v2", "significanceLevel": 0.5},
            "significanceLevel",
        ),
        (api.RetrainPolicySpec, {"modelDeployment": "m", "triggers": {}}, "at least one"),
        (
            api.RetrainPolicySpec,
            {"modelDeployment": "m", "triggers": {"drift": {}}, "constraints": {"maxRetrainsPerDay": 0}},
            "maxRetrainsPerDay",
        ),
    ],
)
def test_models_reject_what_the_api_server_rejects(model, doc, needle):
    with pytest.raises(ValidationError) as info:
        model.model_validate(doc)
    assert needle in str(info.value)


def test_retrain_policy_defaults_and_job_template_passthrough():
    spec = api.RetrainPolicySpec.model_validate(
        {
            "modelDeployment": "churn",
            "triggers": {"drift": {}, "newData": {"minNewSamples": 500}},
            "jobTemplate": {"spec": {"backoffLimit": 1, "template": {"spec": {"containers": [{"name": "t"}]}}}},
        }
    )
    assert spec.triggers.drift.threshold == 0.1 and spec.triggers.schedule is None
    assert spec.constraints.max_retrains_per_day == 4 and spec.constraints.min_hours_between_retrains == 6
    dumped = spec.model_dump(by_alias=True, exclude_none=True)
    assert dumped["jobTemplate"]["spec"]["backoffLimit"] == 1
    assert dumped["triggers"]["newData"] == {"minNewSamples": 500}
