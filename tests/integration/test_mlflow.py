"""MLflow against a real tracking server (``mlflow server``: SQLite backend, local artifact root,
loopback, started and stopped by the module fixture): registry URIs served with their pin and
refused with a wrong one, a moved alias refused until re-pinned, ``mlops train --register``, and
retraining runs / A/B results / monitor batches logged as MLflow runs with their metrics."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

mlflow = pytest.importorskip("mlflow")

from mlflow import MlflowClient  # noqa: E402

from mlops.cli import main as mlops_main  # noqa: E402
from mlops.integrations.mlflow_registry import describe  # noqa: E402
from mlops.serving.model_store import IntegrityError, ModelLoadError, load_model  # noqa: E402
from mlops.testing.cluster import free_port  # noqa: E402
from mlops.testing.waiting import wait_http  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 600.0  # `mlflow server` takes 1-2 minutes to answer on a loaded 2-core machine


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), **extra}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=root, start_new_session=True,
        env=_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
    )
    url = f"http://127.0.0.1:{port}"
    strays = [Path.cwd() / "mlflow.db", Path.cwd() / "mlruns"]
    existed = [p.exists() for p in strays]
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {proc.returncode}: {(root / 'server.log').read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not healthy after {START_TIMEOUT:.0f} s: "
                            f"{(root / 'server.log').read_text()[-3000:]}")
            time.sleep(1)
        yield url
        # Every call went to the test server: MLflow's local default store was never created.
        assert [p.exists() for p in strays] == existed, "MLflow fell back to a store in the working directory"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _dataset(path: Path, seed: int, n: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age, mmse = rng.normal(70, 8, n), rng.normal(25, 3, n)
    frame = pd.DataFrame({"Age": age, "MMSE": mmse, "label": ((mmse - 0.1 * (age - 70)) < 24).astype(int)})
    frame.to_csv(path, index=False)
    return frame


@contextlib.contextmanager
def _fluent(url: str):
    """MLflow's fluent API (``mlflow.start_run``/``log_model``) pointed at the test server for a block."""
    mlflow.set_tracking_uri(url)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)


