"""The init container's s3:// and gs:// downloads against a real S3-compatible server (moto's server
mode on loopback, with IAM authentication switched on), credentials taken from a real Secret.

The init container's command and environment are taken from the Deployment the builder renders for
a ModelDeployment with ``spec.artifactStore``; its ``envFrom`` Secret is created on the local control
plane and read back, exactly the variables the kubelet would inject, and the command runs as a process.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlops.operator.k8s import Kube
from mlops.operator.resources.model_deployment import desired_objects

pytestmark = pytest.mark.integration

MODEL = b"model bytes " * 1000
BUCKET = "models"


@pytest.fixture(scope="module")
def s3_server():
    """moto server; every request after its setup must be signed by a real IAM key."""
    from mlops.testing.s3 import s3_server as start

    with start(bucket=BUCKET) as store:
        store.client().put_object(Bucket=BUCKET, Key="alz/v1.skops", Body=MODEL)
        yield store.endpoint, store.access_key_id, store.secret_access_key


def _secret_env(admin: Kube, namespace: str, name: str) -> dict[str, str]:
    secret = admin.get("Secret", namespace, name)
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


def _run_init_container(admin: Kube, namespace: str, uri: str, sha: str, workdir: Path, endpoint: str,
                        secret: str, **store):
    cr = {
        "apiVersion": "mlops.duetmind.io/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "alz", "namespace": namespace, "uid": "u-1"},
        "spec": {"modelName": "alz", "stableVersion": "v1",
                 "versions": [{"name": "v1", "artifact": {"uri": uri, "sha256": sha}}],
                 "artifactStore": {"secretName": secret, **store}},
    }
    dep = next(o for o in desired_objects(cr) if o["kind"] == "Deployment" and o["metadata"]["name"] == "alz-v1")
    init = dep["spec"]["template"]["spec"]["initContainers"][0]
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": os.environ.get("PYTHONPATH", ""), "HOME": str(workdir),
           "MLOPS_ARTIFACT_GCS_METADATA": "0"}
    for ref in init.get("envFrom", []):
        env.update(_secret_env(admin, namespace, ref["secretRef"]["name"]))
    env.update({e["name"]: e["value"] for e in init.get("env", [])})
    dest = workdir / "model.skops"
    command = [sys.executable if c == "python" else c for c in init["command"]]
    command[-1] = str(dest)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120), dest


def test_s3_artifact_downloaded_and_verified_with_credentials_from_a_secret(cluster, namespace, s3_server, tmp_path):
    endpoint, key_id, secret_key = s3_server
    admin = Kube(cluster.api_client())
    cluster.kubectl("create", "secret", "generic", "s3-creds", "-n", namespace,
                    f"--from-literal=AWS_ACCESS_KEY_ID={key_id}", f"--from-literal=AWS_SECRET_ACCESS_KEY={secret_key}")
    cluster.kubectl("create", "secret", "generic", "wrong-creds", "-n", namespace,
                    "--from-literal=AWS_ACCESS_KEY_ID=AKIANOTAKEY", "--from-literal=AWS_SECRET_ACCESS_KEY=nope")
    good = hashlib.sha256(MODEL).hexdigest()
    uri = f"s3://{BUCKET}/alz/v1.skops"

    ok, dest = _run_init_container(admin, namespace, uri, good, tmp_path, endpoint, "s3-creds", s3Endpoint=endpoint)
    assert ok.returncode == 0, ok.stderr
    assert dest.read_bytes() == MODEL and "verified" in ok.stdout
    dest.unlink()

    wrong, dest = _run_init_container(admin, namespace, uri, "f" * 64, tmp_path, endpoint, "s3-creds",
                                      s3Endpoint=endpoint)
    assert wrong.returncode != 0 and "sha256 mismatch" in wrong.stderr
    assert not dest.exists() and not Path(str(dest) + ".part").exists()

    denied, dest = _run_init_container(admin, namespace, uri, good, tmp_path, endpoint, "wrong-creds",
                                       s3Endpoint=endpoint)
    assert denied.returncode != 0 and "InvalidAccessKeyId" in denied.stderr, denied.stderr
    assert not dest.exists()


def test_gs_artifact_through_the_s3_interoperability_api(cluster, namespace, s3_server, tmp_path):
    endpoint, key_id, secret_key = s3_server
    admin = Kube(cluster.api_client())
    cluster.kubectl("create", "secret", "generic", "gcs-hmac", "-n", namespace,
                    f"--from-literal=GCS_HMAC_ACCESS_KEY_ID={key_id}", f"--from-literal=GCS_HMAC_SECRET={secret_key}")
    good = hashlib.sha256(MODEL).hexdigest()
    ok, dest = _run_init_container(admin, namespace, f"gs://{BUCKET}/alz/v1.skops", good, tmp_path, endpoint,
                                   "gcs-hmac", gcsEndpoint=endpoint)
    assert ok.returncode == 0, ok.stderr
    assert dest.read_bytes() == MODEL


def test_trained_artifact_uploaded_by_mlops_train_is_fetched_and_verified_by_the_init_container(
        cluster, namespace, s3_server, tmp_path):
    """A retraining Job's half: `mlops train --upload-to s3://...` publishes the folder under the run's
    name and reports that URI; the init container (credentials from the same Secret) verifies exactly
    the bytes the trainer hashed. A second upload under the same run is refused, not overwritten."""
    import numpy as np
    import pandas as pd

    endpoint, key_id, secret_key = s3_server
    admin = Kube(cluster.api_client())
    cluster.kubectl("create", "secret", "generic", "trainer-creds", "-n", namespace,
                    f"--from-literal=AWS_ACCESS_KEY_ID={key_id}", f"--from-literal=AWS_SECRET_ACCESS_KEY={secret_key}")
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"age": rng.normal(70, 8, 200), "score": rng.normal(25, 3, 200)})
    frame["label"] = (frame.score < 24).astype(int)
    frame.to_csv(tmp_path / "train.csv", index=False)
    env = {**os.environ, **_secret_env(admin, namespace, "trainer-creds"), "MLOPS_ARTIFACT_S3_ENDPOINT": endpoint,
           "MLOPS_RUN_ID": "alz-retrain-r7", "MLOPS_HOME": str(tmp_path / "home")}
    record_path = tmp_path / "termination-log"

    def train(out: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "mlops", "train", "--data", str(tmp_path / "train.csv"), "--label", "label",
             "--out", str(tmp_path / out), "--upload-to", f"s3://{BUCKET}/retrained/alz",
             "--termination-message-path", str(record_path)],
            env=env, capture_output=True, text=True, timeout=180)

    first = train("out1")
    assert first.returncode == 0, first.stderr
    record = json.loads(record_path.read_text())
    assert record["uri"] == f"s3://{BUCKET}/retrained/alz/alz-retrain-r7/model.skops", record
    assert record["runId"] == "alz-retrain-r7"
    assert record["sha256"] == hashlib.sha256((tmp_path / "out1" / "model.skops").read_bytes()).hexdigest()

    (tmp_path / "pod").mkdir()
    fetched, dest = _run_init_container(admin, namespace, record["uri"], record["sha256"], tmp_path / "pod",
                                        endpoint, "trainer-creds", s3Endpoint=endpoint)
    assert fetched.returncode == 0, fetched.stderr
    assert dest.read_bytes() == (tmp_path / "out1" / "model.skops").read_bytes()

    again = train("out2")  # the same run again (a retried Job): what was published stays
    assert again.returncode == 2 and "already exists: not overwritten" in again.stderr, again.stderr
    dest.unlink()
    second, _ = _run_init_container(admin, namespace, record["uri"], record["sha256"], tmp_path / "pod",
                                    endpoint, "trainer-creds", s3Endpoint=endpoint)
    assert second.returncode == 0, second.stderr
