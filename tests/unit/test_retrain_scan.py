"""newData.paths: the scan command a RetrainPolicy's scan Job runs, and the ledger that counts each file once."""

from __future__ import annotations

import json
import os

from mlops.commands.retrain import scan_report
from mlops.core.retrain_loop import (
    JobView,
    Observation,
    config_from_spec,
    evaluate,
    finish_scan,
    known_files,
    plan_scan,
    scan_due,
)
from mlops.operator.retrain import build_scan_job

T0 = 1_800_000_000.0


def _csv(path, rows):
    path.write_text("a,b\n" + "".join(f"{i},{i}\n" for i in range(rows)))


def test_scan_reports_new_and_changed_files_only(tmp_path):
    _csv(tmp_path / "one.csv", 10)
    _csv(tmp_path / "two.csv", 20)
    (tmp_path / ".hidden.csv").write_text("a\n1\n")
    (tmp_path / "notes.txt").write_text("x")
    report = scan_report([str(tmp_path)], [".csv"], {}, settle_seconds=0)
    assert report["more"] is False
    assert {os.path.basename(p): v[2] for p, v in report["files"].items()} == {"one.csv": 10, "two.csv": 20}
    known = {p: v[:2] for p, v in report["files"].items()}
    _csv(tmp_path / "two.csv", 25)
    again = scan_report([str(tmp_path)], [".csv"], known, settle_seconds=0)
    assert [(os.path.basename(p), v[2]) for p, v in again["files"].items()] == [("two.csv", 25)]


def test_a_file_still_being_written_waits_and_a_large_report_is_cut(tmp_path):
    _csv(tmp_path / "growing.csv", 5)
    report = scan_report([str(tmp_path)], [".csv"], {}, settle_seconds=0.01,
                         sleep=lambda _s: _csv(tmp_path / "growing.csv", 6))
    assert report == {"files": {}, "more": True}
    for i in range(200):
        _csv(tmp_path / f"batch-{i:03d}-with-a-long-name.csv", 1)
    cut = scan_report([str(tmp_path)], [".csv"], {}, settle_seconds=0)
    assert cut["more"] is True and 0 < len(cut["files"]) < 200 and len(json.dumps(cut)) <= 4000


def test_each_file_is_counted_once_grown_files_add_their_new_rows():
    state = evaluate(None, config_from_spec({"triggers": {"newData": {"minNewSamples": 100, "paths": ["/d"]}}}),
                     Observation(), T0, policy="p").state
    assert scan_due(state, T0)
    state = plan_scan(state, T0, policy="p").state
    assert state["scan"]["job"] == "p-scan-1" and not scan_due(state, T0)

    def report(files):
        return JobView("succeeded", message=json.dumps({"files": files, "more": False}))

    step = finish_scan(state, report({"/d/a.csv": [10, 1, 500]}), T0 + 5)  # the first scan: a baseline
    assert step.state["newRows"] == 0 and step.audit[0][1]["baseline"] is True
    state = step.state
    assert known_files(state) == {"/d/a.csv": [10, 1]} and not scan_due(state, T0 + 10) and scan_due(state, T0 + 306)
    state = plan_scan(state, T0 + 306, policy="p").state
    state = finish_scan(state, report({"/d/a.csv": [20, 2, 540], "/d/b.csv": [5, 3, 30]}), T0 + 310).state
    assert state["newRows"] == 70  # 40 new rows in a grown file, 30 in a new one
    state = plan_scan(state, T0 + 700, policy="p").state
    state = finish_scan(state, report({"/d/b.csv": [4, 4, 20]}), T0 + 705).state  # replaced by fewer rows
    assert state["newRows"] == 90
    cfg = config_from_spec({"triggers": {"newData": {"minNewSamples": 100, "paths": ["/d"]}}})
    assert evaluate(state, cfg, Observation(), T0 + 706, policy="p").state["runs"] == []
    state = plan_scan(state, T0 + 1100, policy="p").state
    state = finish_scan(state, report({"/d/c.csv": [9, 9, 10]}), T0 + 1105).state
    step = evaluate(state, cfg, Observation(), T0 + 1106, policy="p")
    assert step.state["runs"][0]["trigger"] == "data_arrival" and step.state["newRows"] == 0
    failed = finish_scan(plan_scan(step.state, T0 + 1500, policy="p").state, JobView("failed", "DeadlineExceeded"),
                         T0 + 1501)
    assert failed.events[0][1] == "DataScanFailed" and failed.state["scan"] is None


def test_scan_job_uses_the_training_pods_volumes_and_tells_what_is_known():
    cr = {"metadata": {"name": "p", "namespace": "ns", "uid": "u"}}
    spec = {"triggers": {"newData": {"paths": ["/data/in"], "filePatterns": ["*.csv"]}}, "jobTemplate": {"spec": {
        "template": {"spec": {"serviceAccountName": "trainer", "volumes": [{"name": "data", "emptyDir": {}}],
                              "containers": [{"name": "train", "image": "img:1", "command": ["train"],
                                              "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}}}}}
    job = build_scan_job(cr, spec, {"job": "p-scan-3"}, {"/data/in/a.csv": [1, 2]})
    pod = job["spec"]["template"]["spec"]
    assert job["metadata"]["name"] == "p-scan-3" and pod["serviceAccountName"] == "trainer"
    assert pod["volumes"] == [{"name": "data", "emptyDir": {}}]
    (c,) = pod["containers"]
    assert c["image"] == "img:1" and c["volumeMounts"] == [{"name": "data", "mountPath": "/data"}]
    assert c["command"][:3] == ["mlops", "retrain", "scan-data"] and "/data/in" in c["command"]
    assert json.loads(c["env"][0]["value"]) == {"/data/in/a.csv": [1, 2]}
