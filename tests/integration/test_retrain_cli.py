"""`mlops retrain ...` run as a real process against state written by a trigger in this process."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest

from mlops.monitoring.data_trigger import create_data_trigger
from mlops.store.retrain_store import RetrainStore

pytestmark = pytest.mark.integration


def mlops(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlops", "retrain", *args], capture_output=True, text=True,
                          timeout=120, env=os.environ.copy())


class Monitor:
    baseline_metrics = {"accuracy": 0.9}

    def get_monitoring_summary(self, hours=24):
        # the accuracy trigger is an exact test: it needs the number of labelled predictions
        return {"total_predictions": 5000, "labelled_predictions": 1000, "avg_accuracy": 0.7, "avg_error_rate": 0.0,
                "avg_drift_score": 0.0, "avg_data_quality": 1.0}


def test_status_history_approve_reject_force_and_verify(tmp_path):
    marker = tmp_path / "trained.txt"
    command = [sys.executable, "-c",
               f"import os; open({str(marker)!r}, 'a').write(os.environ['MLOPS_TRIGGER_TYPE'] + '\\n')"]
    trigger = create_data_trigger("cli-model", {"require_manual_approval": True, "retrain_command": command,
                                                "min_hours_between_retrains": 0}, Monitor())
    trigger.check_once()
    pending_id = trigger.pending_approvals()[0]["id"]

    status = mlops("status", "cli-model")
    assert status.returncode == 0, status.stderr
    assert f"{pending_id}  pending_approval" in status.stdout
    assert "manual approval required: True" in status.stdout
    as_json = json.loads(mlops("status", "cli-model", "--json").stdout)
    assert as_json["pending_approvals"][0]["trigger_type"] == "performance_degradation"

    approved = mlops("approve", "cli-model", str(pending_id))
    assert approved.returncode == 0, approved.stdout + approved.stderr
    assert f"approved event {pending_id}: succeeded" in approved.stdout
    assert marker.read_text() == "performance_degradation\n"

    again = mlops("approve", "cli-model", str(pending_id))
    assert again.returncode == 2 and "not pending approval" in again.stderr
    assert "Traceback" not in again.stderr

    trigger.check_once()
    second = trigger.pending_approvals()[0]["id"]
    rejected = mlops("reject", "cli-model", str(second), "--reason", "label delay, not a real drop")
    assert rejected.returncode == 0
    assert trigger.store.get_event(second)["status"] == "rejected"

    forced = mlops("force", "cli-model", "--reason", "from the shell")
    assert forced.returncode == 1  # approval is required for manual runs too
    assert "pending_approval" in forced.stdout

    history = json.loads(mlops("history", "cli-model", "--json").stdout)
    assert [h["status"] for h in history] == ["pending_approval", "rejected", "succeeded"]
    text = mlops("history", "cli-model").stdout
    assert "label delay" in text

    verified = mlops("verify-audit", "cli-model")
    assert verified.returncode == 0 and "audit chain intact" in verified.stdout


def test_force_runs_the_stored_command_or_an_override_and_fails_on_non_zero(tmp_path):
    create_data_trigger("force-model", {"retrain_command": [sys.executable, "-c", "print('ok')"],
                                        "min_hours_between_retrains": 0})
    ok = mlops("force", "force-model")
    assert ok.returncode == 0 and ": succeeded" in ok.stdout
    failing = mlops("force", "force-model", "--command", f"{sys.executable} -c 'import sys; sys.exit(4)'")
    assert failing.returncode == 1 and "command exited with status 4" in failing.stdout
    # the override was not written back as the model's command
    assert mlops("force", "force-model").returncode == 0


def test_force_without_any_command_is_a_recorded_failure():
    create_data_trigger("bare-model")
    assert "retrain command: (none)" in mlops("status", "bare-model").stdout
    result = mlops("force", "bare-model")
    assert result.returncode == 1
    assert "no retraining handler or command configured" in result.stdout


def test_verify_audit_names_the_edited_entry():
    trigger = create_data_trigger("tamper-model", {"min_hours_between_retrains": 0},
                                  retraining_handler=lambda t, r: True)
    for _ in range(3):
        trigger.force_retrain()
    entries = trigger.store.audit_entries()
    assert len(entries) == 9
    trigger.store.close()
    conn = sqlite3.connect(RetrainStore("tamper-model").path)
    conn.execute("DROP TRIGGER retrain_audit_no_update")
    conn.execute("UPDATE retrain_audit SET ts = ts - 3600 WHERE id = 5")
    conn.commit()
    conn.close()
    result = mlops("verify-audit", "tamper-model")
    assert result.returncode == 1
    assert "audit chain broken at entry 5" in result.stdout


def test_unknown_model_is_a_usage_error_and_leaves_no_state(tmp_path):
    from mlops.store.sqlite import mlops_home

    result = mlops("status", "no-such-model")
    assert result.returncode == 2
    assert "no retraining state for model 'no-such-model'" in result.stderr
    assert not (mlops_home() / "no-such-model").exists()
    assert mlops("verify-audit", "no-such-model").returncode == 2
