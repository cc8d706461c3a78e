"""The retraining Job built from a RetrainPolicy's template, and what a Job and its pods say about a run."""

from __future__ import annotations

import json

from mlops.operator.retrain import LABEL_POLICY, build_job, job_view

CR = {"metadata": {"name": "churn", "namespace": "ml", "uid": "u-1"}}
SPEC = {"modelDeployment": "churn-md", "jobTemplate": {
    "metadata": {"labels": {"team": "a"}},
    "spec": {"activeDeadlineSeconds": 60, "template": {"spec": {"containers": [
        {"name": "train", "image": "img", "env": [{"name": "MLOPS_ARTIFACT_DIR", "value": "/data/models/"},
                                                  {"name": "MLOPS_RUN_ID", "value": "user-set"}]}]}}}}}
RUN = {"id": "churn-r2", "job": "churn-r2", "trigger": "data_drift", "reason": "drift score 0.5 above 0.1"}


def test_job_is_named_per_decision_owned_and_told_its_run():
    job = build_job(CR, SPEC, RUN, "churn")
    assert job["metadata"]["name"] == "churn-r2"
    assert job["metadata"]["ownerReferences"] == [{"apiVersion": "mlops.duetmind.io/v1alpha1", "kind": "RetrainPolicy",
                                                   "name": "churn", "uid": "u-1", "controller": True,
                                                   "blockOwnerDeletion": True}]
    assert job["metadata"]["labels"]["team"] == "a" and job["metadata"]["labels"][LABEL_POLICY] == "churn"
    spec = job["spec"]
    assert spec["backoffLimit"] == 0 and spec["activeDeadlineSeconds"] == 60
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    env = {e["name"]: e["value"] for e in spec["template"]["spec"]["containers"][0]["env"]}
    assert env["MLOPS_RUN_ID"] == "churn-r2" and env["MLOPS_TRIGGER"] == "data_drift"
    assert env["MLOPS_MODEL_NAME"] == "churn" and env["MLOPS_ARTIFACT_DIR"] == "/data/models/churn-r2"
    assert env["MLOPS_TERMINATION_MESSAGE_PATH"] == "/dev/termination-log"
    assert SPEC["jobTemplate"]["spec"].get("backoffLimit") is None  # the spec is never modified


def _job(*conds):
    return {"metadata": {"uid": "j"}, "status": {"conditions": [
        {"type": t, "status": "True", "reason": r, "message": m} for t, r, m in conds]}}


def test_job_views():
    assert job_view(None, None).state == "missing"
    assert job_view(_job(), None).state == "active"
    failed = job_view(_job(("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")), None)
    assert failed.state == "failed" and failed.reason.startswith("DeadlineExceeded")
    record = json.dumps({"uri": "file:///m", "sha256": "a" * 64})
    pods = [{"status": {"phase": "Failed", "containerStatuses": [{"state": {"terminated": {"message": "old"}}}]}},
            {"status": {"phase": "Succeeded", "containerStatuses": [{"state": {"terminated": {"message": record}}}]}}]
    done = job_view(_job(("Complete", "", "")), pods)
    assert done.state == "succeeded" and done.message == record
    assert job_view(_job(("Complete", "", "")), []).message is None