def _serve(*args: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mlops", "serve", "--host", "127.0.0.1", "--port", str(port),
                             "--no-ab-testing", "--log-level", "warning", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    return proc, port


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def registered(mlflow_server, tmp_path_factory):
    """``alzheimer`` v1 from ``mlops train --register``; v2 an sklearn-flavour model logged with MLflow."""
    root = tmp_path_factory.mktemp("registered")
    _dataset(root / "train.csv", seed=1)
    out = subprocess.run(
        [sys.executable, "-m", "mlops", "train", "--data", str(root / "train.csv"), "--label", "label",
         "--out", str(root / "v1"), "--model-name", "alzheimer", "--version", "v1", "--register", "alzheimer",
         "--mlflow-tracking-uri", mlflow_server, "--json"],
        capture_output=True, text=True, env=_env(), timeout=600)
    assert out.returncode == 0, out.stderr
    v1 = json.loads(out.stdout)["registered"]
    assert v1["uri"] == "models:/alzheimer/1"
    assert v1["sha256"] == (root / "v1" / "model.sha256").read_text().split()[0]

    from sklearn.linear_model import LogisticRegression

    frame = _dataset(root / "v2.csv", seed=2)
    model = LogisticRegression(C=0.5, max_iter=1000).fit(frame[["Age", "MMSE"]], frame["label"])
    client = MlflowClient(mlflow_server)
    with _fluent(mlflow_server), mlflow.start_run():
        mlflow.sklearn.log_model(model, name="model", registered_model_name="alzheimer")
    v2 = describe("models:/alzheimer/2", mlflow_server)
    assert v2["format"] == "skops" and v2["sha256"] != v1["sha256"]
    return {"url": mlflow_server, "client": client, "v1": v1, "v2": v2, "root": root}


def test_train_register_version_is_served_with_its_pin_and_refused_with_a_wrong_one(registered):
    url, v1 = registered["url"], registered["v1"]
    proc, port = _serve("--model-uri", "models:/alzheimer/1", "--sha256", v1["sha256"], "--mlflow-tracking-uri", url)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, timeout=300)
        models = httpx.get(f"http://127.0.0.1:{port}/models", timeout=10).json()
        assert models["model_name"] == "alzheimer"
        assert models["models"][0]["sha256"] == v1["sha256"]
        answer = httpx.post(f"http://127.0.0.1:{port}/predict", json={"features": {"Age": 80.0, "MMSE": 18.0}},
                            timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.json()["prediction"] == 1
    finally:
        _stop(proc)

    wrong = "0" * 64
    proc, _ = _serve("--model-uri", "models:/alzheimer/1", "--sha256", wrong, "--mlflow-tracking-uri", url)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2, output
    assert "sha256 mismatch" in output and "models:/alzheimer/1" in output and wrong in output


def test_moved_alias_is_refused_until_repinned(registered, tmp_path):
    url, client, v1, v2 = registered["url"], registered["client"], registered["v1"], registered["v2"]
    client.set_registered_model_alias("alzheimer", "champion", "1")
    served = load_model("models:/alzheimer@champion", sha256=v1["sha256"], tracking_uri=url)
    assert served.metadata.sha256 == v1["sha256"]
    assert served.metadata.resolved_uri == "models:/alzheimer/1"
    with pytest.raises(ModelLoadError, match="can move to another model version: pin it"):
        load_model("models:/alzheimer@champion", tracking_uri=url)

    client.set_registered_model_alias("alzheimer", "champion", "2")
    with pytest.raises(IntegrityError, match="resolved to models:/alzheimer/2"):
        load_model("models:/alzheimer@champion", sha256=v1["sha256"], tracking_uri=url)
    # The init container's path refuses it the same way and writes nothing.
    dest = tmp_path / "models" / "model.skops"
    dest.parent.mkdir()
    assert mlops_main(["mlflow", "fetch", "models:/alzheimer@champion", "--sha256", v1["sha256"],
                       "--dest", str(dest), "--mlflow-tracking-uri", url]) == 1
    assert not dest.exists()

    # Re-pinned: the sklearn-flavour model (MLmodel + model.skops) loads; schema from the estimator.
    repinned = describe("models:/alzheimer@champion", url)["sha256"]
    assert repinned == v2["sha256"]
    served = load_model("models:/alzheimer@champion", sha256=repinned, tracking_uri=url)
    assert served.names == ["Age", "MMSE"]
    assert served.predict([[80.0, 18.0]])[0] == [1]
    assert mlops_main(["mlflow", "fetch", "models:/alzheimer@champion", "--sha256", repinned,
                       "--dest", str(dest), "--mlflow-tracking-uri", url]) == 0
    assert load_model(str(dest), sha256=repinned).metadata.sha256 == repinned


def test_runs_uri_and_pickle_flavour_needs_the_opt_in_and_a_pin(registered):
    url, v1 = registered["url"], registered["v1"]
    by_run = load_model(f"runs:/{v1['run_id']}/model", tracking_uri=url)  # our skops folder as run artifacts
    assert by_run.metadata.sha256 == v1["sha256"] and by_run.metadata.model_name == "alzheimer"

    from sklearn.linear_model import LogisticRegression

    frame = _dataset(registered["root"] / "pickle.csv", seed=3)
    model = LogisticRegression().fit(frame[["Age", "MMSE"]], frame["label"])
    with _fluent(url), mlflow.start_run() as run:
        info = mlflow.sklearn.log_model(model, name="model", serialization_format="cloudpickle")
    uri = f"runs:/{run.info.run_id}/model"  # MLflow 3 keeps it as a logged model, outside the run's artifacts
    with pytest.raises(ModelLoadError, match="sha256"):
        load_model(uri, tracking_uri=url, allow_unsafe=True)
    pin = describe(uri, url)["sha256"]
    assert describe(info.model_uri, url)["sha256"] == pin  # models:/<logged model id>
    with pytest.raises(ModelLoadError, match="allow-unsafe-formats"):  # pickle needs the explicit opt-in too
        load_model(uri, sha256=pin, tracking_uri=url)
    assert load_model(uri, sha256=pin, tracking_uri=url, allow_unsafe=True).predict([[80.0, 18.0]])[0] == [1]


def test_unpinned_fixed_version_is_held_to_its_registry_record(registered):
    """``models:/alzheimer/2`` (plain MLflow, skops, no trainer record) loads unpinned at the digest it
    was downloaded with; a ``mlops.sha256`` tag that disagrees with the artifact refuses the load."""
    url, v2 = registered["url"], registered["v2"]
    loaded = load_model("models:/alzheimer/2", tracking_uri=url)
    assert loaded.metadata.sha256 == v2["sha256"]
    registered["client"].set_model_version_tag("alzheimer", "2", "mlops.sha256", "0" * 64)
    try:
        with pytest.raises(IntegrityError, match="registry records sha256"):
            load_model("models:/alzheimer/2", tracking_uri=url)
    finally:
        registered["client"].delete_model_version_tag("alzheimer", "2", "mlops.sha256")


def test_original_model_loader_and_production_server_names_over_the_registry(registered, tmp_path):
    from fastapi.testclient import TestClient

    from mlops.serving.model_loader import ModelLoader
    from mlops.serving.production_server import ProductionServer

    url = registered["url"]
    loader = ModelLoader(mlflow_tracking_uri=url, models_dir=tmp_path / "models")
    assert loader.get_latest_model_version("alzheimer") == "2"
    versions = loader.list_model_versions("alzheimer")
    assert [v["version"] for v in versions if v["source"] == "mlflow_registry"] == ["2", "1"]
    assert versions[-1]["sha256"] == registered["v1"]["sha256"]
    model = loader.load_model_version("alzheimer", "1")
    assert loader.validate_model(model)["is_valid"]
    assert loader.get_model_metadata("alzheimer", "1")["run_id"] == registered["v1"]["run_id"]
    assert loader.get_cache_info()["cached_models"] == ["alzheimer:1"]
    assert loader.load_model_version("alzheimer", "99") is None

    server = ProductionServer("alzheimer", url, False, False, models_dir=tmp_path / "models")
    assert server.load_latest_model() is True
    assert server.current_model_version == "2"
    with TestClient(server.app) as http:
        answer = http.post("/predict", json={"features": {"Age": 80.0, "MMSE": 18.0}})
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == "2"


def _runs(url: str, experiment: str) -> list:
    client = MlflowClient(url)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r}"
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def test_retraining_runs_are_logged_with_trigger_reason_size_metrics_and_success(mlflow_server):
    from mlops.monitoring.data_trigger import DataDrivenRetrainingTrigger

    outcomes = iter([{"success": True, "new_model_version": "v2", "performance_after": 0.91}, False])
    trigger = DataDrivenRetrainingTrigger("tracked-model", {"min_hours_between_retrains": 0}, None, mlflow_server,
                                          retraining_handler=lambda trigger_type, reason: next(outcomes))
    assert trigger.force_retrain("accuracy fell after the new clinic joined") is True
    assert trigger.force_retrain("second try") is False
    ok, failed = _runs(mlflow_server, "tracked-model-retraining")
    assert ok.info.status == "FINISHED" and failed.info.status == "FAILED"
    assert ok.data.params["trigger_type"] == "manual"
    assert ok.data.params["trigger_reason"] == "accuracy fell after the new clinic joined"
    assert "data_size" in ok.data.params
    assert ok.data.metrics["success"] == 1.0 and ok.data.metrics["performance_after"] == pytest.approx(0.91)
    assert ok.data.tags["mlops.new_model_version"] == "v2"
    assert failed.data.metrics["success"] == 0.0
    assert failed.data.tags["mlops.error_message"] == "handler returned False"
    assert trigger.tracker.failures == 0


