"""Typed models of the three custom resources (group ``mlops.duetmind.io``, version ``v1alpha1``).

Why it exists: the CRDs in ``crds/`` are the API's single source of truth, and the operator's
handlers, builders and status writers need the same shape as Python objects. These pydantic models
mirror the CRD schemas field for field (``tests/unit/test_crd_models.py`` compares names, required
fields, enums, defaults and bounds in both directions), so::

    spec = ModelDeploymentSpec.model_validate(cr["spec"])           # raw camelCase dict in
    patch = {"status": status.model_dump(by_alias=True, exclude_none=True)}   # camelCase dict out

Python attribute names are snake_case; ``populate_by_name=True`` accepts either spelling.
The cross-field rules the API server enforces with CEL are repeated here as validators, so a spec
built in Python fails the same way a ``kubectl apply`` would.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

GROUP = "mlops.duetmind.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
ARTIFACT_URI = r"^((file|https?|s3|gs)://|models:/|runs:/).+$"
TRACKING_URI = r"^https?://.+$"
SHA256 = r"^[a-f0-9]{64}$"
HEADER_NAME = r"^[A-Za-z0-9-]+$"
CONFIGMAP_KEY = r"^[-._a-zA-Z0-9]+$"
QUANTITY = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
CONDITION_TYPE = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
CONDITION_REASON = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"

DEFAULT_IMAGE = "ghcr.io/duetmind/mlops-operator:0.1.0"

Fraction = Annotated[float, Field(ge=0, le=1)]
ModelName = Annotated[str, Field(min_length=1, max_length=40, pattern=DNS_LABEL)]
VersionName = Annotated[str, Field(min_length=1, max_length=22, pattern=DNS_LABEL)]
ObjectName = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)]
HeaderName = Annotated[str, Field(min_length=1, max_length=128, pattern=HEADER_NAME)]
Quantity = int | Annotated[str, Field(pattern=QUANTITY)]
Metric = Literal["accuracy", "errorRate", "latency"]


class _Model(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown keys ignored (the API server prunes them)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class Condition(_Model):
    """A metav1.Condition."""

    type: str = Field(max_length=316, pattern=CONDITION_TYPE)
    status: Literal["True", "False", "Unknown"]
    observed_generation: int | None = Field(default=None, ge=0)
    last_transition_time: str
    reason: str = Field(min_length=1, max_length=1024, pattern=CONDITION_REASON)
    message: str = Field(max_length=32768)


def _unique(items: list[Any] | None, key: str, what: str) -> None:
    if not items:
        return
    seen: set[Any] = set()
    for item in items:
        value = getattr(item, key)
        if value in seen:
            raise ValueError(f"{what}: duplicate {key} {value!r}")
        seen.add(value)


# --------------------------------------------------------------------------- ModelDeployment


class Artifact(_Model):
    uri: str = Field(max_length=2048, pattern=ARTIFACT_URI)
    sha256: str = Field(pattern=SHA256)
    format: Literal["skops", "joblib"] = "skops"
    tracking_uri: str | None = Field(default=None, max_length=2048, pattern=TRACKING_URI)


class ResourceRequirements(_Model):
    limits: dict[str, Quantity] | None = None
    requests: dict[str, Quantity] | None = None


class Autoscaling(_Model):
    """A HorizontalPodAutoscaler on CPU utilisation; the operator then stops writing ``replicas``."""

    min_replicas: int = Field(default=1, ge=1, le=100)
    max_replicas: int = Field(ge=1, le=100)
    target_cpu_utilization_percentage: int = Field(default=80, ge=1, le=100, alias="targetCPUUtilizationPercentage")

    @model_validator(mode="after")
    def _min_not_above_max(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError("autoscaling.minReplicas must not exceed autoscaling.maxReplicas")
        return self


class ModelVersion(_Model):
    name: VersionName
    artifact: Artifact
    replicas: int = Field(default=1, ge=0, le=100)
    autoscaling: Autoscaling | None = None
    resources: ResourceRequirements | None = None


class FeatureSpec(_Model):
    name: str = Field(min_length=1, max_length=253)
    type: Literal["number", "integer", "string", "boolean"]
    required: bool = True


class BaselineProfileRef(_Model):
    config_map_name: ObjectName
    key: str = Field(default="profile.json", min_length=1, max_length=253, pattern=CONFIGMAP_KEY)


class AlertThresholds(_Model):
    """The Python API's ``AlertConfig``, in Kubernetes naming."""

    critical_accuracy_drop: Fraction = 0.05
    warning_accuracy_drop: Fraction = 0.02
    critical_error_rate: Fraction = 0.02
    warning_error_rate: Fraction = 0.01
    critical_latency_ms: float = Field(default=500.0, gt=0)
    warning_latency_ms: float = Field(default=200.0, gt=0)
    drift_threshold: Fraction = 0.1
    data_quality_threshold: Fraction = 0.95

    @model_validator(mode="after")
    def _critical_not_below_warning(self) -> AlertThresholds:
        for name in ("accuracy_drop", "error_rate", "latency_ms"):
            if getattr(self, f"critical_{name}") < getattr(self, f"warning_{name}"):
                raise ValueError(f"critical_{name} must be >= warning_{name}")
        return self


