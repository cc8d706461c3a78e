"""The quick-start demo behind ``make run``: two model versions on generated OASIS-style data.

Why it exists: every curl example of the guide must work on a fresh clone with no data and no
cluster. This module generates a deterministic OASIS-like table (``M/F, Age, EDUC, SES, MMSE, CDR,
eTIV, nWBV, ASF`` and a binary ``Demented`` label), trains ``v1.0.0`` (on 300 rows) and
``v2.0.0`` (on 1,500 rows), both on all nine features, with ``mlops.serving.training``, writes a baseline
CSV for ``setup_baseline_monitoring``, and returns what the server needs to load them with the
guide's experiment ``alzheimer_model_v2_test`` (split 0.3) between them.

``SES, CDR, eTIV, nWBV, ASF`` are optional (the guide's batch example omits them): the models'
pipelines impute them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

FEATURES = ["M/F", "Age", "EDUC", "SES", "MMSE", "CDR", "eTIV", "nWBV", "ASF"]
REQUIRED = ["M/F", "Age", "EDUC", "MMSE"]
LABEL = "Demented"
MODEL_NAME = "alzheimer_classifier"
EXPERIMENT = "alzheimer_model_v2_test"
VERSIONS = ("v1.0.0", "v2.0.0")


def generate_oasis_like(n: int = 2000, seed: int = 42) -> pd.DataFrame:
    """A deterministic table shaped like the OASIS longitudinal data, with about 10% missing SES."""
    rng = np.random.default_rng(seed)
    demented = rng.random(n) < 0.4
    sex = rng.integers(0, 2, n)
    age = np.clip(rng.normal(76, 7.5, n) + 2 * demented, 60, 98).round()
    educ = np.clip(rng.normal(14.5, 2.8, n) - 1.2 * demented, 6, 23).round()
    ses = np.clip(rng.normal(2.4, 1.1, n) + 0.4 * demented, 1, 5).round()
    ses[rng.random(n) < 0.1] = np.nan
    mmse = np.clip(rng.normal(28.8, 1.3, n) - rng.gamma(2.0, 2.2, n) * demented, 4, 30).round()
    cdr = np.where(demented, rng.choice([0.0, 0.5, 1.0, 2.0], n, p=[0.15, 0.6, 0.2, 0.05]),
                   rng.choice([0.0, 0.5], n, p=[0.93, 0.07]))
    etiv = rng.normal(1490, 175, n).round() + 60 * (1 - sex)
    nwbv = np.clip(rng.normal(0.745, 0.035, n) - 0.018 * demented - 0.002 * (age - 76), 0.62, 0.84).round(3)
    asf = (1755.0 / etiv).round(3)
    return pd.DataFrame(
        {"M/F": sex, "Age": age, "EDUC": educ, "SES": ses, "MMSE": mmse, "CDR": cdr,
         "eTIV": etiv, "nWBV": nwbv, "ASF": asf, LABEL: demented.astype(int)}
    )


@dataclass(frozen=True)
class DemoArtifacts:
    folder: Path
    model_uris: dict[str, str]
    baseline_csv: Path
    experiment: str = EXPERIMENT
    model_name: str = MODEL_NAME


def build_demo(folder: str | Path, seed: int = 42) -> DemoArtifacts:
    """Train both demo versions into ``folder`` (idempotent: same seed, same files)."""
    from mlops.serving.training import train

    folder = Path(folder)
    frame = generate_oasis_like(seed=seed)
    train_part, baseline = frame.iloc[:1500], frame.iloc[1500:]
    uris = {}
    for version in VERSIONS:
        out = folder / version
        # v1.0.0 is the older model: trained on the first 300 rows only.
        rows = train_part if version == "v2.0.0" else train_part.iloc[:300]
        train(rows, LABEL, out, model_name=MODEL_NAME, version=version,
              features=FEATURES, required=REQUIRED, seed=seed)
        uris[version] = (out / "model.skops").resolve().as_uri()
    baseline_csv = folder / "baseline_features.csv"
    baseline.to_csv(baseline_csv, index=False)
    return DemoArtifacts(folder=folder, model_uris=uris, baseline_csv=baseline_csv)


PREBUILT_ENV = "MLOPS_DEMO_MODELS"


def prebuilt_or_build(folder: str | Path) -> DemoArtifacts:
    """The demo artifacts from ``$MLOPS_DEMO_MODELS`` when it holds a complete set (the container
    image trains them at build time, so ``serve --demo`` starts on a read-only root filesystem without
    training), else ``build_demo(folder)``."""
    import os

    prebuilt = os.environ.get(PREBUILT_ENV)
    if prebuilt:
        root = Path(prebuilt)
        files = [root / v / "model.skops" for v in VERSIONS] + [root / "baseline_features.csv"]
        if all(f.is_file() for f in files):
            return DemoArtifacts(folder=root, model_uris={v: (root / v / "model.skops").resolve().as_uri()
                                                          for v in VERSIONS},
                                 baseline_csv=root / "baseline_features.csv")
        raise FileNotFoundError(f"${PREBUILT_ENV}={prebuilt} lacks the demo artifacts "
                                f"({', '.join(str(f) for f in files if not f.is_file())})")
    return build_demo(folder)


def quickstart_manifest(artifacts: DemoArtifacts, name: str = "quickstart") -> dict:
    """``examples/00-quickstart``'s ModelDeployment for these artifacts: both versions by ``file://`` URI
    with their real sha256. The image writes it next to its prebuilt models
    (``/opt/mlops/demo-models/quickstart.yaml``), because the digests are only known once built."""
    import hashlib

    versions = []
    for version in VERSIONS:
        path = Path(artifacts.model_uris[version].removeprefix("file://"))
        versions.append({"name": version.split(".")[0], "replicas": 1,
                         "artifact": {"uri": artifacts.model_uris[version],
                                      "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "format": "skops"}})
    return {
        "apiVersion": "mlops.duetmind.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {"modelName": "alzheimer", "stableVersion": versions[0]["name"], "versions": versions,
                 "monitoring": {"collectIntervalSeconds": 10}},
    }
