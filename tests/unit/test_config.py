"""The central YAML configuration: the guide's file validates; unknown keys, wrong types and bad
values are reported by key path; `mlops config validate` exits 0 / 2."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from mlops.cli import main
from mlops.core.alerts import AlertConfig
from mlops.core.config import AlertConfigModel, ConfigError, alert_config_from_mapping, validate_config
from mlops.monitoring.config import load_config, load_config_text
from mlops.monitoring.production_monitor import create_production_monitor

# The guide's "Central Configuration" block, verbatim.
GUIDE_YAML = """\
# production_config.yaml
production:
  monitoring:
    alert_config:
      critical_accuracy_drop: 0.05
      warning_accuracy_drop: 0.02
      critical_latency_ms: 500
      drift_threshold: 0.1

  retraining:
    min_new_samples: 1000
    max_days_without_retrain: 7
    accuracy_degradation_threshold: 0.05
    min_hours_between_retrains: 6
    max_retrains_per_day: 4
    data_directories:
      - "data/raw"
      - "data/processed"

  ab_testing:
    default_traffic_split: 0.1
    min_samples_per_variant: 500
    significance_level: 0.05

  serving:
    host: "0.0.0.0"
    port: 5000
    enable_monitoring: true
    enable_ab_testing: true
"""


def test_the_guides_file_validates_with_its_values():
    config = load_config_text(GUIDE_YAML)
    production = config.production
    assert production.monitoring.alert_config.critical_latency_ms == 500.0
    assert production.monitoring.alert_config.warning_latency_ms == 200.0  # default filled in
    assert production.retraining.data_directories == ["data/raw", "data/processed"]
    assert production.ab_testing.default_traffic_split == 0.1
    assert production.serving.port == 5000 and production.serving.enable_ab_testing is True


def test_the_guides_setup_pipeline_passes_the_yaml_dict_to_the_monitor(tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "production_config.yaml").write_text(GUIDE_YAML)
    with open(tmp_path / "config" / "production_config.yaml") as f:
        config = yaml.safe_load(f)
    monitor = create_production_monitor(
        model_name="alzheimer_classifier", alert_config=config["production"]["monitoring"]["alert_config"]
    )
    assert isinstance(monitor.alert_config, AlertConfig)
    assert monitor.alert_config.critical_latency_ms == 500.0
    assert monitor.alert_config.critical_error_rate == 0.02


def test_monitor_from_a_loaded_config():
    from mlops.monitoring.production_monitor import ProductionMonitor

    text = GUIDE_YAML.replace("    alert_config:", "    retention_days: 7\n    drift_alpha: 0.01\n    alert_config:")
    monitor = ProductionMonitor.from_config("m", load_config_text(text))
    assert monitor.alert_config.critical_latency_ms == 500.0
    assert monitor.drift_alpha == 0.01
    assert monitor.store.retention_seconds == 7 * 86400


def _errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_text(text)
    return info.value.problems


@pytest.mark.parametrize(
    ("replace", "by", "expected"),
    [
        ("critical_latency_ms: 500", "critical_latency_ms: fast",
         "production.monitoring.alert_config.critical_latency_ms: Input should be a valid number (got 'fast')"),
        ("critical_latency_ms: 500", 'critical_latency_ms: "500"',
         "production.monitoring.alert_config.critical_latency_ms: Input should be a valid number (got '500')"),
        ("critical_latency_ms: 500", "critcal_latency_ms: 500",
         "production.monitoring.alert_config.critcal_latency_ms: unknown key"),
        ("port: 5000", "port: 70000",
         "production.serving.port: Input should be less than or equal to 65535 (got 70000)"),
        ("enable_monitoring: true", "enable_monitoring: 1",
         "production.serving.enable_monitoring: Input should be a valid boolean (got 1)"),
        ('      - "data/raw"', "      - 7",
         "production.retraining.data_directories.0: Input should be a valid string (got 7)"),
        ("  ab_testing:", "  ab_testng:", "production.ab_testng: unknown key"),
        ("warning_accuracy_drop: 0.02", "warning_accuracy_drop: 0.2",
         "production.monitoring.alert_config: warning_accuracy_drop (0.2) must not exceed critical_accuracy_drop"),
    ],
)
def test_bad_values_are_named_by_key_path(replace, by, expected):
    assert replace in GUIDE_YAML
    problems = _errors(GUIDE_YAML.replace(replace, by))
    assert len(problems) == 1
    assert problems[0].startswith(expected)


def test_every_problem_is_reported_at_once():
    text = GUIDE_YAML.replace("port: 5000", "port: many").replace("max_retrains_per_day: 4", "max_retrains: 4")
    assert sorted(_errors(text)) == [
        "production.retraining.max_retrains: unknown key",
        "production.serving.port: Input should be a valid integer (got 'many')",
    ]


def test_top_level_must_be_a_mapping_and_empty_means_defaults():
    assert validate_config(None).production.monitoring.alert_config.critical_latency_ms == 500.0
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        validate_config(["production"])


def test_yaml_syntax_errors_give_the_line():
    with pytest.raises(ConfigError, match=r"invalid YAML at line 3"):
        load_config_text("production:\n  serving:\n    port: 5000: 1\n", "f.yaml")


def test_load_config_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"missing\.yaml: no such file"):
        load_config(tmp_path / "missing.yaml")
    path = tmp_path / "bad.yaml"
    path.write_text("production:\n  monitoring:\n    alert_config:\n      drift_threshold: 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: production.monitoring.alert_config.drift_threshold: ")


def test_alert_config_dict_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"^alert_config\.critical_latency_ms: Input should be greater"):
        alert_config_from_mapping({"critical_latency_ms": -5})
    assert alert_config_from_mapping({"drift_threshold": 0.2}).drift_threshold == 0.2


def test_pydantic_model_and_dataclass_agree():
    dataclass_fields = {f.name: f.default for f in dataclasses.fields(AlertConfig)}
    model_fields = {name: f.default for name, f in AlertConfigModel.model_fields.items()}
    assert dataclass_fields == model_fields


def test_cli_validate(tmp_path, capsys):
    good = tmp_path / "production_config.yaml"
    good.write_text(GUIDE_YAML)
    assert main(["config", "validate", str(good)]) == 0
    assert capsys.readouterr().out.strip() == f"{good}: valid"

    bad = tmp_path / "bad.yaml"
    bad.write_text(GUIDE_YAML.replace("critical_latency_ms: 500", "critical_latency_ms: fast"))
    assert main(["config", "validate", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "production.monitoring.alert_config.critical_latency_ms" in err

    assert main(["config", "validate", str(tmp_path / "nope.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_cli_prints_the_effective_configuration(tmp_path, capsys):
    import json

    good = tmp_path / "c.yaml"
    good.write_text(GUIDE_YAML)
    assert main(["config", "validate", "--print", str(good)]) == 0
    effective = json.loads(capsys.readouterr().out)
    assert effective["production"]["monitoring"]["alert_config"]["warning_latency_ms"] == 200.0