class MonitoringSpec(_Model):
    enabled: bool = True
    collect_interval_seconds: int = Field(default=30, ge=5, le=86400)
    baseline_accuracy: Fraction | None = None
    alerts: AlertThresholds = Field(default_factory=AlertThresholds)


class RoutingSpec(_Model):
    user_key_header: HeaderName = "X-User-ID"


class ArtifactStore(_Model):
    """Credentials (a Secret, exposed to the init container with envFrom) and endpoints for s3:// and gs://."""

    secret_name: ObjectName | None = None
    s3_endpoint: str | None = Field(default=None, max_length=2048, pattern=r"^https?://.+$")
    region: str | None = Field(default=None, max_length=64)
    gcs_endpoint: str | None = Field(default=None, max_length=2048, pattern=r"^https?://.+$")


class ModelDeploymentSpec(_Model):
    model_name: ModelName
    stable_version: str = Field(min_length=1, max_length=22)
    versions: list[ModelVersion] = Field(min_length=1, max_length=10)
    image: str = Field(default=DEFAULT_IMAGE, min_length=1)
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    feature_schema: list[FeatureSpec] | None = Field(default=None, max_length=1000)
    baseline_profile_ref: BaselineProfileRef | None = None
    artifact_store: ArtifactStore | None = None
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec)
    routing: RoutingSpec = Field(default_factory=RoutingSpec)

    @model_validator(mode="after")
    def _consistent(self) -> ModelDeploymentSpec:
        _unique(self.versions, "name", "versions")
        _unique(self.feature_schema, "name", "featureSchema")
        if self.stable_version not in {v.name for v in self.versions}:
            raise ValueError("stableVersion must be the name of one of spec.versions")
        return self

    def version(self, name: str) -> ModelVersion:
        """The version called ``name`` (KeyError when absent)."""
        for v in self.versions:
            if v.name == name:
                return v
        raise KeyError(name)


class VersionStatus(_Model):
    name: str
    replicas: int | None = None
    ready_replicas: int | None = None
    sha256: str | None = None


class DeploymentMetrics(_Model):
    predictions: int | None = None
    labelled: int | None = None
    accuracy: float | None = None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    latency_p50_ms: float | None = Field(default=None, alias="latencyP50Ms")
    latency_p95_ms: float | None = Field(default=None, alias="latencyP95Ms")
    error_rate: float | None = None
    drift_score: float | None = None
    drifted_features: list[str] | None = None
    drift_window_rows: int | None = None
    window_accuracy: float | None = None
    window_labelled: int | None = None
    accuracy_drop_p_value: float | None = Field(default=None, alias="accuracyDropPValue")
    data_quality: float | None = None
    collected_at: str | None = None


class Alert(_Model):
    severity: Literal["CRITICAL", "WARNING", "INFO"]
    type: str
    message: str


class CandidateStatus(_Model):
    """A retrained candidate (closed loop, ``mlops.operator.candidates``)."""

    name: str
    state: Literal["candidate", "promoted", "rejected"]
    run_id: str | None = None
    policy: str | None = None
    experiment: str | None = None
    uri: str | None = None
    sha256: str | None = None
    format: str | None = None
    created_at: str | None = None
    settled_at: str | None = None
    message: str | None = None


