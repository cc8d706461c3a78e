"""Train a model from a CSV and write a servable artifact folder (``mlops train``).

Why it exists: the server, the sidecar and the retraining Job all need the same four files for a
model version, produced the same way: ``model.skops`` (safe format), ``model.sha256`` (pin),
``metadata.json`` (feature schema in column order with types and requiredness, label classes,
holdout metrics) and ``profile.json`` (the baseline profile the sidecar bins on and drift is
measured against). This is also the retraining Job's default command.

The model is a scikit-learn pipeline fitted on a plain numpy array in schema order (so serving
builds rows without a DataFrame): a median imputer (optional features may be omitted at request
time), scaling, one-hot encoding for text columns, then LogisticRegression (default) or a random
forest. A feature is optional when listed in ``optional``, or, by default, when the training data
has missing values in it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from mlops.serving.model_store import FeatureSchema, FeatureSpec, ModelMetadata, embed_metadata, sha256_hex

Algorithm = Literal["logistic", "forest"]


class TrainingError(ValueError):
    """Bad training input (missing label column, no usable features, one class only...)."""


def feature_schema_for(
    frame: pd.DataFrame, features: Sequence[str], required: Sequence[str] | None, optional: Sequence[str] | None
) -> FeatureSchema:
    specs = []
    for name in features:
        column = frame[name]
        numeric = pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)
        if required is not None:
            is_required = name in required
        elif optional is not None:
            is_required = name not in optional
        else:
            is_required = not column.isna().any()
        categories = None if numeric else sorted(str(v) for v in column.dropna().unique())
        specs.append(
            FeatureSpec(name=name, type="number" if numeric else "category", required=is_required, categories=categories)
        )
    return FeatureSchema(features=specs)


def build_pipeline(schema: FeatureSchema, algorithm: Algorithm = "logistic", seed: int = 0) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric = [i for i, f in enumerate(schema.features) if f.type == "number"]
    categorical = [i for i, f in enumerate(schema.features) if f.type == "category"]
    if algorithm == "logistic":
        estimator = LogisticRegression(max_iter=1000)
    elif algorithm == "forest":
        estimator = RandomForestClassifier(n_estimators=100, random_state=seed, n_jobs=1)
    else:
        raise TrainingError(f"unknown algorithm {algorithm!r} (logistic or forest)")
    if not categorical:
        return make_pipeline(SimpleImputer(strategy="median"), StandardScaler(), estimator)
    pre = ColumnTransformer(
        [
            ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
            (
                "cat",
                make_pipeline(
                    SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")
                ),
                categorical,
            ),
        ]
    )
    return Pipeline([("pre", pre), ("model", estimator)])


def _matrix(frame: pd.DataFrame, schema: FeatureSchema) -> np.ndarray:
    if any(f.type == "category" for f in schema.features):
        cols = []
        for f in schema.features:
            col = frame[f.name]
            cols.append(col.astype(object).where(col.notna(), np.nan) if f.type == "category" else col.astype(float))
        out = pd.concat(cols, axis=1).to_numpy(dtype=object)
        for j, f in enumerate(schema.features):
            if f.type == "category":
                out[:, j] = [np.nan if isinstance(v, float) and np.isnan(v) else str(v) for v in out[:, j]]
        return out
    return frame[schema.names].to_numpy(dtype=np.float64)


def train(
    frame: pd.DataFrame,
    label: str,
    out_dir: str | Path,
    *,
    model_name: str = "model",
    version: str = "v1",
    features: Sequence[str] | None = None,
    required: Sequence[str] | None = None,
    optional: Sequence[str] | None = None,
    algorithm: Algorithm = "logistic",
    seed: int = 0,
    test_size: float = 0.2,
    clock: Callable[[], float] = time.time,
) -> ModelMetadata:
    """Fit, evaluate on a seeded holdout, refit on everything, write the artifact folder."""
    import skops.io as sio
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import train_test_split

    if label not in frame.columns:
        raise TrainingError(f"label column {label!r} not in the data (columns: {', '.join(map(str, frame.columns))})")
    frame = frame[frame[label].notna()]
    feature_names = list(features) if features else [c for c in frame.columns if c != label]
    unknown = [f for f in feature_names if f not in frame.columns]
    if unknown:
        raise TrainingError(f"feature column(s) not in the data: {', '.join(unknown)}")
    for name in list(required or []) + list(optional or []):
        if name not in feature_names:
            raise TrainingError(f"feature {name!r} is not one of the model's features")
    if not feature_names:
        raise TrainingError("no feature columns")
    y = frame[label].to_numpy()
    if len(np.unique(y)) < 2:
        raise TrainingError(f"label column {label!r} has fewer than two classes")
    schema = feature_schema_for(frame, feature_names, required, optional)
    x = _matrix(frame, schema)

    stratify = y if min(np.unique(y, return_counts=True)[1]) >= 2 else None
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_size, random_state=seed, stratify=stratify
    )
    holdout = build_pipeline(schema, algorithm, seed).fit(x_train, y_train)
    predicted = holdout.predict(x_test)
    metrics = {
        "accuracy": float(accuracy_score(y_test, predicted)),
        "f1_weighted": float(f1_score(y_test, predicted, average="weighted")),
        "n_train": float(len(y_train)),
        "n_test": float(len(y_test)),
    }
    model = build_pipeline(schema, algorithm, seed).fit(x, y)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    classes = [c.item() if hasattr(c, "item") else c for c in model.classes_]
    # The schema travels inside the model file, so the sha256 users pin covers it (model_store).
    data = sio.dumps(embed_metadata(model, ModelMetadata(feature_schema=schema, classes=classes, label=label)))
    digest = sha256_hex(data)
    (out / "model.skops").write_bytes(data)
    (out / "model.sha256").write_text(f"{digest}  model.skops\n")
    metadata = ModelMetadata(
        model_name=model_name,
        version=version,
        format="skops",
        sha256=digest,
        label=label,
        classes=classes,
        feature_schema=schema,
        metrics=metrics,
        trained_at=clock(),
        algorithm=algorithm,
        baseline_accuracy=metrics["accuracy"],
    )
    (out / "metadata.json").write_text(metadata.model_dump_json(indent=2) + "\n")
    try:
        from mlops.core.profile import build_profile
    except ImportError:  # the drift engine is optional for serving; without it no profile is written
        build_profile = None
    if build_profile is not None:
        profile = build_profile(frame[feature_names])
        (out / "profile.json").write_text(json.dumps(profile.to_dict(), indent=2, default=float) + "\n")
    return metadata
