"""The init container's s3:// and gs:// downloads against a real S3-compatible server (moto's server
mode on loopback, with IAM authentication switched on), credentials taken from a real Secret.

The init container's command and environment are taken from the Deployment the builder renders for
a ModelDeployment with ``spec.artifactStore``; its ``envFrom`` Secret is created on the local control
plane and read back, exactly the variables the kubelet would inject, and the command runs as a process.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from mlops.operator.k8s import Kube
from mlops.operator.resources.model_deployment import desired_objects

pytestmark = pytest.mark.integration

MODEL = b"model bytes " * 1000
BUCKET = "models"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server():
    """moto server; after the first 4 (setup) requests every request must be signed by a real IAM key."""
    import boto3

    port = _free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "4"}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(endpoint + "/moto-api/", timeout=1).status_code < 500:
                    break
            assert proc.poll() is None, "moto server exited"
            time.sleep(0.2)
        setup = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="setup",
                     aws_secret_access_key="setup")
        iam = boto3.client("iam", **setup)
        iam.create_user(UserName="reader")  # 1
        key = iam.create_access_key(UserName="reader")["AccessKey"]  # 2
        iam.put_user_policy(UserName="reader", PolicyName="s3", PolicyDocument=json.dumps(  # 3
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        boto3.client("s3", **setup).create_bucket(Bucket=BUCKET)  # 4
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])
        s3.put_object(Bucket=BUCKET, Key="alz/v1.skops", Body=MODEL)
        yield endpoint, key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        proc.terminate()
        proc.wait(20)


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