class ModelDeploymentStatus(_Model):
    phase: Literal["Pending", "Progressing", "Ready", "Degraded", "Failed"] | None = None
    observed_generation: int | None = Field(default=None, ge=0)
    conditions: list[Condition] | None = None
    url: str | None = None
    current_version: str | None = None
    versions: list[VersionStatus] | None = None
    metrics: DeploymentMetrics | None = None
    alerts: list[Alert] | None = None
    candidates: list[CandidateStatus] | None = Field(default=None, max_length=10)


# --------------------------------------------------------------------------- ABExperiment


class RampStep(_Model):
    split: Fraction
    after_hours: float = Field(ge=0)


class RampingSpec(_Model):
    strategy: Literal["immediate", "steps"] = "immediate"
    steps: list[RampStep] | None = Field(default=None, max_length=20)

    @model_validator(mode="after")
    def _steps_consistent(self) -> RampingSpec:
        if self.strategy == "steps" and not self.steps:
            raise ValueError("ramping.steps must list at least one step when strategy is steps")
        steps = sorted(self.steps or [], key=lambda s: s.after_hours)
        hours = [s.after_hours for s in steps]
        if len(set(hours)) != len(hours):
            raise ValueError("ramping.steps afterHours values must be unique")
        if any(a.split > b.split for a, b in zip(steps, steps[1:], strict=False)):
            raise ValueError("ramping.steps splits must not decrease as afterHours grows")
        return self


class Guardrail(_Model):
    metric: Metric
    max_degradation: float = Field(ge=0)


class ABExperimentSpec(_Model):
    model_deployment: ObjectName
    control_version: VersionName
    treatment_version: VersionName
    traffic_split: Fraction = 0.5
    ramping: RampingSpec = Field(default_factory=RampingSpec)
    segment_criteria: dict[str, Any] | None = Field(default=None, max_length=20)
    user_key_header: HeaderName | None = None
    min_samples_per_variant: int = Field(default=1000, ge=1)
    significance_level: float = Field(default=0.05, gt=0, lt=0.5)
    statistical_power: float = Field(default=0.8, gt=0, lt=1)
    minimum_detectable_effect: float = Field(default=0.02, gt=0, le=1)
    primary_metric: Metric = "accuracy"
    guardrails: list[Guardrail] | None = Field(default=None, max_length=3)
    duration_days: int = Field(default=7, ge=1, le=365)
    auto_promote: bool = False
    auto_rollback: bool = False
    paused: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> ABExperimentSpec:
        if self.control_version == self.treatment_version:
            raise ValueError("treatmentVersion must differ from controlVersion")
        _unique(self.guardrails, "metric", "guardrails")
        return self


class Samples(_Model):
    control: int | None = None
    treatment: int | None = None


class VariantMetrics(_Model):
    users: int | None = None
    predictions: int | None = None
    labelled: int | None = None
    accuracy: float | None = None
    error_rate: float | None = None
    latency_p50_ms: float | None = Field(default=None, alias="latencyP50Ms")
    latency_p95_ms: float | None = Field(default=None, alias="latencyP95Ms")


class ArmMetrics(_Model):
    control: VariantMetrics | None = None
    treatment: VariantMetrics | None = None


class ConfidenceInterval(_Model):
    lower: float | None = None
    upper: float | None = None


class ExperimentRouting(_Model):
    treatment_share: float | None = None
    ramp_step: int | None = None
    paused: bool | None = None


class GuardrailStatus(_Model):
    metric: str | None = None
    max_degradation: float | None = None
    degradation: float | None = None
    lower: float | None = None
    upper: float | None = None
    result: Literal["passed", "breached", "pending"] | None = None


class Promotion(_Model):
    version: str | None = None
    model_deployment_generation: int | None = None
    at: str | None = None


class ABExperimentStatus(_Model):
    phase: Literal["Draft", "Pending", "Running", "Paused", "Concluded", "Completed", "Terminated"] | None = None
    observed_generation: int | None = Field(default=None, ge=0)
    conditions: list[Condition] | None = None
    started_at: str | None = None
    completed_at: str | None = None
    current_split: float | None = None
    ramp_step: int | None = None
    next_step_at: str | None = None
    salt: str | None = None
    routing: ExperimentRouting | None = None
    users: Samples | None = None
    samples: Samples | None = None
    metrics: ArmMetrics | None = None
    primary_metric: str | None = None
    p_value: float | None = None
    srm_p_value: float | None = Field(default=None, alias="srmPValue")
    srm_phase_p_values: list[float] | None = Field(default=None, alias="srmPhasePValues")
    progress: float | None = None
    guardrails: list[GuardrailStatus] | None = None
    promoted_version: str | None = None
    promotion: Promotion | None = None
    confidence_interval: ConfidenceInterval | None = None
    effect_size: float | None = None
    sample_ratio_mismatch: bool | None = None
    required_sample_size: int | None = None
    winner: Literal["control", "treatment", "none"] | None = None
    recommendation: str | None = None


