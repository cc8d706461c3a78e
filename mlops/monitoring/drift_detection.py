"""The user-facing drift API: a :class:`DriftMonitor` holds a reference (raw frame or baseline
profile) and the test settings, and checks batches against it.

Why it exists: callers (``ProductionMonitor.drift_monitor``, the model server, notebooks) want one
object configured once rather than passing the same reference and options to every
:func:`mlops.core.drift.detect_drift` call. The statistics live in ``mlops.core``; this module adds
no I/O except the optional Evidently report, which is imported only when asked for.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from mlops.core.drift import (
    CORRECTIONS,
    DRIFT_TESTS,
    ColumnDrift,
    DriftReport,
    DriftTest,
    concept_drift_detected,
    detect_drift,
    detect_drift_from_counts,
    register_drift_test,
)
from mlops.core.profile import BaselineProfile, add_counts, build_profile, merge_profiles
from mlops.core.quality import DataQualityReport, assess_data_quality, missing_value_rate

__all__ = [
    "DRIFT_TESTS", "BaselineProfile", "ColumnDrift", "DataQualityReport", "DriftMonitor", "DriftReport",
    "DriftTest", "add_counts", "assess_data_quality", "build_profile", "concept_drift_detected",
    "detect_drift", "detect_drift_from_counts", "load_profile", "merge_profiles", "missing_value_rate",
    "register_drift_test", "save_profile",
]


class DriftMonitor:
    """Checks batches for data drift against a reference.

    ``reference`` is a DataFrame (raw values are kept, so ``ks``/``wasserstein`` run exactly), a
    :class:`BaselineProfile`, or a profile's ``to_dict()`` (tests run on the profile's bins).
    ``tests`` maps column names to test names (see :data:`DRIFT_TESTS`); other columns use
    ``numeric_test`` / ``categorical_test``. ``thresholds`` maps columns to distance thresholds.
    """

    def __init__(
        self,
        reference: pd.DataFrame | BaselineProfile | Mapping[str, Any],
        *,
        alpha: float = 0.05,
        numeric_test: str = "ks",
        categorical_test: str = "chisquare",
        correction: str = "holm",
        tests: Mapping[str, str] | None = None,
        thresholds: Mapping[str, float] | None = None,
        categorical_columns: list[str] | None = None,
        n_bins: int = 10,
    ) -> None:
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        if correction not in CORRECTIONS:
            raise ValueError(f"correction must be one of {CORRECTIONS}, got {correction!r}")
        if isinstance(reference, pd.DataFrame):
            if reference.empty:
                raise ValueError("reference data is empty")
            self.reference_data: pd.DataFrame | None = reference.copy()
            self.profile = build_profile(reference, n_bins=n_bins, categorical_columns=categorical_columns)
            # Every category of the reference, for the count-based tests on raw data.
            self._test_profile = build_profile(reference, n_bins=n_bins, categorical_columns=categorical_columns,
                                               max_categories=len(reference))
        elif isinstance(reference, BaselineProfile):
            self.reference_data, self.profile = None, reference
            self._test_profile = reference
        elif isinstance(reference, Mapping):
            self.reference_data, self.profile = None, BaselineProfile.from_dict(reference)
            self._test_profile = self.profile
        else:
            raise TypeError(f"reference must be a DataFrame or a BaselineProfile, not {type(reference).__name__}")
        self.alpha = alpha
        self.numeric_test = numeric_test
        self.categorical_test = categorical_test
        self.correction = correction
        self.tests = dict(tests or {})
        self.thresholds = dict(thresholds or {})
        self.categorical_columns = list(categorical_columns or self.profile.categorical_columns)
        self.n_bins = n_bins
        # Fail now, not on the first batch, if a test does not fit a column.
        detect_drift_from_counts(self.profile, {}, **self._options())

    @property
    def feature_names(self) -> list[str]:
        return list(self.profile.columns)

    def _options(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "numeric_test": self.numeric_test, "categorical_test": self.categorical_test,
                "correction": self.correction, "tests": self.tests, "thresholds": self.thresholds}

    def check(self, current: pd.DataFrame) -> DriftReport:
        """Drift of ``current`` against the reference (columns the reference lacks are ignored)."""
        reference = self.reference_data if self.reference_data is not None else self.profile
        return detect_drift(reference, current, categorical_columns=self.categorical_columns, n_bins=self.n_bins,
                            reference_profile=self._test_profile, **self._options())

    def check_counts(self, current_counts: Mapping[str, list[int]]) -> DriftReport:
        """Drift of counts taken on the profile's bins (``profile.bin_counts``), e.g. summed over replicas."""
        return detect_drift_from_counts(self.profile, current_counts, **self._options())

    def quality(self, current: pd.DataFrame) -> DataQualityReport:
        return assess_data_quality(self.profile, current)

    def evidently_report(self, current: pd.DataFrame, path: str | Path) -> Path:
        """Write Evidently's data drift report (HTML, or JSON if ``path`` ends in .json).

        Needs the raw reference data and the optional ``evidently`` package (``pip install
        'mlops-operator[reports]'``).
        """
        if self.reference_data is None:
            raise ValueError("an Evidently report needs the raw reference data, not only a profile")
        from mlops.monitoring.evidently_report import write_drift_report

        return write_drift_report(self.reference_data, current, path, categorical_columns=self.categorical_columns)


def save_profile(profile: BaselineProfile, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(profile.to_dict(), indent=1))
    return path


def load_profile(path: str | Path) -> BaselineProfile:
    return BaselineProfile.from_dict(json.loads(Path(path).read_text()))