def test_ab_result_and_monitor_batches_are_logged_as_runs(mlflow_server):
    from mlops.monitoring.ab_testing import ABTestConfig, ABTestingManager
    from mlops.monitoring.production_monitor import ProductionMonitor

    class Fixed:
        def __init__(self, label: int) -> None:
            self.label = label

        def predict(self, x):
            return [self.label] * len(x)

    manager = ABTestingManager(mlflow_tracking_uri=mlflow_server)
    name = manager.create_experiment(ABTestConfig("tracked_ab", "v1", "v2", traffic_split=0.5,
                                                  min_samples_per_variant=10))
    manager.start_experiment(name)
    outcomes = []
    for i in range(200):
        manager.make_prediction(name, f"user_{i}", {"Age": 70.0}, {"v1": Fixed(0), "v2": Fixed(1)})
        outcomes.append((f"user_{i}", 1))
    manager.update_prediction_outcomes(name, outcomes)
    result = manager.stop_experiment(name)
    (run,) = _runs(mlflow_server, "ab-tracked_ab")
    assert run.data.metrics["samples_a"] == result.samples_a and run.data.metrics["samples_b"] == result.samples_b
    assert run.data.metrics["accuracy_a"] == 0.0 and run.data.metrics["accuracy_b"] == 1.0
    assert "p_value_accuracy" in run.data.metrics
    assert run.data.params["model_b_version"] == "v2"
    assert run.data.tags["mlops.winner"] == (result.winner or "none") and run.data.tags["mlops.status"] == "completed"

    monitor = ProductionMonitor("tracked-monitor", mlflow_tracking_uri=mlflow_server)
    frame = pd.DataFrame({"a": [0.1, 0.2, 0.3, 0.4]})
    monitor.log_prediction_batch(frame, [1, 0, 1, 0], [1, 0, 0, 0], model_version="v1", latency_ms=12.0)
    monitor.log_prediction_batch(frame, [1, 1, 1, 1], [1, 1, 1, 0], model_version="v1", latency_ms=14.0)
    monitor.close()
    (run,) = _runs(mlflow_server, "tracked-monitor-monitoring")
    history = MlflowClient(mlflow_server).get_metric_history(run.info.run_id, "accuracy")
    assert [(m.step, m.value) for m in history] == [(0, 0.75), (1, 0.75)]
    assert [m.value for m in MlflowClient(mlflow_server).get_metric_history(run.info.run_id, "latency_ms")] == [12.0, 14.0]
    assert run.data.params["model_version"] == "v1"
    assert MlflowClient(mlflow_server).get_run(run.info.run_id).info.status == "FINISHED"
