"""`mlops ab analyze`: text and JSON verdicts, CSV input, exit 2 with one line on bad input."""

from __future__ import annotations

import json

import pytest

from mlops.cli import main

COUNTS = ["--control-success", "850", "--control-total", "1000", "--treatment-success", "900",
          "--treatment-total", "1000"]


def test_text_verdict(capsys):
    assert main(["ab", "analyze", *COUNTS]) == 0
    out = capsys.readouterr().out
    assert "verdict:        winner (model_b)" in out
    assert "always-valid:" in out and "fixed-horizon:" in out


def test_json_verdict_matches_the_core(capsys):
    from mlops.core.ab_stats import decide

    assert main(["ab", "analyze", *COUNTS, "--alpha", "0.01", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data == json.loads(json.dumps(decide(850, 1000, 900, 1000, alpha=0.01).to_dict()))


def test_srm_is_reported_without_winner(capsys):
    args = ["ab", "analyze", "--control-success", "3825", "--control-total", "4500",
            "--treatment-success", "5225", "--treatment-total", "5500", "--json"]
    assert main(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["srm"]["mismatch"] is True and data["winner"] is None


def test_csv_input(tmp_path, capsys):
    rows = ["variant,outcome"] + ["A,1"] * 85 + ["A,0"] * 15 + ["treatment,true"] * 90 + ["B,false"] * 10
    path = tmp_path / "outcomes.csv"
    path.write_text("\n".join(rows) + "\n")
    assert main(["ab", "analyze", "--csv", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["fixed_horizon"]["n_a"] == 100 and data["fixed_horizon"]["rate_b"] == 0.9


@pytest.mark.parametrize(
    "argv, reason",
    [
        (["--control-total", "10"], "need --control-success"),
        (["--control-success", "11", "--control-total", "10", "--treatment-success", "1", "--treatment-total", "2"],
         "exceed"),
        ([*COUNTS, "--alpha", "2"], "--alpha"),
        (["--csv", "/definitely/not/here.csv"], "cannot read"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, reason, capsys):
    assert main(["ab", "analyze", *argv]) == 2
    err = capsys.readouterr().err
    assert reason in err and err.count("\n") == 1 and "Traceback" not in err


def test_bad_csv_rows(tmp_path, capsys):
    path = tmp_path / "bad.csv"
    path.write_text("variant,outcome\nA,maybe\n")
    assert main(["ab", "analyze", "--csv", str(path)]) == 2
    assert "bad.csv:2" in capsys.readouterr().err
