"""Publish a trained artifact folder where model pods can fetch it: the other half of ``artifact_fetch``.

Why it exists: a retraining Job's pod writes its model to its own filesystem, which no serving pod can
read. ``mlops train --upload-to PREFIX`` copies the folder (model.skops, model.sha256, metadata.json,
profile.json) to ``PREFIX/<run>/`` in the store the init containers read from, and reports that URI
with the sha256 it computed itself, so the candidate's init container verifies exactly those bytes.

Schemes and credentials are the init container's (``artifact_fetch``): ``s3://bucket/prefix`` (any
S3-compatible store: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` from the same Secret,
``MLOPS_ARTIFACT_S3_ENDPOINT``, ``AWS_DEFAULT_REGION``), ``gs://bucket/prefix`` through the S3 XML API
with HMAC keys, and ``file:///path`` (a shared volume mounted into the Job and the model pods).

An object that already exists under the run's prefix is never overwritten: a retried Job of the same
run, or two runs given the same name, must not replace bytes a pinned sha256 already names. Their
upload fails with the object named.
"""

from __future__ import annotations

import os
import shutil
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

from mlops.serving.artifact_fetch import FetchError, store_client

FILES = ("model.skops", "model.sha256", "metadata.json", "profile.json")
SCHEMES = ("s3", "gs", "file")


class UploadError(Exception):
    """The artifact folder could not be published."""


def destination(prefix: str, run: str) -> str:
    """``PREFIX/<run>`` (the folder the files go to), after checking the prefix is usable."""
    parsed = urllib.parse.urlparse(prefix)
    scheme = parsed.scheme.lower()
    if scheme not in SCHEMES:
        raise UploadError(f"{prefix}: unsupported scheme {scheme!r} ({', '.join(SCHEMES)})")
    if scheme in ("s3", "gs") and not parsed.netloc:
        raise UploadError(f"{prefix}: expected {scheme}://<bucket>[/<prefix>]")
    if scheme == "file" and (parsed.netloc or not parsed.path.startswith("/")):
        raise UploadError(f"{prefix}: expected file:///<absolute path>")
    if not run or "/" in run or run in (".", ".."):
        raise UploadError(f"run name {run!r} must be one path segment")
    return prefix.rstrip("/") + "/" + urllib.parse.quote(run, safe="")


def upload_folder(folder: str | Path, prefix: str, run: str, env: Mapping[str, str] | None = None) -> str:
    """Copy the artifact files of ``folder`` to ``PREFIX/<run>/``; returns the model's URI there."""
    env = os.environ if env is None else env
    folder = Path(folder)
    target = destination(prefix, run)
    files = [name for name in FILES if (folder / name).is_file()]
    if "model.skops" not in files:
        raise UploadError(f"{folder}: no model.skops to upload")
    parsed = urllib.parse.urlparse(target)
    scheme = parsed.scheme.lower()
    if scheme == "file":
        _copy_files(folder, Path(urllib.parse.unquote(parsed.path)), files)
    else:
        bucket, key_prefix = parsed.netloc, urllib.parse.unquote(parsed.path.lstrip("/"))
        client = store_client(scheme, env)
        if client is None:
            raise UploadError(f"{prefix}: uploading to gs:// needs HMAC keys (GCS_HMAC_ACCESS_KEY_ID / "
                              "GCS_HMAC_SECRET, or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)")
        _put_files(client, folder, bucket, key_prefix, files, target)
    return f"{target}/model.skops"


def _copy_files(folder: Path, dest: Path, files: list[str]) -> None:
    try:
        dest.mkdir(parents=True, exist_ok=True)
        for name in files:
            if (dest / name).exists():
                raise UploadError(f"{dest / name} already exists: not overwritten")
        for name in sorted(files, key=lambda f: f == "model.skops"):
            part = dest / f".{name}.part"
            shutil.copyfile(folder / name, part)
            os.replace(part, dest / name)
    except OSError as exc:
        raise UploadError(f"{dest}: {exc}") from exc


def _put_files(client, folder: Path, bucket: str, key_prefix: str, files: list[str], target: str) -> None:
    import boto3.exceptions
    import botocore.exceptions

    try:
        for name in files:
            key = f"{key_prefix}/{name}" if key_prefix else name
            try:
                client.head_object(Bucket=bucket, Key=key)
            except botocore.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                    raise
            else:
                raise UploadError(f"{target}/{name} already exists: not overwritten")
        # model.skops last: a reader that finds the model finds its metadata and profile too
        for name in sorted(files, key=lambda f: f == "model.skops"):
            key = f"{key_prefix}/{name}" if key_prefix else name
            client.upload_file(str(folder / name), bucket, key)
    except botocore.exceptions.ClientError as exc:
        err = exc.response.get("Error", {})
        raise UploadError(f"{target}: {err.get('Code', 'error')}: {err.get('Message', exc)}") from exc
    except (boto3.exceptions.Boto3Error, botocore.exceptions.BotoCoreError, FetchError, OSError) as exc:
        raise UploadError(f"{target}: {exc}") from exc
