"""The MLflow bridge without a tracking server: registry URI parsing, locating the model in a
downloaded folder, lazy imports (nothing imports MLflow until a URI is used), and the original
system's names (``ModelLoader``, ``ProductionServer``, ``mlflow_tracking_uri=``) over a local model
folder, with and without MLflow installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest

from mlops.integrations.mlflow_registry import (
    RegistryError,
    is_registry_uri,
    locate_model,
    parse_registry_uri,
)
from mlops.serving.model_store import ModelLoadError, load_model
from mlops.serving.training import train

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("uri", "kind", "fields", "moving"), [
    ("models:/alzheimer/3", "version", {"name": "alzheimer", "version": "3"}, False),
    ("models:/alzheimer@champion", "alias", {"name": "alzheimer", "alias": "champion"}, True),
    ("models:/alzheimer/Production", "stage", {"name": "alzheimer", "stage": "Production"}, True),
    ("models:/alzheimer/latest", "latest", {"name": "alzheimer"}, True),
    ("models:/m-0123456789abcdef", "logged_model", {"name": "m-0123456789abcdef"}, False),
    ("runs:/0123456789abcdef0123456789abcdef/model", "run",
     {"run_id": "0123456789abcdef0123456789abcdef", "path": "model"}, False),
    ("runs:/abc/model/model.skops", "run", {"run_id": "abc", "path": "model/model.skops"}, False),
])
def test_registry_uris_parse(uri, kind, fields, moving):
    ref = parse_registry_uri(uri)
    assert ref.kind == kind and ref.moving is moving
    for key, value in fields.items():
        assert getattr(ref, key) == value
    assert is_registry_uri(uri)


@pytest.mark.parametrize("uri", ["models:/", "models:/@x", "models:/a@", "runs:/", "runs:/id/../../etc",
                                 "s3://bucket/model"])
def test_bad_registry_uris_are_refused_with_a_reason(uri):
    with pytest.raises(RegistryError):
        parse_registry_uri(uri)


def test_registry_uri_without_a_tracking_server_is_a_clear_model_load_error(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ModelLoadError, match="need a tracking server"):
        load_model("models:/alzheimer/1")


def _frame(seed: int = 0, n: int = 200) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(2, n))
    return pd.DataFrame({"a": a, "b": b, "y": (a > b).astype(int)})


def test_locate_model_in_mlflow_and_mlops_folders(tmp_path):
    flavour = tmp_path / "flavour"
    flavour.mkdir()
    (flavour / "model.skops").write_bytes(b"x")
    (flavour / "MLmodel").write_text("flavors:\n  sklearn:\n    pickled_model: model.skops\n"
                                     "    serialization_format: skops\n")
    assert locate_model(flavour)[:2] == (flavour.resolve() / "model.skops", "skops")
    (flavour / "MLmodel").write_text("flavors:\n  sklearn:\n    pickled_model: model.pkl\n"
                                     "    serialization_format: cloudpickle\n")
    (flavour / "model.pkl").write_bytes(b"x")
    assert locate_model(flavour)[1] == "joblib"  # pickle: loaded only with a pinned sha256
    (flavour / "MLmodel").write_text("flavors:\n  sklearn:\n    pickled_model: ../../etc/passwd\n")
    with pytest.raises(RegistryError, match="not in the model"):
        locate_model(flavour)
    (flavour / "MLmodel").write_text("flavors:\n  pytorch:\n    model_data: data\n")
    with pytest.raises(RegistryError, match="no sklearn flavour"):
        locate_model(flavour)

    meta = train(_frame(), "y", tmp_path / "ours", model_name="m", version="v1")
    path, fmt, metadata = locate_model(tmp_path / "ours")
    assert (path.name, fmt, metadata.name) == ("model.skops", "skops", "metadata.json")
    assert meta.sha256
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RegistryError, match="no MLmodel, model.skops"):
        locate_model(empty)


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), **env}, timeout=900)


def test_importing_the_engines_and_server_modules_does_not_import_mlflow(tmp_path):
    out = _python("""
        import sys
        import mlops.monitoring.production_monitor, mlops.monitoring.ab_testing, mlops.monitoring.data_trigger
        import mlops.monitoring.drift_detection, mlops.monitoring.config
        import mlops.serving.model_store, mlops.serving.model_loader, mlops.serving.production_server
        import mlops.integrations.mlflow_registry, mlops.integrations.mlflow_tracking
        from mlops.monitoring.production_monitor import ProductionMonitor
        from mlops.monitoring.ab_testing import ABTestingManager
        from mlops.monitoring.data_trigger import DataDrivenRetrainingTrigger
        m = ProductionMonitor("lazy")
        import pandas as pd
        m.log_prediction_batch(pd.DataFrame({"a": [1.0, 2.0]}), [0, 1], [0, 1])
        ABTestingManager(); DataDrivenRetrainingTrigger("lazy")
        print(sorted(k for k in sys.modules if k == "mlflow" or k.startswith("mlflow.")))
    """, MLOPS_HOME=str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def _models_dir(tmp_path: Path) -> tuple[Path, dict]:
    models = tmp_path / "models"
    metas = {}
    for i, version in enumerate(["v1", "v2"]):
        metas[version] = train(_frame(i), "y", models / "alzheimer" / version, model_name="alzheimer",
                               version=version)
    return models, metas


@pytest.mark.slow
def test_original_api_without_mlflow_installed_accepts_the_tracking_uri_and_uses_the_local_folder(tmp_path):
    """Code written against the original names runs when MLflow is absent (import blocked)."""
    models, metas = _models_dir(tmp_path)
    out = _python(f"""
        import sys, json
        sys.modules["mlflow"] = None  # as if the [mlflow] extra were not installed
        import pandas as pd
        from fastapi.testclient import TestClient
        from mlops.monitoring.production_monitor import ProductionMonitor, create_production_monitor
        from mlops.monitoring.ab_testing import ABTestingManager
        from mlops.monitoring.data_trigger import DataDrivenRetrainingTrigger
        from mlops.serving.model_loader import ModelLoader
        from mlops.serving.production_server import ProductionServer, create_production_server
        from mlops.serving.model_store import ModelLoadError, load_model
        uri = "http://127.0.0.1:9"
        monitor = ProductionMonitor("compat", mlflow_tracking_uri=uri)
        monitor.log_prediction_batch(pd.DataFrame({{"a": [1.0, 2.0]}}), [0, 1], [0, 1])
        ab = ABTestingManager(mlflow_tracking_uri=uri)
        trigger = DataDrivenRetrainingTrigger("compat", None, monitor, mlflow_tracking_uri=uri,
                                              retraining_handler=lambda t, r: True)
        assert trigger.force_retrain("manual") is True
        loader = ModelLoader(mlflow_tracking_uri=uri, models_dir={str(models)!r})
        assert loader.get_latest_model_version("alzheimer") == "v2"
        model = loader.load_model_version("alzheimer", "v1")
        assert loader.validate_model(model)["is_valid"]
        server = ProductionServer("alzheimer", uri, True, False, models_dir={str(models)!r})
        assert server.load_latest_model() and server.current_model_version == "v2"
        with TestClient(server.app) as http:
            r = http.post("/predict", json={{"features": {{"a": 1.0, "b": 0.0}}}})
            assert r.status_code == 200, r.text
        try:
            load_model("models:/alzheimer/1", tracking_uri=uri)
        except ModelLoadError as exc:
            print(json.dumps({{"error": str(exc), "tracked": [monitor.tracker.enabled, ab.tracker.enabled,
                                                            trigger.tracker.enabled]}}))
    """, MLOPS_HOME=str(tmp_path / "home"))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert "pip install 'mlops-operator[mlflow]'" in result["error"]
    assert result["tracked"] == [False, False, False]
    assert "MLflow is not installed" in out.stderr


def test_model_loader_local_folder_versions_metadata_cache_and_pickle_opt_in(tmp_path):
    from mlops.serving.model_loader import ModelLoader

    models, metas = _models_dir(tmp_path)
    loader = ModelLoader(models_dir=models, cache_size=2)
    assert loader.get_latest_model_version("alzheimer") == "v2"
    listed = loader.list_model_versions("alzheimer")
    assert [v["version"] for v in listed] == ["v2", "v1"]
    assert {v["source"] for v in listed} == {"local_storage"}
    assert listed[1]["sha256"] == metas["v1"].sha256

    model = loader.load_model_version("alzheimer", "v1")
    assert model.n_features_in_ == 2 and hasattr(model, "predict")
    assert loader.get_cache_info() == {"cached_models": ["alzheimer:v1"], "cache_size": 1, "max_cache_size": 2}
    validation = loader.validate_model(model)
    assert validation["is_valid"] and validation["has_predict_proba"] and len(validation["sample_prediction"]) == 1
    assert loader.get_model_metadata("alzheimer", "v1")["metadata"]["sha256"] == metas["v1"].sha256
    assert loader.get_model_metadata("alzheimer", "v9") == {"name": "alzheimer", "version": "v9",
                                                            "error": "Model not found", "source": "unknown"}
    assert loader.load_model_version("alzheimer", "v9") is None
    with pytest.raises(ModelLoadError, match="sha256 mismatch"):
        loader.load_model_version("alzheimer", "v2", sha256="0" * 64)
    loader.clear_cache()
    assert loader.get_cache_info()["cache_size"] == 0

    # A pickle file in the folder: refused without the opt-in (pinned or not), and without a pin;
    # loaded with both.
    joblib.dump(model, models / "alzheimer_v3.pkl")
    with pytest.raises(ModelLoadError, match="pin the artifact's sha256"):
        loader.load_model_version("alzheimer", "v3")
    import hashlib

    pin = hashlib.sha256((models / "alzheimer_v3.pkl").read_bytes()).hexdigest()
    with pytest.raises(ModelLoadError, match="allow-unsafe-formats"):
        loader.load_model_version("alzheimer", "v3", sha256=pin)
    unsafe = ModelLoader(models_dir=models, cache_size=2, allow_unsafe_formats=True)
    with pytest.raises(ModelLoadError, match="pin the artifact's sha256"):
        unsafe.load_model_version("alzheimer", "v3")
    assert hasattr(unsafe.load_model_version("alzheimer", "v3", sha256=pin), "predict")

    broken = loader.validate_model(object())
    assert broken["is_valid"] is False and broken["errors"] == ["model has no predict method"]


def test_registry_versions_need_a_pin_to_follow_a_moving_uri_and_cli_reports_usage_errors(tmp_path, capsys,
                                                                                          monkeypatch):
    from mlops.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["mlflow", "resolve", "models:/alzheimer@champion"]) == 2
    assert "need a tracking server" in capsys.readouterr().err
    assert main(["mlflow", "fetch", "models:/x/1", "--sha256", "zz", "--dest", str(tmp_path / "m")]) == 2
    assert "64 hex digits" in capsys.readouterr().err


def test_tracker_counts_failures_and_backs_off_instead_of_raising(monkeypatch):
    pytest.importorskip("mlflow")
    from mlops.integrations.mlflow_tracking import Tracker

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    now = [1000.0]
    tracker = Tracker("http://127.0.0.1:9", clock=lambda: now[0], component="test", retry_seconds=60)
    assert tracker.enabled
    assert tracker.log_run("exp", "run", metrics={"x": 1.0}) is None
    assert tracker.failures == 1 and "log run" in tracker.last_error
    assert tracker.log_run("exp", "run") is None  # within the back-off: skipped, not retried
    assert (tracker.failures, tracker.skipped) == (1, 1)
    now[0] += 61
    assert tracker.log_step("exp", "k", "run", {"x": 1.0}) is None
    assert tracker.failures == 2


def test_model_deployment_admits_registry_uris_and_its_init_container_resolves_them_with_the_same_resolver():
    from mlops.operator.api import ModelDeploymentSpec
    from mlops.operator.artifacts import verify_artifact
    from mlops.operator.resources.model_deployment import Observed, desired_objects

    sha = "c" * 64
    spec = {"modelName": "alzheimer", "stableVersion": "v1", "versions": [
        {"name": "v1", "artifact": {"uri": "models:/alzheimer@champion", "sha256": sha,
                                    "trackingUri": "http://mlflow.mlops.svc:5000"}},
        {"name": "v2", "artifact": {"uri": "runs:/0123456789abcdef0123456789abcdef/model", "sha256": sha}},
    ]}
    ModelDeploymentSpec.model_validate(spec)
    with pytest.raises(ValueError, match="tracking_uri|trackingUri"):
        ModelDeploymentSpec.model_validate({**spec, "versions": [
            {"name": "v1", "artifact": {"uri": "models:/a/1", "sha256": sha, "trackingUri": "ftp://x"}}]})
    with pytest.raises(ValueError):
        ModelDeploymentSpec.model_validate({**spec, "versions": [
            {"name": "v1", "artifact": {"uri": "model:/a/1", "sha256": sha}}]})
    cr = {"apiVersion": "mlops.duetmind.io/v1alpha1", "kind": "ModelDeployment",
          "metadata": {"name": "alz", "namespace": "models", "uid": "u", "generation": 1}, "spec": spec}
    deployments = {o["metadata"]["name"]: o for o in desired_objects(cr, Observed()) if o["kind"] == "Deployment"}
    init = deployments["alz-v1"]["spec"]["template"]["spec"]["initContainers"][0]
    assert init["command"] == ["python", "-m", "mlops", "mlflow", "fetch", "models:/alzheimer@champion",
                               "--sha256", sha, "--dest", "/models/model.skops"]
    assert {"name": "MLFLOW_TRACKING_URI", "value": "http://mlflow.mlops.svc:5000"} in init["env"]
    init2 = deployments["alz-v2"]["spec"]["template"]["spec"]["initContainers"][0]
    assert init2["command"][4] == "fetch" and all(e["name"] != "MLFLOW_TRACKING_URI" for e in init2["env"])
    # The operator itself does not fetch registry artifacts: no verdict, left to the init container.
    assert verify_artifact("models:/alzheimer@champion", sha, max_bytes=1 << 20).ok is None
