"""`mlops drift` run as a real process: table, JSON, exit statuses, bad input without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

# Each case starts a real `mlops` process (pandas + scipy imports): ~3 s apiece.
pytestmark = pytest.mark.slow


def _mlops(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlops", "drift", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("drift-cli")
    rng = np.random.default_rng(11)

    def frame(n: int, shift: float = 0.0, probs=(0.5, 0.3, 0.2)) -> pd.DataFrame:
        return pd.DataFrame({
            "age": rng.normal(60 + shift * 10, 10, n),
            "score": rng.exponential(2.0, n),
            "site": rng.choice(["north", "south", "east"], n, p=list(probs)),
        })

    frame(800).to_csv(d / "reference.csv", index=False)
    frame(600).to_csv(d / "same.csv", index=False)
    frame(600, shift=0.5, probs=(0.2, 0.3, 0.5)).to_csv(d / "drifted.csv", index=False)
    frame(100).rename(columns={"score": "other"}).to_csv(d / "renamed.csv", index=False)
    (d / "binary.csv").write_bytes(bytes(range(256)) * 20)
    (d / "empty.csv").write_text("")
    (d / "notes.txt").write_text("Notes\nthis is prose, not a table of the same columns\n")
    return d


def test_same_distribution_exits_0_with_a_table(files):
    out = _mlops("reference.csv", "same.csv", cwd=files)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["column", "kind", "test", "statistic", "p_value", "adj_p", "threshold", "drift"]
    assert [ln.split()[0] for ln in lines[1:4]] == ["age", "score", "site"]
    assert "no drift: 0 of 3 columns drifted" in out.stdout


def test_drifted_data_exits_1_and_names_the_columns(files):
    out = _mlops("reference.csv", "drifted.csv", cwd=files)
    assert out.returncode == 1, out.stderr
    assert "DRIFT DETECTED: 2 of 3 columns drifted" in out.stdout
    assert "drifted: age, site" in out.stdout


def test_json_output(files):
    out = _mlops("reference.csv", "drifted.csv", "--json", cwd=files)
    assert out.returncode == 1
    report = json.loads(out.stdout)
    assert report["feature_drift_detected"] is True
    assert report["drifted_features"] == ["age", "site"]
    assert report["drift_score"] == pytest.approx(2 / 3)
    assert report["columns"]["score"]["test"] == "ks" and report["columns"]["site"]["test"] == "chisquare"


def test_a_saved_profile_can_be_the_reference(files, tmp_path):
    profile = tmp_path / "profile.json"
    assert _mlops("reference.csv", "same.csv", "--save-profile", str(profile), cwd=files).returncode == 0
    out = _mlops(str(profile), "drifted.csv", "--json", cwd=files)
    assert out.returncode == 1
    assert json.loads(out.stdout)["drifted_features"] == ["age", "site"]


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (("missing.csv", "same.csv"), "reference file not found: missing.csv"),
        (("reference.csv", "missing.csv"), "current file not found: missing.csv"),
        (("reference.csv", "binary.csv"), "current file is not a readable CSV: binary.csv"),
        (("reference.csv", "empty.csv"), "current file is not a readable CSV: empty.csv"),
        (("reference.csv", "notes.txt"), "columns do not match"),
        (("reference.csv", "renamed.csv"), "columns do not match (missing in current: score; not in reference: other)"),
        (("reference.csv", "same.csv", "--numeric-test", "chisquare"), "does not apply to numeric column"),
        (("reference.csv", "same.csv", "--alpha", "2"), "--alpha must be between 0 and 1"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_no_traceback(files, args, reason):
    out = _mlops(*args, cwd=files)
    assert out.returncode == 2
    assert out.stdout == ""
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mlops drift: error: ")
    assert reason in err[0]
    assert "Traceback" not in out.stderr


def test_report_writes_an_evidently_html_file(files, tmp_path):
    pytest.importorskip("evidently")
    report = tmp_path / "out" / "drift.html"
    out = _mlops("reference.csv", "drifted.csv", "--report", str(report), cwd=files)
    assert out.returncode == 1, out.stderr
    html = report.read_text()
    assert "<html" in html.lower() and "age" in html
    assert f"Evidently report: {report}" in out.stdout
