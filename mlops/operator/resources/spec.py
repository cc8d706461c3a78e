"""A ModelDeployment spec with every default filled in, as a plain camelCase mapping.

The builders code against the agreed field names (camelCase, as in the CRD). When the typed models in
``mlops.operator.api`` are importable they validate and default the spec; otherwise (or for fields
they leave unset) the defaults below apply, so builders never see a missing key.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

DEFAULT_IMAGE = "ghcr.io/duetmind/mlops-operator:0.1.0"
DEFAULT_ALERTS: dict[str, float] = {
    "criticalAccuracyDrop": 0.05,
    "warningAccuracyDrop": 0.02,
    "criticalErrorRate": 0.02,
    "warningErrorRate": 0.01,
    "criticalLatencyMs": 500,
    "warningLatencyMs": 200,
    "driftThreshold": 0.1,
    "dataQualityThreshold": 0.95,
}


class InvalidSpec(ValueError):
    """A spec the API server admitted but the operator cannot act on (reported as a condition)."""


def _typed_dump(raw: Mapping[str, Any]) -> dict[str, Any]:
    try:
        from mlops.operator.api import ModelDeploymentSpec
    except ImportError:
        return copy.deepcopy(dict(raw))
    try:
        model = ModelDeploymentSpec.model_validate(dict(raw))
    except ValueError as exc:  # pydantic.ValidationError is a ValueError
        raise InvalidSpec(f"spec does not validate: {exc}") from exc
    return model.model_dump(by_alias=True, exclude_none=True, mode="json")


def normalize_spec(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Validate ``raw`` (``cr["spec"]``) and return it with all defaults applied."""
    spec = _typed_dump(raw)
    if not spec.get("modelName"):
        raise InvalidSpec("spec.modelName is required")
    versions = spec.get("versions") or []
    if not versions:
        raise InvalidSpec("spec.versions must list at least one version")
    names = [v.get("name") for v in versions]
    if len(set(names)) != len(names) or not all(names):
        raise InvalidSpec(f"spec.versions names must be unique and non-empty, got {names}")
    if spec.get("stableVersion") not in names:
        raise InvalidSpec(f"spec.stableVersion {spec.get('stableVersion')!r} is not one of {names}")
    for v in versions:
        art = v.setdefault("artifact", {})
        if not art.get("uri") or not art.get("sha256"):
            raise InvalidSpec(f"spec.versions[{v['name']}].artifact needs uri and sha256")
        art.setdefault("format", "skops")
        v.setdefault("replicas", 1)
        auto = v.get("autoscaling")
        if auto:
            auto.setdefault("minReplicas", 1)
            auto.setdefault("targetCPUUtilizationPercentage", 80)
        v.setdefault("resources", {})
    spec.setdefault("image", DEFAULT_IMAGE)
    spec.setdefault("imagePullPolicy", "IfNotPresent")
    spec.setdefault("featureSchema", [])
    for feature in spec["featureSchema"]:
        feature.setdefault("required", True)
    monitoring = spec.setdefault("monitoring", {})
    monitoring.setdefault("enabled", True)
    monitoring.setdefault("collectIntervalSeconds", 30)
    alerts = monitoring.setdefault("alerts", {})
    for key, value in DEFAULT_ALERTS.items():
        alerts.setdefault(key, value)
    ref = spec.get("baselineProfileRef")
    if ref:
        ref.setdefault("key", "profile.json")
    spec.setdefault("routing", {}).setdefault("userKeyHeader", "X-User-ID")
    return spec
