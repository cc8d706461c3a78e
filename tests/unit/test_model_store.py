"""Model store: artifacts are verified before loading, unsafe formats need a pin, and the feature
schema that travels with the model decides the column order on every path."""

from __future__ import annotations

import json

import joblib
import numpy as np
import pandas as pd
import pytest

from mlops.serving.model_store import (
    FeatureError,
    IntegrityError,
    ModelLoadError,
    UnsafeFormatError,
    deserialize,
    load_model,
    sha256_hex,
)
from mlops.serving.training import TrainingError, train


def _frame(n: int = 300, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    b = rng.normal(size=n)
    c = rng.normal(size=n)
    c[rng.random(n) < 0.2] = np.nan
    y = (2 * a - b > 0).astype(int)
    return pd.DataFrame({"b": b, "a": a, "c": c, "y": y})


@pytest.fixture()
def artifact(tmp_path):
    meta = train(_frame(), "y", tmp_path / "m", model_name="demo", version="v1", seed=0)
    return tmp_path / "m", meta


def test_train_writes_the_four_files_and_schema(artifact):
    folder, meta = artifact
    assert sorted(p.name for p in folder.iterdir()) == ["metadata.json", "model.sha256", "model.skops", "profile.json"]
    assert meta.sha256 == sha256_hex((folder / "model.skops").read_bytes())
    assert (folder / "model.sha256").read_text().split()[0] == meta.sha256
    assert meta.feature_schema.names == ["b", "a", "c"]
    assert meta.feature_schema.required == ["b", "a"]  # c has missing values: optional
    assert 0.8 < meta.metrics["accuracy"] <= 1.0
    assert json.loads((folder / "profile.json").read_text())


def test_load_verifies_and_orders_features_by_schema(artifact):
    folder, meta = artifact
    model = load_model((folder / "model.skops").as_uri(), sha256=meta.sha256)
    assert model.version == "v1"
    # The dict order of the request does not matter: rows follow the schema.
    assert model.row({"a": 1.0, "b": 2.0}) == [2.0, 1.0, pytest.approx(float("nan"), nan_ok=True)]
    labels, confidence = model.predict([model.row({"a": 2.0, "b": -2.0}), model.row({"a": -2.0, "b": 2.0, "c": 0.1})])
    assert labels == [1, 0]
    assert all(0.5 <= p <= 1.0 for p in confidence)


def test_sha256_mismatch_refused_before_loading(artifact):
    folder, _ = artifact
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        load_model(str(folder / "model.skops"), sha256="0" * 64)


def test_tampered_artifact_refused_against_metadata_digest(artifact, tmp_path):
    folder, _ = artifact
    data = bytearray((folder / "model.skops").read_bytes())
    data[-10] ^= 0xFF
    (folder / "model.skops").write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        load_model(str(folder / "model.skops"))


def test_joblib_only_when_pinned(tmp_path):
    from sklearn.linear_model import LogisticRegression

    x = np.random.default_rng(0).normal(size=(50, 2))
    model = LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))
    path = tmp_path / "model.joblib"
    joblib.dump(model, path)
    digest = sha256_hex(path.read_bytes())
    with pytest.raises(ModelLoadError, match="pinned"):
        load_model(str(path), fmt="joblib")
    # Reproduced: a joblib artifact with a self-computed sha256 ran arbitrary code. Now pickle needs
    # the server's explicit --allow-unsafe-formats, and still a pin.
    with pytest.raises(UnsafeFormatError, match="--allow-unsafe-formats"):
        load_model(str(path), fmt="joblib", sha256=digest)
    with pytest.raises(ModelLoadError, match="pinned"):
        deserialize(path.read_bytes(), "joblib", sha256_pinned=False, allow_unsafe=True)
    loaded = load_model(str(path), fmt="joblib", sha256=digest, version="j1", allow_unsafe=True)
    assert loaded.names == ["x0", "x1"] and loaded.version == "j1"


def test_skops_trusted_types_match_by_exact_name(tmp_path):
    """Reproduced: trusted types matched by prefix, so FunctionTransformer(func=exec) loaded."""
    import skops.io as sio
    from sklearn.preprocessing import FunctionTransformer

    path = tmp_path / "model.skops"
    sio.dump(FunctionTransformer(func=exec, inverse_func=eval), path)
    with pytest.raises(ModelLoadError, match="builtins.exec"):
        load_model(str(path), sha256=sha256_hex(path.read_bytes()))


