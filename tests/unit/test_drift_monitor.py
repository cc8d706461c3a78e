"""The DriftMonitor facade: configured once, checks frames or counts, no Evidently import."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from mlops.monitoring.drift_detection import DriftMonitor, load_profile, save_profile


@pytest.fixture
def reference() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"a": rng.normal(size=2000), "b": rng.normal(size=2000),
                         "c": rng.choice(["x", "y", "z"], 2000)})


def _current(shift: float, n: int = 1000, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"a": rng.normal(shift, 1, n), "b": rng.normal(size=n), "c": rng.choice(["x", "y", "z"], n)})


def test_frame_profile_and_dict_references_agree_on_the_decision(reference, tmp_path):
    by_frame = DriftMonitor(reference)
    path = save_profile(by_frame.profile, tmp_path / "profile.json")
    by_profile = DriftMonitor(load_profile(path))
    by_dict = DriftMonitor(json.loads(path.read_text()))
    for monitor in (by_frame, by_profile, by_dict):
        assert monitor.feature_names == ["a", "b", "c"]
        assert monitor.check(_current(0.0)).feature_drift_detected is False
        assert monitor.check(_current(0.5)).drifted_features == ["a"]


def test_check_counts_sums_replicas(reference):
    monitor = DriftMonitor(reference)
    cur = _current(0.5)
    counts = {k: [x + y for x, y in zip(v, w, strict=True)]
              for (k, v), w in zip(monitor.profile.bin_counts(cur.iloc[:400]).items(),
                                   monitor.profile.bin_counts(cur.iloc[400:]).values(), strict=True)}
    assert monitor.check_counts(counts).drifted_features == ["a"]


def test_options_are_validated_up_front(reference):
    with pytest.raises(ValueError, match="does not apply"):
        DriftMonitor(reference, categorical_test="ks")
    with pytest.raises(ValueError, match="alpha"):
        DriftMonitor(reference, alpha=0)
    with pytest.raises(ValueError, match="correction"):
        DriftMonitor(reference, correction="bh")
    with pytest.raises(ValueError, match="empty"):
        DriftMonitor(reference.iloc[:0])


def test_per_column_tests_and_thresholds(reference):
    monitor = DriftMonitor(reference, tests={"a": "psi", "c": "jensenshannon"}, thresholds={"a": 0.05})
    report = monitor.check(_current(0.5))
    assert report.columns["a"].test == "psi" and report.columns["a"].threshold == 0.05
    assert report.columns["b"].test == "ks" and report.columns["c"].test == "jensenshannon"
    assert report.drifted_features == ["a"]


def test_quality_uses_the_reference_profile(reference):
    monitor = DriftMonitor(reference)
    bad = _current(0.0, n=100)
    bad.loc[:9, "b"] = np.nan
    assert monitor.quality(bad).missing_rate == pytest.approx(10 / 300)


def test_importing_the_facade_does_not_import_evidently():
    code = "import sys, mlops.monitoring.drift_detection, mlops.core.drift; print('evidently' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
