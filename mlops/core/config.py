"""Typed models of the guide's "Central Configuration" YAML (``production.monitoring``,
``production.retraining``, ``production.ab_testing``, ``production.serving``).

Why it exists: the original passed raw YAML dicts around, so a typo (``critcal_latency_ms``) was
silently ignored and a string where a number belonged failed deep inside the monitor. Here every
section forbids unknown keys, types are strict (a quoted ``"500"`` is not a number, ``1`` is not a
boolean), and :class:`ConfigError` names the full key path of each problem, e.g.
``production.monitoring.alert_config.critical_latency_ms: Input should be a valid number``.

Reading the file lives in :mod:`mlops.monitoring.config` (this package does no I/O).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mlops.core.alerts import AlertConfig


class ConfigError(ValueError):
    """A configuration that does not validate; ``problems`` holds one ``"key.path: reason"`` each."""

    def __init__(self, problems: list[str], source: str = "") -> None:
        self.problems = list(problems)
        self.source = source
        prefix = f"{source}: " if source else ""
        super().__init__(prefix + "; ".join(self.problems))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)



class AlertConfigModel(_Section):
    """Same fields and defaults as :class:`mlops.core.alerts.AlertConfig` (a test keeps them equal)."""

    critical_accuracy_drop: float = Field(0.05, ge=0.0, le=1.0)
    warning_accuracy_drop: float = Field(0.02, ge=0.0, le=1.0)
    critical_error_rate: float = Field(0.02, ge=0.0, le=1.0)
    warning_error_rate: float = Field(0.01, ge=0.0, le=1.0)
    critical_latency_ms: float = Field(500.0, ge=0.0)
    warning_latency_ms: float = Field(200.0, ge=0.0)
    drift_threshold: float = Field(0.1, ge=0.0, le=1.0)
    data_quality_threshold: float = Field(0.95, ge=0.0, le=1.0)
    cooldown_seconds: float = Field(300.0, ge=0.0)
    min_labelled_for_accuracy: int = Field(30, ge=0)
    accuracy_significance_level: float = Field(0.01, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _warning_below_critical(self) -> AlertConfigModel:
        for warning, critical in (
            ("warning_accuracy_drop", "critical_accuracy_drop"),
            ("warning_error_rate", "critical_error_rate"),
            ("warning_latency_ms", "critical_latency_ms"),
        ):
            if getattr(self, warning) > getattr(self, critical):
                raise ValueError(f"{warning} ({getattr(self, warning)}) must not exceed {critical} "
                                 f"({getattr(self, critical)})")
        return self

    def to_alert_config(self) -> AlertConfig:
        return AlertConfig(**self.model_dump())


class MonitoringSection(_Section):
    alert_config: AlertConfigModel = Field(default_factory=AlertConfigModel)
    interval_seconds: float = Field(300.0, gt=0)
    retention_days: float = Field(30.0, gt=0)
    drift_alpha: float = Field(0.05, gt=0.0, lt=1.0)


class RetrainingSection(_Section):
    """The fields of ``mlops.monitoring.data_trigger.RetrainingTriggerConfig`` (API contract)."""

    min_new_samples: int = Field(1000, ge=0)
    max_days_without_retrain: float = Field(7, gt=0)
    new_data_check_interval: float = Field(3600, gt=0)
    accuracy_degradation_threshold: float = Field(0.05, ge=0.0, le=1.0)
    drift_score_threshold: float = Field(0.1, ge=0.0, le=1.0)
    error_rate_threshold: float = Field(0.02, ge=0.0, le=1.0)
    data_quality_threshold: float = Field(0.95, ge=0.0, le=1.0)
    missing_data_threshold: float = Field(0.1, ge=0.0, le=1.0)
    min_hours_between_retrains: float = Field(6, ge=0)
    max_retrains_per_day: int = Field(4, ge=0)
    require_manual_approval: bool = False
    data_directories: list[str] | None = None
    watch_file_patterns: list[str] | None = None
    # Accepted for compatibility with the original imaging fields.
    new_study_threshold: int = Field(100, ge=0)
    imaging_drift_threshold: float = Field(0.15, ge=0.0, le=1.0)
    image_quality_threshold: float = Field(0.8, ge=0.0, le=1.0)
    modality_change_trigger: bool = True


class ABTestingSection(_Section):
    default_traffic_split: float = Field(0.5, gt=0.0, lt=1.0)
    min_samples_per_variant: int = Field(1000, ge=1)
    significance_level: float = Field(0.05, gt=0.0, lt=1.0)
    statistical_power: float = Field(0.8, gt=0.0, lt=1.0)
    duration_days: float = Field(7, gt=0)
    experiment_db: str | None = None


class ServingSection(_Section):
    host: str = "127.0.0.1"
    port: int = Field(5000, ge=1, le=65535)
    enable_monitoring: bool = True
    enable_ab_testing: bool = True


class ProductionSection(_Section):
    monitoring: MonitoringSection = Field(default_factory=MonitoringSection)
    retraining: RetrainingSection = Field(default_factory=RetrainingSection)
    ab_testing: ABTestingSection = Field(default_factory=ABTestingSection)
    serving: ServingSection = Field(default_factory=ServingSection)


class MLOpsConfig(_Section):
    """The whole file: one top-level key, ``production``."""

    production: ProductionSection = Field(default_factory=ProductionSection)


def _problems(exc: ValidationError, prefix: str) -> list[str]:
    problems = []
    for error in exc.errors():
        path = ".".join(str(part) for part in (prefix, *error["loc"]) if part != "")
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif message.startswith("Value error, "):
            message = message[len("Value error, "):]
        if error["type"] not in ("extra_forbidden", "missing") and "input" in error:
            message += f" (got {error['input']!r})"
        problems.append(f"{path}: {message}" if path else message)
    return problems


def validate_config(data: Any, source: str = "") -> MLOpsConfig:
    """Validate a parsed YAML document; raises :class:`ConfigError` naming every bad key path."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError([f"the top level must be a mapping with the key 'production', got {type(data).__name__}"],
                          source)
    try:
        return MLOpsConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(_problems(exc, ""), source) from None


def alert_config_from_mapping(data: Mapping[str, Any], key_path: str = "alert_config") -> AlertConfig:
    """An :class:`AlertConfig` from a plain dict (as the guide passes YAML sections), with errors
    naming ``key_path.<field>``."""
    if not isinstance(data, Mapping):
        raise ConfigError([f"{key_path}: expected a mapping, got {type(data).__name__}"])
    try:
        return AlertConfigModel.model_validate(dict(data)).to_alert_config()
    except ValidationError as exc:
        raise ConfigError(_problems(exc, key_path)) from None


def alert_config_field_names() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(dataclass fields, pydantic fields): kept equal by a test."""
    return tuple(f.name for f in fields(AlertConfig)), tuple(AlertConfigModel.model_fields)