def test_pin_covers_the_feature_schema(artifact):
    """Reproduced: swapping two columns in metadata.json loaded silently and flipped predictions."""
    folder, meta = artifact
    original = load_model(str(folder / "model.skops"), sha256=meta.sha256)
    doc = json.loads((folder / "metadata.json").read_text())
    features = doc["feature_schema"]["features"]
    features[0], features[1] = features[1], features[0]
    (folder / "metadata.json").write_text(json.dumps(doc))
    with pytest.raises(IntegrityError, match="does not match the schema inside"):
        load_model(str(folder / "model.skops"), sha256=meta.sha256)
    (folder / "metadata.json").unlink()  # without metadata.json the embedded schema is used as is
    assert load_model(str(folder / "model.skops"), sha256=meta.sha256).names == original.names


def test_unpinned_load_needs_what_the_trainer_wrote(artifact, tmp_path):
    """Reproduced: a replaced model with a rewritten sha in metadata.json loaded silently."""
    import shutil

    folder, meta = artifact
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    attacker = tmp_path / "attacker"
    from mlops.serving.training import train

    rng = np.random.default_rng(9)
    train(pd.DataFrame({"a": rng.normal(size=50), "b": rng.normal(size=50), "y": rng.integers(0, 2, 50)}), "y",
          attacker)
    shutil.copy(attacker / "model.skops", other / "model.skops")
    doc = json.loads((other / "metadata.json").read_text())
    doc["sha256"] = sha256_hex((other / "model.skops").read_bytes())
    (other / "metadata.json").write_text(json.dumps(doc))
    with pytest.raises(IntegrityError, match="disagree"):
        load_model(str(other / "model.skops"))
    (other / "model.sha256").unlink()
    with pytest.raises(ModelLoadError, match="no sha256 pinned"):
        load_model(str(other / "model.skops"))


def test_skops_refuses_untrusted_types(tmp_path):
    import skops.io as sio

    path = tmp_path / "model.skops"
    sio.dump({"payload": pd.Timestamp("2020-01-01")}, path)
    with pytest.raises(ModelLoadError):
        load_model(str(path))


def test_missing_file_and_bad_scheme_are_load_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="cannot read"):
        load_model(str(tmp_path / "nope.skops"), sha256="0" * 64)
    with pytest.raises(ModelLoadError, match="scheme"):
        load_model("s3://bucket/model.skops", sha256="0" * 64)


def test_feature_errors_name_the_feature(artifact):
    folder, _ = artifact
    model = load_model(str(folder / "model.skops"))
    with pytest.raises(FeatureError) as missing:
        model.row({"a": 1.0})
    assert missing.value.field == "b"
    with pytest.raises(FeatureError) as unknown:
        model.row({"a": 1.0, "b": 1.0, "zzz": 1.0})
    assert unknown.value.field == "zzz"
    with pytest.raises(FeatureError) as wrong:
        model.row({"a": "high", "b": 1.0})
    assert wrong.value.field == "a"
    with pytest.raises(FeatureError):
        model.row({"a": True, "b": 1.0})


def test_categorical_features_round_trip(tmp_path):
    frame = _frame()
    frame["site"] = np.where(frame["a"] > 0, "north", "south")
    meta = train(frame, "y", tmp_path / "cat", seed=0)
    spec = {f.name: f for f in meta.feature_schema.features}
    assert spec["site"].type == "category" and spec["site"].categories == ["north", "south"]
    model = load_model(str(tmp_path / "cat" / "model.skops"))
    labels, _ = model.predict([model.row({"a": 1.0, "b": -1.0, "site": "north"})])
    assert labels == [1]


def test_training_input_errors(tmp_path):
    with pytest.raises(TrainingError, match="label column"):
        train(_frame(), "nope", tmp_path / "x")
    one_class = _frame().assign(y=1)
    with pytest.raises(TrainingError, match="two classes"):
        train(one_class, "y", tmp_path / "x")
