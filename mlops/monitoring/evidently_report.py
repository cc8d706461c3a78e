"""Evidently data drift reports (HTML or JSON) and Evidently's per-column verdicts.

Why it exists: Evidently draws reports people like to share, and it is the reference to compare our
decisions with. It is heavy (about 4 s and 285 MB to import) and optional (``pip install
'mlops-operator[reports]'``), so it is imported only inside these functions, never at module import,
and only this module imports it. Written for Evidently's 0.7 API.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mlops.core.profile import CATEGORICAL, category_strings, infer_kind


class EvidentlyUnavailable(RuntimeError):
    """Evidently is not installed (it is the optional ``reports`` extra)."""


@dataclass
class EvidentlyColumn:
    column: str
    method: str
    threshold: float | None
    score: float | None  # p-value for tests, distance for distances (Evidently's "drift score")
    drifted: bool


@dataclass
class EvidentlyDrift:
    columns: dict[str, EvidentlyColumn]
    snapshot: Any = field(repr=False)  # evidently's Snapshot: .save_html(path), .json()

    @property
    def drifted_features(self) -> list[str]:
        return [name for name, c in self.columns.items() if c.drifted]


def _import_evidently():
    try:
        from evidently import DataDefinition, Dataset, Report
        from evidently.presets import DataDriftPreset
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise EvidentlyUnavailable(
            "Evidently is not installed: pip install 'mlops-operator[reports]' (evidently>=0.7.20,<0.8)"
        ) from exc
    return DataDefinition, Dataset, Report, DataDriftPreset


def run_evidently_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    categorical_columns: list[str] | None = None,
    num_method: str | None = None,
    cat_method: str | None = None,
    num_threshold: float | None = None,
    cat_threshold: float | None = None,
) -> EvidentlyDrift:
    """Run Evidently's ``DataDriftPreset`` on the reference's columns; ``None`` keeps Evidently's defaults.

    Column kinds follow :func:`mlops.core.profile.infer_kind` unless ``categorical_columns`` is given,
    so Evidently and :func:`mlops.core.drift.detect_drift` see the same kinds.
    """
    DataDefinition, Dataset, Report, DataDriftPreset = _import_evidently()
    columns = [str(c) for c in reference.columns]
    forced = set(categorical_columns or [])
    categorical = [c for c in columns if c in forced or infer_kind(reference[c]) == CATEGORICAL]
    numeric = [c for c in columns if c not in categorical]
    reference, current = reference[columns].copy(), current[columns].copy()
    for frame in (reference, current):
        for c in categorical:
            # Evidently needs comparable values on both sides: the category labels our profiles use.
            labels = pd.Series(None, index=frame.index, dtype=object)
            labels.loc[frame[c].notna()] = category_strings(frame[c]).to_numpy()
            frame[c] = labels
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    preset = DataDriftPreset(columns=columns, num_method=num_method, cat_method=cat_method,
                             num_threshold=num_threshold, cat_threshold=cat_threshold)
    snapshot = Report([preset], include_tests=True).run(
        current_data=Dataset.from_pandas(current, data_definition=definition),
        reference_data=Dataset.from_pandas(reference, data_definition=definition),
    )
    return EvidentlyDrift(columns=_column_verdicts(snapshot.dict()), snapshot=snapshot)


def _column_verdicts(snapshot: dict[str, Any]) -> dict[str, EvidentlyColumn]:
    """Per-column results: ``ValueDrift`` metrics give method, threshold and score; their tests the verdict."""
    by_metric: dict[str, EvidentlyColumn] = {}
    for metric in snapshot.get("metrics", []):
        config = metric.get("config", {})
        if not str(config.get("type", "")).endswith(":ValueDrift"):
            continue
        value = metric.get("value")
        by_metric[metric["id"]] = EvidentlyColumn(
            column=str(config["column"]), method=str(config.get("method")), threshold=config.get("threshold"),
            score=None if value is None else float(value), drifted=False,
        )
    for test in snapshot.get("tests", []):
        metric_id = test.get("metric_config", {}).get("metric_id")
        if metric_id in by_metric:
            by_metric[metric_id].drifted = test.get("status") == "FAIL"
    return {c.column: c for c in by_metric.values()}


def write_drift_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    path: str | Path,
    *,
    categorical_columns: list[str] | None = None,
    **methods: Any,
) -> Path:
    """Write Evidently's data drift report to ``path``: JSON if it ends in ``.json``, else HTML."""
    path = Path(path)
    result = run_evidently_drift(reference, current, categorical_columns=categorical_columns, **methods)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".json":
        result.snapshot.save_json(str(path))
    else:
        result.snapshot.save_html(str(path))
    return path
