"""The model pods' init container: download one artifact, verify its sha256, then move it into place.

Why it exists: ``s3://`` and ``gs://`` URIs are documented and used in the examples, but the former
inline init script exited on them, so a version stored in a bucket never became Ready. It runs as

    python -m mlops.serving.artifact_fetch <uri> <sha256> <destination>

Schemes:
- ``file://`` (a volume mounted into the pod), ``http://``, ``https://``;
- ``s3://bucket/key``: boto3, credentials from the environment (the ModelDeployment's
  ``spec.artifactStore.secretName`` is mounted with ``envFrom``: ``AWS_ACCESS_KEY_ID``,
  ``AWS_SECRET_ACCESS_KEY``, optional ``AWS_SESSION_TOKEN``), endpoint from
  ``MLOPS_ARTIFACT_S3_ENDPOINT`` (MinIO, Ceph, any S3-compatible store), region from
  ``AWS_DEFAULT_REGION``; without credentials boto3's own chain applies (IRSA, instance profile);
- ``gs://bucket/object``: Google Cloud Storage's S3-compatible XML API when HMAC keys are given
  (``GCS_HMAC_ACCESS_KEY_ID`` / ``GCS_HMAC_SECRET``, or the AWS names above; endpoint
  ``MLOPS_ARTIFACT_GCS_ENDPOINT``, default https://storage.googleapis.com); otherwise the JSON API
  with an OAuth token from ``GCS_OAUTH_TOKEN`` or the GKE metadata server (workload identity), or
  anonymously for public objects.

Nothing is moved into place unless the digest matches: the partial file is deleted and the process
exits non-zero with the reason (Kubernetes shows it as the init container's termination message,
and the operator repeats it in the ModelDeployment's status).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from typing import Any, BinaryIO

CHUNK = 1 << 20
GCS_ENDPOINT = "https://storage.googleapis.com"
METADATA_TOKEN_URL = "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token"


class FetchError(Exception):
    """The artifact could not be fetched or did not match its digest."""


def _split_bucket(uri: str) -> tuple[str, str]:
    parsed = urllib.parse.urlparse(uri)
    bucket, key = parsed.netloc, urllib.parse.unquote(parsed.path.lstrip("/"))
    if not bucket or not key:
        raise FetchError(f"{uri}: expected {parsed.scheme}://<bucket>/<key>")
    return bucket, key


def s3_client(*, endpoint: str | None, access_key: str | None, secret_key: str | None,
              session_token: str | None, region: str | None) -> Any:
    """A boto3 S3 client for any S3-compatible store (also used by ``artifact_upload``)."""
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(
        aws_access_key_id=access_key or None,
        aws_secret_access_key=secret_key or None,
        aws_session_token=session_token or None,
        region_name=region or "us-east-1",
    )
    return session.client("s3", endpoint_url=endpoint or None,
                          config=Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10,
                                        read_timeout=60))


def store_client(scheme: str, env: Mapping[str, str]) -> Any:
    """The S3 client for ``s3://`` or (HMAC keys given) ``gs://``, configured from ``env``; None for
    ``gs://`` without HMAC keys (the JSON API applies)."""
    if scheme == "s3":
        return s3_client(endpoint=env.get("MLOPS_ARTIFACT_S3_ENDPOINT"), access_key=env.get("AWS_ACCESS_KEY_ID"),
                         secret_key=env.get("AWS_SECRET_ACCESS_KEY"), session_token=env.get("AWS_SESSION_TOKEN"),
                         region=env.get("AWS_DEFAULT_REGION"))
    access = env.get("GCS_HMAC_ACCESS_KEY_ID") or env.get("AWS_ACCESS_KEY_ID")
    secret = env.get("GCS_HMAC_SECRET") or env.get("AWS_SECRET_ACCESS_KEY")
    if not (access and secret):
        return None
    return s3_client(endpoint=env.get("MLOPS_ARTIFACT_GCS_ENDPOINT") or GCS_ENDPOINT, access_key=access,
                     secret_key=secret, session_token=None, region=env.get("GCS_REGION") or "auto")


