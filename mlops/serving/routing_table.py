"""The routing table shared by the operator (writer) and `mlops route` (reader).

The operator renders one of these into the ConfigMap key ``routing.json``; the router reads it from the
mounted file and reloads it when the file changes. Keeping the schema in one pydantic model means both
sides reject the same mistakes (an unknown stable version, a split outside [0, 1]) with the same
message, and the table can be validated offline (``RoutingTable.model_validate_json``).

Routing semantics (implemented by :func:`choose_version`):

- With an active experiment, users inside the segment are assigned by the A/B engine's salted hash
  (``mlops.core.assignment``): treatment iff ``bucket(salt, user) < treatment_share``, so ramping the
  share up never moves a treatment user back to control. Users outside the segment, requests without a
  user key, and every request while the experiment is ``paused`` go to control.
- Without an experiment, traffic is split by the versions' ``weight`` values; with a user key the choice
  is sticky (a hash of the user key), without one it is drawn from the injected random source.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Variant = Literal["control", "treatment", "stable", "weighted"]


class VersionRoute(BaseModel):
    """One upstream: the Service (or address) that serves one model version."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, description="base URL of the version's server, e.g. http://m-v1:8080")
    weight: float = Field(default=0.0, ge=0.0, description="share of traffic when no experiment runs")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        return value.rstrip("/")


class ExperimentRoute(BaseModel):
    """A running A/B experiment between two of the table's versions."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    salt: str = Field(min_length=1, description="per-experiment salt: assignments are independent across experiments")
    control: str
    treatment: str
    treatment_share: float = Field(ge=0.0, le=1.0)
    segment: dict[str, Any] | None = None
    paused: bool = False
    phase: int = Field(default=0, ge=0, le=9999, description="ramp phase index: counts are kept per phase")

    @field_validator("segment")
    @classmethod
    def _valid_segment(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        from mlops.core.segments import validate_segment_criteria

        validate_segment_criteria(value)
        return value

    @model_validator(mode="after")
    def _distinct_arms(self) -> ExperimentRoute:
        if self.control == self.treatment:
            raise ValueError("experiment control and treatment must be different versions")
        return self


class RoutingTable(BaseModel):
    """The whole table: which versions exist, where they are, and how users are split between them."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    stable_version: str
    versions: dict[str, VersionRoute] = Field(min_length=1)
    experiment: ExperimentRoute | None = None
    user_key_header: str = "X-User-ID"

    @model_validator(mode="after")
    def _known_versions(self) -> RoutingTable:
        known = sorted(self.versions)
        if self.stable_version not in self.versions:
            raise ValueError(f"stable_version {self.stable_version!r} is not one of versions {known}")
        if self.experiment is not None:
            for arm in ("control", "treatment"):
                version = getattr(self.experiment, arm)
                if version not in self.versions:
                    raise ValueError(f"experiment.{arm} {version!r} is not one of versions {known}")
        return self

    def url_for(self, version: str) -> str:
        return self.versions[version].url

    def to_json(self) -> str:
        """Canonical JSON (sorted keys) so the operator's ConfigMap only changes when the table does."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def stable_only_table(model: str, version: str, url: str) -> RoutingTable:
    """The table the operator writes before any experiment: the stable version takes all traffic."""
    return RoutingTable(model=model, stable_version=version, versions={version: VersionRoute(url=url, weight=1.0)})


def parse_routing_table(text: str, *, source: str = "<text>") -> RoutingTable:
    """Parse JSON or YAML text into a validated table; raises ValueError naming the source and problem."""
    stripped = text.lstrip()
    try:
        if stripped.startswith("{"):
            data = json.loads(text)
        else:
            import yaml  # only for YAML tables; JSON (what the operator writes) needs no yaml import

            data = yaml.safe_load(text)
    except ValueError as exc:
        raise ValueError(f"{source}: not valid JSON/YAML: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - yaml.YAMLError has no common base with ValueError
        raise ValueError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{source}: a routing table must be a mapping, got {type(data).__name__}")
    try:
        return RoutingTable.model_validate(data)
    except Exception as exc:  # pydantic.ValidationError -> one readable line per problem
        errors = getattr(exc, "errors", None)
        if callable(errors):
            parts = [
                f"{'.'.join(str(p) for p in e['loc']) or '<table>'}: {e['msg'].removeprefix('Value error, ')}"
                for e in errors()
            ]
            raise ValueError(f"{source}: invalid routing table: " + "; ".join(parts)) from exc
        raise


def load_routing_table(path: str | Path) -> RoutingTable:
    """Read and validate a routing table file (JSON or YAML)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{path}: cannot read routing table: {exc.strerror or exc}") from exc
    return parse_routing_table(text, source=str(path))


def _weighted_pick(table: RoutingTable, u: float) -> str:
    weighted = [(name, route.weight) for name, route in sorted(table.versions.items()) if route.weight > 0]
    total = math.fsum(w for _, w in weighted)
    if not weighted or total <= 0:
        return table.stable_version
    target = u * total
    acc = 0.0
    for name, weight in weighted:
        acc += weight
        if target < acc:
            return name
    return weighted[-1][0]


def choose_version(
    table: RoutingTable,
    user_key: str | None,
    features: dict[str, Any] | None = None,
    *,
    rng: random.Random | None = None,
) -> tuple[str, Variant]:
    """Pick the version that serves this request and the variant label reported for it.

    ``features`` are only needed for segment rules (a request without them is outside any segment).
    """
    from mlops.core.assignment import assign_variant, assignment_bucket

    experiment = table.experiment
    if experiment is not None:
        if experiment.paused or not user_key:
            return experiment.control, "control"
        if experiment.segment:
            from mlops.core.segments import segment_matches

            if not features or not segment_matches(experiment.segment, features):
                return experiment.control, "control"
        variant = assign_variant(experiment.salt, user_key, experiment.treatment_share)
        version = experiment.treatment if variant == "treatment" else experiment.control
        return version, variant
    if len(table.versions) == 1:
        return table.stable_version, "stable"
    if user_key:
        u = assignment_bucket(f"{table.model}:weights", user_key)
    else:
        u = (rng or random).random()
    version = _weighted_pick(table, u)
    return version, ("stable" if version == table.stable_version else "weighted")


def arm_tag(table: RoutingTable, user_key: str | None, features: dict[str, Any] | None, version: str,
            variant: str) -> str | None:
    """The ``X-MLOps-Arm`` tag for a request :func:`choose_version` sent to ``version`` as ``variant``,
    or None when the request belongs to no arm: no running experiment, paused, no user key, or a
    user outside the segment (served by control but counted in neither arm)."""
    experiment = table.experiment
    if experiment is None or experiment.paused or not user_key or variant not in ("control", "treatment"):
        return None
    if experiment.segment:
        from mlops.core.segments import segment_matches

        if not features or not segment_matches(experiment.segment, features):
            return None
    if version != (experiment.treatment if variant == "treatment" else experiment.control):
        return None
    from mlops.core.arm_tag import ArmTag, format_tag
    from mlops.core.hll import user_hash

    try:
        return format_tag(ArmTag(experiment.name, experiment.phase, variant, user_hash(user_key)))
    except ValueError:
        return None  # an experiment name the tag cannot carry: counted in no arm rather than mislabelled
