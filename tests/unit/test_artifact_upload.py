"""`mlops train --upload-to`: where the folder goes, what is refused, nothing overwritten (file:// store)."""

from __future__ import annotations

import hashlib

import pytest

from mlops.serving.artifact_fetch import fetch
from mlops.serving.artifact_upload import UploadError, destination, upload_folder


def _folder(tmp_path, body: bytes = b"model"):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "model.skops").write_bytes(body)
    (folder / "metadata.json").write_text("{}")
    return folder


@pytest.mark.parametrize("prefix, run, why", [
    ("http://host/x", "r1", "unsupported scheme"),
    ("s3:///no-bucket", "r1", "expected s3://<bucket>"),
    ("file://host/x", "r1", "expected file:///"),
    ("file:///x", "a/b", "one path segment"),
    ("file:///x", "..", "one path segment"),
])
def test_unusable_destinations_are_refused(prefix, run, why):
    with pytest.raises(UploadError, match=why):
        destination(prefix, run)


def test_folder_is_published_under_the_run_and_fetch_verifies_it(tmp_path):
    folder = _folder(tmp_path, b"trained bytes")
    store = tmp_path / "store"
    uri = upload_folder(folder, store.as_uri() + "/", "alz-retrain-r1")
    assert uri == f"{store.as_uri()}/alz-retrain-r1/model.skops"
    assert sorted(p.name for p in (store / "alz-retrain-r1").iterdir()) == ["metadata.json", "model.skops"]
    got = fetch(uri, hashlib.sha256(b"trained bytes").hexdigest(), str(tmp_path / "pod-model"))
    assert got == hashlib.sha256(b"trained bytes").hexdigest()


def test_an_existing_artifact_is_never_overwritten(tmp_path):
    store = tmp_path / "store"
    upload_folder(_folder(tmp_path, b"first"), store.as_uri(), "r1")
    other = tmp_path / "other"
    other.mkdir()
    (other / "model.skops").write_bytes(b"second")
    with pytest.raises(UploadError, match="already exists: not overwritten"):
        upload_folder(other, store.as_uri(), "r1")
    assert (store / "r1" / "model.skops").read_bytes() == b"first"


def test_a_folder_without_a_model_is_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UploadError, match="no model.skops"):
        upload_folder(empty, (tmp_path / "store").as_uri(), "r1")