def _s3_body(client: Any, bucket: str, key: str, uri: str) -> BinaryIO:
    import botocore.exceptions

    try:
        return client.get_object(Bucket=bucket, Key=key)["Body"]
    except botocore.exceptions.ClientError as exc:
        err = exc.response.get("Error", {})
        raise FetchError(f"{uri}: {err.get('Code', 'error')}: {err.get('Message', exc)}") from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise FetchError(f"{uri}: {exc}") from exc


def _gcs_token(env: Mapping[str, str]) -> str | None:
    if env.get("GCS_OAUTH_TOKEN"):
        return env["GCS_OAUTH_TOKEN"]
    if env.get("MLOPS_ARTIFACT_GCS_METADATA", "1") == "0":
        return None
    try:
        req = urllib.request.Request(METADATA_TOKEN_URL, headers={"Metadata-Flavor": "Google"})
        with urllib.request.urlopen(req, timeout=2) as resp:  # noqa: S310 - fixed metadata URL
            return json.loads(resp.read())["access_token"]
    except (OSError, ValueError, KeyError):
        return None


def open_source(uri: str, env: Mapping[str, str] | None = None) -> BinaryIO:
    """A readable stream of the artifact at ``uri``."""
    env = os.environ if env is None else env
    parsed = urllib.parse.urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme == "file":
        try:
            return open(urllib.parse.unquote(parsed.path), "rb")  # noqa: SIM115 - caller closes
        except OSError as exc:
            raise FetchError(f"{uri}: {exc.strerror or exc}") from exc
    if scheme in ("http", "https"):
        try:
            return urllib.request.urlopen(uri, timeout=60)  # noqa: S310 - scheme checked above
        except OSError as exc:
            raise FetchError(f"{uri}: {exc}") from exc
    if scheme in ("s3", "gs"):
        bucket, key = _split_bucket(uri)
        client = store_client(scheme, env)
        if client is not None:  # s3://, or gs:// through the interoperability (S3 XML) API with HMAC keys
            return _s3_body(client, bucket, key, uri)
        endpoint = env.get("MLOPS_ARTIFACT_GCS_ENDPOINT") or GCS_ENDPOINT
        url = (f"{endpoint}/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o/"
               f"{urllib.parse.quote(key, safe='')}?alt=media")
        headers = {}
        token = _gcs_token(env)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60)  # noqa: S310
        except OSError as exc:
            raise FetchError(f"{uri}: {exc}") from exc
    raise FetchError(f"{uri}: unsupported scheme {scheme!r} (file, http, https, s3, gs)")


def _chunks(stream: Any) -> Iterator[bytes]:
    while True:
        chunk = stream.read(CHUNK)
        if not chunk:
            return
        yield chunk


def fetch(uri: str, sha256: str, dest: str, env: Mapping[str, str] | None = None) -> str:
    """Download ``uri`` to ``dest`` only if its sha256 is ``sha256``; returns the digest."""
    want = sha256.lower()
    tmp = dest + ".part"
    digest = hashlib.sha256()
    src = open_source(uri, env)
    try:
        with open(tmp, "wb") as out:
            for chunk in _chunks(src):
                digest.update(chunk)
                out.write(chunk)
    except OSError as exc:
        _remove(tmp)
        raise FetchError(f"{uri}: download failed: {exc}") from exc
    except Exception:
        _remove(tmp)
        raise
    finally:
        close = getattr(src, "close", None)
        if close:
            close()
    got = digest.hexdigest()
    if got != want:
        _remove(tmp)
        raise FetchError(f"sha256 mismatch for {uri}: got {got}, want {want}")
    shutil.move(tmp, dest)
    return got


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print("usage: python -m mlops.serving.artifact_fetch <uri> <sha256> <destination>", file=sys.stderr)
        return 2
    uri, want, dest = args
    try:
        fetch(uri, want, dest)
    except FetchError as exc:
        message = f"fetch-artifact: {exc}"
        print(message, file=sys.stderr)
        try:  # Kubernetes shows this as the container's termination message
            with open("/dev/termination-log", "w") as fh:
                fh.write(message[:4000])
        except OSError:
            pass
        return 1
    print(f"fetch-artifact: {uri} verified ({want})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
