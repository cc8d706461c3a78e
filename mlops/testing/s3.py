"""A real S3-compatible server for tests: moto's server mode as a subprocess, with IAM authentication on.

Why it exists: the init container's ``s3://`` download (tests/integration) and the closed loop on real
pods (tests/e2e: the retraining Job uploads, the candidate's init container downloads) both need a
store that checks signatures the way S3 does, reachable from the host or from pods on the node's
bridge. After the setup requests (an IAM user with an s3:* policy, its access key, the bucket) every
request must be signed by that user's key, so a test that passes proves the credentials really travel
from the Secret to the process.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import httpx

from mlops.testing.cluster import free_port

SETUP_REQUESTS = 4  # create_user, create_access_key, put_user_policy, create_bucket


@dataclass(frozen=True)
class S3Store:
    endpoint: str
    bucket: str
    access_key_id: str
    secret_access_key: str

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.access_key_id, aws_secret_access_key=self.secret_access_key)

    def secret_data(self) -> dict[str, str]:
        """What a Secret for ``spec.artifactStore.secretName`` (or a Job's envFrom) carries."""
        return {"AWS_ACCESS_KEY_ID": self.access_key_id, "AWS_SECRET_ACCESS_KEY": self.secret_access_key}


@contextlib.contextmanager
def s3_server(host: str = "127.0.0.1", bucket: str = "models"):
    """Yield an ``S3Store`` served on ``host`` (a free port) until the block ends."""
    import boto3

    port = free_port(host)
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(SETUP_REQUESTS)}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://{host}:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(endpoint + "/moto-api/", timeout=1, trust_env=False).status_code < 500:
                    break
            if proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"moto server did not answer on {endpoint} within 60 s")
            time.sleep(0.2)
        setup = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="setup",
                     aws_secret_access_key="setup")
        iam = boto3.client("iam", **setup)
        iam.create_user(UserName="mlops")
        key = iam.create_access_key(UserName="mlops")["AccessKey"]
        iam.put_user_policy(UserName="mlops", PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        boto3.client("s3", **setup).create_bucket(Bucket=bucket)
        yield S3Store(endpoint, bucket, key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        from mlops.testing.experiment_stack import stop_all

        stop_all([proc])