# --------------------------------------------------------------------------- RetrainPolicy


class NewDataTrigger(_Model):
    min_new_samples: int = Field(default=1000, ge=1)
    paths: list[Annotated[str, Field(min_length=1)]] | None = Field(default=None, max_length=20)
    file_patterns: list[Annotated[str, Field(min_length=1)]] | None = Field(default=None, max_length=20)


class ScheduleTrigger(_Model):
    max_days_without_retrain: float = Field(default=7, gt=0)


class AccuracyDropTrigger(_Model):
    threshold: float = Field(default=0.05, gt=0, le=1)


class DriftTrigger(_Model):
    threshold: float = Field(default=0.1, gt=0, le=1)


class ErrorRateTrigger(_Model):
    threshold: float = Field(default=0.02, gt=0, le=1)


class DataQualityTrigger(_Model):
    threshold: Fraction = 0.95


class Triggers(_Model):
    """A trigger is enabled by being present (``None`` = disabled)."""

    new_data: NewDataTrigger | None = None
    schedule: ScheduleTrigger | None = None
    accuracy_drop: AccuracyDropTrigger | None = None
    drift: DriftTrigger | None = None
    error_rate: ErrorRateTrigger | None = None
    data_quality: DataQualityTrigger | None = None

    @model_validator(mode="after")
    def _at_least_one(self) -> Triggers:
        if all(getattr(self, name) is None for name in type(self).model_fields):
            raise ValueError(
                "triggers must enable at least one of newData, schedule, accuracyDrop, drift, errorRate, dataQuality"
            )
        return self


class Constraints(_Model):
    min_hours_between_retrains: float = Field(default=6, ge=0)
    max_retrains_per_day: int = Field(default=4, ge=1, le=48)
    concurrency: Literal["Forbid"] = "Forbid"


class JobSpecTemplate(_Model):
    """A batch/v1 JobSpec kept as a raw dict apart from the required pod template."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    template: dict[str, Any]


class JobTemplate(_Model):
    metadata: dict[str, Any] | None = None
    spec: JobSpecTemplate | None = None


class OnSuccess(_Model):
    open_experiment: bool = False
    traffic_split: Fraction = 0.1


class RetrainPolicySpec(_Model):
    model_deployment: ObjectName
    triggers: Triggers
    constraints: Constraints = Field(default_factory=Constraints)
    require_approval: bool = False
    job_template: JobTemplate | None = None
    on_success: OnSuccess = Field(default_factory=OnSuccess)


class PendingApproval(_Model):
    id: str | None = None
    trigger_type: str | None = None
    reason: str | None = None
    requested_at: str | None = None


class HistoryEntry(_Model):
    time: str | None = None
    trigger_type: str | None = None
    decision: str | None = None
    reason: str | None = None
    run_id: str | None = None
    repeats: int | None = None


class RetrainCandidate(_Model):
    run_id: str | None = None
    uri: str | None = None
    sha256: str | None = None
    status: str | None = None
    version: str | None = None
    outcome: str | None = None


class RetrainPolicyStatus(_Model):
    phase: str | None = None
    observed_generation: int | None = Field(default=None, ge=0)
    conditions: list[Condition] | None = None
    last_run_time: str | None = None
    last_run_result: str | None = None
    runs_today: int | None = None
    active_job: str | None = None
    pending_approval: PendingApproval | None = None
    history: list[HistoryEntry] | None = Field(default=None, max_length=50)
    last_candidate: RetrainCandidate | None = None
    audit_entries: int | None = None


#: kind -> (plural, spec model, status model); used by the operator and by the schema test.
KINDS: dict[str, tuple[str, type[_Model], type[_Model]]] = {
    "ModelDeployment": ("modeldeployments", ModelDeploymentSpec, ModelDeploymentStatus),
    "ABExperiment": ("abexperiments", ABExperimentSpec, ABExperimentStatus),
    "RetrainPolicy": ("retrainpolicies", RetrainPolicySpec, RetrainPolicyStatus),
}
