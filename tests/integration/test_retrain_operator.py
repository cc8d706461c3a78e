"""RetrainPolicies end to end on the real local control plane.

The operator runs as a real `mlops operator` process under manifests/rbac.yaml, with a shiftable clock
(``--clock-offset-file``). The test plays two parts: the metrics collector (it writes the
ModelDeployment's ``status.metrics`` and ``Drifting`` condition, which the policy reads; the
ModelDeployment's own monitoring is off so the operator does not overwrite them) and the training
container (its KWOK pod is held Running by the ``mlops.duetmind.io/kwok-hold`` annotation; the test
then writes the pod's status: a terminated container whose termination message is the artifact
record, and phase Succeeded, so the Job controller completes the Job).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from mlops.core import audit_chain
from mlops.testing.experiment_stack import Operator, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

HOLD = "mlops.duetmind.io/kwok-hold"
FAIL = "mlops.duetmind.io/kwok-fail"
DRIFT_METRICS = {"predictions": 5000, "driftScore": 0.5, "driftedFeatures": ["age"], "driftWindowRows": 600,
                 "collectedAt": "2026-01-01T00:00:00Z"}


class Env:
    def __init__(self, cluster, admin, kubeconfig: Path, workdir: Path) -> None:
        self.cluster, self.admin, self.workdir = cluster, admin, workdir
        self.ns = f"rtp-{uuid.uuid4().hex[:8]}"
        cluster.create_namespace(self.ns)
        self.op = Operator(kubeconfig, [self.ns], workdir)
        self.op.start()
        model = workdir / "m.skops"
        model.write_bytes(b"model bytes")
        self.sha = hashlib.sha256(model.read_bytes()).hexdigest()
        self.model_uri = model.as_uri()
        self.apply({"apiVersion": "mlops.duetmind.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "m"},
                    "spec": {"modelName": "m", "stableVersion": "v1", "monitoring": {"enabled": False},
                             "versions": [{"name": "v1", "artifact": {"uri": self.model_uri, "sha256": self.sha}}]}})
        wait_until(lambda: (self.admin.get_mdep(self.ns, "m").get("status") or {}).get("phase") == "Ready", 120,
                   "ModelDeployment Ready", self.op.tail)

    # ---- the user's side
    def apply(self, manifest: dict) -> None:
        self.cluster.kubectl("apply", "-n", self.ns, "-f", "-", input=json.dumps(manifest))

    def policy(self, name: str, *, pod_annotations: dict | None = None, job_spec: dict | None = None, **spec) -> None:
        body = {"modelDeployment": "m", "triggers": {"drift": {"threshold": 0.1}},
                "constraints": {"minHoursBetweenRetrains": 6, "maxRetrainsPerDay": 4},
                "jobTemplate": {"spec": {**(job_spec or {}), "template": {
                    "metadata": {"annotations": pod_annotations if pod_annotations is not None else {HOLD: "true"}},
                    "spec": {"containers": [{"name": "train", "image": "mlops-operator:test",
                                             "command": ["mlops", "train", "--termination-message-path",
                                                         "/dev/termination-log"]}]}}}},
                **spec}
        self.apply({"apiVersion": "mlops.duetmind.io/v1alpha1", "kind": "RetrainPolicy", "metadata": {"name": name},
                    "spec": body})

    def annotate(self, name: str, key: str, value: str) -> None:
        self.cluster.kubectl("annotate", "-n", self.ns, "--overwrite", f"rtp/{name}", f"mlops.duetmind.io/{key}={value}")

    # ---- the collector's side
    def drift(self, on: bool = True) -> None:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        mdep = self.admin.get_mdep(self.ns, "m")
        conditions = [c for c in (mdep.get("status") or {}).get("conditions") or [] if c["type"] != "Drifting"]
        conditions.append({"type": "Drifting", "status": "True" if on else "False",
                           "reason": "FeatureDrift" if on else "NoDrift", "message": "test collector",
                           "lastTransitionTime": now})
        metrics = DRIFT_METRICS if on else {**DRIFT_METRICS, "driftScore": 0.0, "driftedFeatures": []}
        self.admin.patch_status(self.ns, "m", {"metrics": metrics, "conditions": conditions})

    # ---- the training container's side
    def pod_of(self, job: str) -> dict:
        pods = wait_until(lambda: self.admin.list("Pod", self.ns, f"job-name={job}"), 60, f"pod of {job}", self.op.tail)
        return pods[0]

    def finish_training(self, job: str, record: dict | str | None = None) -> None:
        pod = self.pod_of(job)
        wait_until(lambda: (self.admin.get("Pod", self.ns, pod["metadata"]["name"]).get("status") or {}).get("phase")
                   == "Running", 60, "pod Running")
        if record is None:
            record = {"uri": self.model_uri, "sha256": self.sha, "format": "skops", "metrics": {"accuracy": 0.91},
                      "runId": job}
        message = record if isinstance(record, str) else json.dumps(record)
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.admin.patch_status(self.ns, pod["metadata"]["name"], {"phase": "Succeeded", "containerStatuses": [{
            "name": "train", "image": "mlops-operator:test", "imageID": "", "ready": False, "restartCount": 0,
            "started": False, "state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": message,
                                                       "startedAt": now, "finishedAt": now}}}]}, kind="Pod")
        wait_until(lambda: any(c["type"] == "Complete" and c["status"] == "True" for c in
                               (self.admin.get("Job", self.ns, job).get("status") or {}).get("conditions") or []),
                   60, f"Job {job} Complete")

    # ---- reading
    def rtp(self, name: str) -> dict:
        return self.admin.get("RetrainPolicy", self.ns, name) or {}

    def status(self, name: str) -> dict:
        return self.rtp(name).get("status") or {}

    def jobs(self, name: str) -> list[dict]:
        return self.admin.list("Job", self.ns, f"mlops.duetmind.io/retrainpolicy={name}")

    def audit(self, name: str) -> list[dict]:
        cm = self.admin.get("ConfigMap", self.ns, f"{name}-retrain-audit")
        return audit_chain.loads(((cm or {}).get("data") or {}).get("audit.jsonl") or "")

    def actions(self, name: str) -> list[str]:
        return [e["action"] for e in self.audit(name)]

    def events(self, reason: str) -> list[dict]:
        return [e for e in self.admin.list("Event", self.ns) if e.get("reason") == reason]

    def verify(self, name: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mlops", "retrain", "verify-audit", "--namespace", self.ns,
                               "--policy", name, "--kubeconfig", str(self.cluster.kubeconfig)],
                              capture_output=True, text=True, timeout=60, env={**os.environ})

    def close(self) -> None:
        self.op.stop()
        self.cluster.kubectl("delete", "namespace", self.ns, "--wait=false", check=False)


@pytest.fixture
def env(cluster, admin, operator_kubeconfig, tmp_path):
    e = Env(cluster, admin, operator_kubeconfig, tmp_path)
    try:
        yield e
    finally:
        e.close()


def test_drift_starts_one_job_that_reports_its_candidate(env):
    env.policy("p", onSuccess={"openExperiment": False})
    wait_until(lambda: env.status("p").get("phase") == "Idle", 60, "policy evaluated", env.op.tail)
    assert not env.jobs("p")
    env.drift()
    job = wait_until(lambda: env.jobs("p"), 60, "a Job", env.op.tail)[0]
    assert job["metadata"]["name"] == "p-r1"
    assert job["metadata"]["ownerReferences"][0]["kind"] == "RetrainPolicy"
    envs = {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert envs["MLOPS_RUN_ID"] == "p-r1" and envs["MLOPS_TRIGGER"] == "data_drift"
    assert envs["MLOPS_MODEL_NAME"] == "m" and envs["MLOPS_ARTIFACT_DIR"] == "/artifacts/p-r1"
    st = wait_until(lambda: (s := env.status("p")).get("activeJob") == "p-r1" and s, 30, "activeJob", env.op.tail)
    assert st["phase"] == "Running" and st["runsToday"] == 1 and st["lastRunResult"] == "Running"
    # printer columns: phase, last run, runs 24 h, pending approval, active Job
    table = env.cluster.kubectl("get", "rtp", "p", "-n", env.ns).stdout
    assert {"PHASE", "LAST RUN", "RUNS 24H", "PENDING", "JOB"} <= set(h.strip() for h in table.splitlines()[0].split("  ")
                                                                      if h.strip())
    assert "Running" in table and "p-r1" in table
    env.finish_training("p-r1")
    st = wait_until(lambda: (s := env.status("p")).get("lastRunResult") == "Succeeded" and s, 60, "Succeeded",
                    env.op.tail)
    assert st["phase"] == "Idle" and st.get("activeJob") is None
    assert st["lastCandidate"] == {"runId": "p-r1", "uri": env.model_uri, "sha256": env.sha, "status": "recorded"}
    assert [a for a in env.actions("p") if a != "blocked"] == [  # drift still present: blocked while it ran
        "policy_started", "run_decided", "job_started", "job_finished", "candidate_recorded"]
    assert len(env.jobs("p")) == 1
    assert env.events("RetrainStarted") and env.events("RetrainSucceeded")
    ok = env.verify("p")
    assert ok.returncode == 0 and "intact" in ok.stdout, ok.stdout + ok.stderr
    # tampering with one entry is found and named; the running operator does not overwrite the edit (its
    # writes are conditional on the version it read): it re-reads, appends, and reports the broken chain
    cm = env.admin.get("ConfigMap", env.ns, "p-retrain-audit")
    text = cm["data"]["audit.jsonl"].replace('"trigger":"data_drift"', '"trigger":"manual"', 1)
    env.admin.patch("ConfigMap", env.ns, "p-retrain-audit", {"data": {"audit.jsonl": text}})
    bad = env.verify("p")
    assert bad.returncode == 1 and "broken at entry 2" in bad.stdout, bad.stdout + bad.stderr
    env.annotate("p", "retrain-now", "after the edit")
    wait_until(lambda: any(e["payload"].get("reason") == "manual trigger: after the edit" for e in env.audit("p")), 30,
               "appended after the edit", env.op.tail)
    ready = wait_until(lambda: next((c for c in env.status("p").get("conditions") or [] if c["type"] == "Ready"
                                     and c["reason"] == "AuditChainBroken"), None), 30, "AuditChainBroken", env.op.tail)
    assert "entry 2" in ready["message"]
    bad = env.verify("p")
    assert bad.returncode == 1 and "broken at entry 2" in bad.stdout, bad.stdout + bad.stderr


def test_a_storm_of_fifty_triggers_within_an_hour_starts_one_job(env):
    env.policy("storm")
    wait_until(lambda: env.status("storm").get("phase") == "Idle", 60, "policy evaluated", env.op.tail)
    env.drift()
    wait_until(lambda: env.jobs("storm"), 60, "the first Job", env.op.tail)
    for i in range(50):
        env.annotate("storm", "retrain-now", f"storm-{i}")
        if i == 25:  # half-way the run finishes: the rest meets the cooldown instead of the running Job
            env.finish_training("storm-r1")
        env.op.shift_clock(1 / 60)  # 50 triggers within the hour
        wait_until(lambda i=i: sum(1 for e in env.audit("storm") if e["payload"].get("reason") ==
                                   f"manual trigger: storm-{i}") == 1, 30, f"trigger {i} audited", env.op.tail)
    assert [j["metadata"]["name"] for j in env.jobs("storm")] == ["storm-r1"]
    audit = env.audit("storm")
    blocked = [e for e in audit if e["action"] == "blocked"]
    assert sum(1 for e in blocked if e["payload"]["trigger"] == "manual") == 50
    assert {e["payload"]["code"] for e in blocked} >= {"run_in_progress", "cooldown"}
    assert [e["action"] for e in audit].count("run_decided") == 1
    st = env.status("storm")
    assert st["runsToday"] == 1 and st["lastRunResult"] == "Succeeded"
    assert any(h["decision"] == "Blocked" for h in st["history"])
    assert env.verify("storm").returncode == 0


def test_approval_needs_the_pending_id_wrong_id_changes_nothing_reject_discards(env):
    env.policy("ap", requireApproval=True)
    wait_until(lambda: env.status("ap").get("phase") == "Idle", 60, "policy evaluated", env.op.tail)
    env.drift()
    first = wait_until(lambda: env.status("ap").get("pendingApproval"), 60, "pending approval", env.op.tail)
    assert env.status("ap")["phase"] == "AwaitingApproval" and first["triggerType"] == "data_drift"
    env.annotate("ap", "approve", "1-deadbeef")
    wait_until(lambda: env.events("UnknownApprovalId"), 30, "Event for the wrong id", env.op.tail)
    time.sleep(2)
    assert not env.jobs("ap") and env.status("ap")["pendingApproval"] == first
    env.annotate("ap", "reject", first["id"])
    wait_until(lambda: "rejected" in env.actions("ap"), 30, "rejected", env.op.tail)
    assert not env.jobs("ap")
    # drift is still there: a new request, with a new id
    second = wait_until(lambda: (p := env.status("ap").get("pendingApproval")) and p["id"] != first["id"] and p, 30,
                        "a new request", env.op.tail)
    env.annotate("ap", "approve", second["id"])
    wait_until(lambda: env.jobs("ap"), 30, "the Job after approval", env.op.tail)
    time.sleep(2)
    assert [j["metadata"]["name"] for j in env.jobs("ap")] == ["ap-r1"]
    actions = env.actions("ap")
    assert [a for a in actions if a in ("approval_requested", "approve_refused", "rejected", "approved")] == [
        "approval_requested", "approve_refused", "rejected", "approval_requested", "approved"]
    assert env.verify("ap").returncode == 0


def test_failed_deadline_exceeded_and_deleted_jobs_are_failed_runs(env):
    env.policy("fail", pod_annotations={FAIL: "true"}, triggers={"schedule": {"maxDaysWithoutRetrain": 30}},
               onSuccess={"openExperiment": True})
    env.policy("slow", job_spec={"activeDeadlineSeconds": 2}, triggers={"schedule": {"maxDaysWithoutRetrain": 30}},
               onSuccess={"openExperiment": True})
    env.policy("gone", triggers={"schedule": {"maxDaysWithoutRetrain": 30}}, onSuccess={"openExperiment": True})
    for name in ("fail", "slow", "gone"):
        wait_until(lambda name=name: env.status(name).get("phase") == "Idle", 60, f"{name} evaluated", env.op.tail)
        env.annotate(name, "retrain-now", "test")
    wait_until(lambda: env.jobs("gone"), 60, "Job of gone", env.op.tail)
    wait_until(lambda: env.status("gone").get("activeJob") == "gone-r1", 30, "gone running", env.op.tail)
    env.cluster.kubectl("delete", "job", "gone-r1", "-n", env.ns, "--wait=false")
    reasons = {"fail": "BackoffLimitExceeded", "slow": "DeadlineExceeded", "gone": "deleted"}
    for name, why in reasons.items():
        st = wait_until(lambda name=name: (s := env.status(name)).get("lastRunResult") == "Failed" and s, 90,
                        f"{name} Failed", env.op.tail)
        assert st["runsToday"] == 1 and st.get("lastCandidate") is None and st["phase"] == "Idle"
        finished = [e for e in env.audit(name) if e["action"] == "job_finished"]
        assert len(finished) == 1 and finished[0]["payload"]["result"] == "Failed"
        assert why in finished[0]["payload"]["reason"], finished
        assert not any(a.startswith("candidate") for a in env.actions(name))
    # a failed run counts against the limits: a new trigger an hour later meets the cooldown
    env.op.shift_clock(1)
    env.annotate("fail", "retrain-now", "again")
    wait_until(lambda: any(e["action"] == "blocked" and e["payload"]["code"] == "cooldown" for e in env.audit("fail")),
               30, "blocked by the cooldown", env.op.tail)
    assert len(env.jobs("fail")) == 1
    assert env.events("RetrainFailed")


def _sigkill_restart(env) -> None:
    env.op.stop(signal.SIGKILL)
    env.op.start()


def test_sigkill_at_each_step_yields_one_job_per_decision(env):
    # 1. after the decision, before the Job exists: a quota refuses Jobs, so the operator has decided
    #    (and persisted the decision) but cannot create it when it is killed
    env.apply({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "no-jobs"},
               "spec": {"hard": {"count/jobs.batch": "0"}}})
    time.sleep(1)
    env.policy("crash")
    wait_until(lambda: env.status("crash").get("phase") == "Idle", 60, "policy evaluated", env.op.tail)
    env.drift()
    wait_until(lambda: "run_decided" in env.actions("crash"), 60, "decision persisted", env.op.tail)
    time.sleep(1.5)  # it keeps trying to create the Job and is refused
    assert not env.jobs("crash")
    env.op.stop(signal.SIGKILL)
    env.cluster.kubectl("delete", "resourcequota", "no-jobs", "-n", env.ns)
    env.op.start()
    wait_until(lambda: env.jobs("crash"), 60, "the decided Job after restart", env.op.tail)
    # 2. after Job creation
    _sigkill_restart(env)
    wait_until(lambda: env.status("crash").get("activeJob") == "crash-r1", 60, "running after restart", env.op.tail)
    # 3. after Job completion (killed as soon as the Job is Complete)
    env.finish_training("crash-r1")
    _sigkill_restart(env)
    wait_until(lambda: env.status("crash").get("lastRunResult") == "Succeeded", 60, "Succeeded after restart",
               env.op.tail)
    _sigkill_restart(env)
    time.sleep(3)
    assert [j["metadata"]["name"] for j in env.jobs("crash")] == ["crash-r1"]
    actions = env.actions("crash")
    assert actions.count("run_decided") == 1 and actions.count("job_started") == 1
    assert actions.count("job_finished") == 1 and actions.count("candidate_recorded") == 1
    assert env.verify("crash").returncode == 0


def test_success_proposes_the_candidate_once_and_records_its_outcome(cluster, admin, crds_installed, tmp_path):
    """The candidate side (``mlops.operator.candidates``, issue 14b) is replaced by a recording stand-in with
    the interface's signature; the controller runs in-process (no kopf) with an injected clock."""
    from mlops.operator.handlers import Controller, OperatorConfig
    from mlops.operator.k8s import KubeError
    from mlops.operator.retrain import RetrainController

    calls: list[dict] = []
    failures = [KubeError(500, "InternalError", "apiserver hiccup")]

    def propose(kube, *, namespace, model_deployment, policy, run_id, uri, sha256, format="skops", metrics=None,
                open_experiment=True, traffic_split=0.1):
        calls.append({"namespace": namespace, "model_deployment": model_deployment, "policy": policy, "run_id": run_id,
                      "uri": uri, "sha256": sha256, "format": format, "metrics": metrics,
                      "open_experiment": open_experiment, "traffic_split": traffic_split})
        if failures:
            raise failures.pop()
        return "r1"

    outcomes = {"value": "candidate"}
    now = {"t": time.time()}
    ns = f"rtp-{uuid.uuid4().hex[:8]}"
    cluster.create_namespace(ns)
    controller = Controller(admin, OperatorConfig(namespaces=[ns]), clock=lambda: now["t"])
    rc = RetrainController(controller, propose=propose, outcome=lambda kube, **kw: outcomes["value"])
    env = Env.__new__(Env)  # reuse the helpers without an operator process
    env.cluster, env.admin, env.workdir, env.ns = cluster, admin, tmp_path, ns
    model = tmp_path / "m.skops"
    model.write_bytes(b"candidate")
    env.sha, env.model_uri = hashlib.sha256(b"candidate").hexdigest(), model.as_uri()
    try:
        env.apply({"apiVersion": "mlops.duetmind.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "m"},
                   "spec": {"modelName": "m", "stableVersion": "v1", "monitoring": {"enabled": False},
                            "versions": [{"name": "v1", "artifact": {"uri": env.model_uri, "sha256": env.sha}}]}})
        env.policy("p", onSuccess={"openExperiment": True, "trafficSplit": 0.2})
        env.op = type("NoOp", (), {"tail": staticmethod(lambda: "")})()
        env.drift()
        assert rc.evaluate_sync(ns, "p") == "Running"
        env.finish_training("p-r1")
        with pytest.raises(KubeError):  # the first proposal fails: the candidate stays to be proposed
            rc.evaluate_sync(ns, "p")
        rc.memory.clear()  # as after a restart: state from the ConfigMap
        rc.evaluate_sync(ns, "p")
        rc.evaluate_sync(ns, "p")
        assert len(calls) == 2 and calls[-1] == {
            "namespace": ns, "model_deployment": "m", "policy": "p", "run_id": "p-r1", "uri": env.model_uri,
            "sha256": env.sha, "format": "skops", "metrics": {"accuracy": 0.91}, "open_experiment": True,
            "traffic_split": 0.2}
        st = env.status("p")
        assert st["lastCandidate"] == {"runId": "p-r1", "uri": env.model_uri, "sha256": env.sha, "status": "proposed",
                                       "version": "r1", "outcome": "candidate"}
        outcomes["value"] = "promoted"
        now["t"] += 60
        rc.evaluate_sync(ns, "p")
        assert env.status("p")["lastCandidate"]["outcome"] == "promoted"
        actions = env.actions("p")
        assert actions.count("candidate_proposed") == 1 and actions.count("candidate_outcome") == 1
        assert env.verify("p").returncode == 0
        # an artifact record that does not verify is a failed run and proposes nothing
        env.annotate("p", "retrain-now", "bad record")
        now["t"] += 7 * 3600
        rc.evaluate_sync(ns, "p")
        env.finish_training("p-r2", record={"uri": env.model_uri, "sha256": "not-a-digest"})
        rc.evaluate_sync(ns, "p")
        assert env.status("p")["lastRunResult"] == "Failed" and len(calls) == 2
    finally:
        controller.shutdown()
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_new_data_files_are_counted_once_by_scan_jobs(cluster, admin, crds_installed, tmp_path):
    """``newData.paths``: the operator runs scan Jobs (the training pod's volumes); the test plays the scan
    container with the real ``scan_report`` on a local folder and the Job's own environment."""
    from mlops.commands.retrain import scan_report
    from mlops.operator.handlers import Controller, OperatorConfig
    from mlops.operator.retrain import RetrainController

    data = tmp_path / "data"
    data.mkdir()
    (data / "old.csv").write_text("a\n" + "1\n" * 400)  # present before the policy: already trained on
    now = {"t": time.time()}
    ns = f"rtp-{uuid.uuid4().hex[:8]}"
    cluster.create_namespace(ns)
    controller = Controller(admin, OperatorConfig(namespaces=[ns]), clock=lambda: now["t"])
    rc = RetrainController(controller)
    env = Env.__new__(Env)
    env.cluster, env.admin, env.workdir, env.ns = cluster, admin, tmp_path, ns
    env.sha, env.model_uri = "b" * 64, (tmp_path / "m.skops").as_uri()
    env.op = type("NoOp", (), {"tail": staticmethod(lambda: "")})()

    def play_scanner(job_name: str) -> dict:
        job = wait_until(lambda: admin.get("Job", ns, job_name), 30, job_name)
        container = job["spec"]["template"]["spec"]["containers"][0]
        known = json.loads(container["env"][0]["value"])
        report = scan_report([str(data)], [".csv"], known, settle_seconds=0)
        pod = env.pod_of(job_name)
        wait_until(lambda: (admin.get("Pod", ns, pod["metadata"]["name"]).get("status") or {}).get("phase")
                   == "Running", 60, "scan pod Running")
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        admin.patch_status(ns, pod["metadata"]["name"], {"phase": "Succeeded", "containerStatuses": [{
            "name": "scan", "image": "img", "imageID": "", "ready": False, "restartCount": 0, "started": False,
            "state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": json.dumps(report),
                                     "startedAt": stamp, "finishedAt": stamp}}}]}, kind="Pod")
        wait_until(lambda: any(c["type"] == "Complete" and c["status"] == "True" for c in
                               (admin.get("Job", ns, job_name).get("status") or {}).get("conditions") or []),
                   60, f"{job_name} Complete")
        return report

    try:
        env.apply({"apiVersion": "mlops.duetmind.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "m"},
                   "spec": {"modelName": "m", "stableVersion": "v1", "monitoring": {"enabled": False},
                            "versions": [{"name": "v1", "artifact": {"uri": env.model_uri, "sha256": env.sha}}]}})
        env.policy("d", pod_annotations={HOLD: "true"},
                   triggers={"newData": {"minNewSamples": 100, "paths": ["/data"], "filePatterns": [".csv"]}})
        rc.evaluate_sync(ns, "d")
        assert play_scanner("d-scan-1")["files"]  # the first scan: a baseline
        rc.evaluate_sync(ns, "d")
        assert admin.get("Job", ns, "d-scan-1") is None or admin.get("Job", ns, "d-scan-1")["metadata"].get(
            "deletionTimestamp")
        assert not env.jobs("d") or all("scan" in j["metadata"]["name"] for j in env.jobs("d"))
        (data / "new.csv").write_text("a\n" + "1\n" * 60)
        now["t"] += 301
        rc.evaluate_sync(ns, "d")
        assert [*play_scanner("d-scan-2")["files"]] == [str((data / "new.csv").resolve())]
        rc.evaluate_sync(ns, "d")
        assert "d-r1" not in [j["metadata"]["name"] for j in env.jobs("d")]  # 60 < 100
        rc.memory.clear()  # as after a restart: the ledger comes back from the ConfigMap
        (data / "more.csv").write_text("a\n" + "1\n" * 50)
        now["t"] += 301
        rc.evaluate_sync(ns, "d")
        report = play_scanner("d-scan-3")
        assert [*report["files"]] == [str((data / "more.csv").resolve())]  # old and new are not counted again
        rc.evaluate_sync(ns, "d")
        runs = [j for j in env.jobs("d") if j["metadata"]["name"] == "d-r1"]
        assert runs and {e["name"]: e["value"] for e in runs[0]["spec"]["template"]["spec"]["containers"][0]["env"]
                         }["MLOPS_TRIGGER"] == "data_arrival"
        scanned = [e for e in env.audit("d") if e["action"] == "data_scanned"]
        assert [e["payload"]["newRows"] for e in scanned] == [0, 60, 50]
        assert env.verify("d").returncode == 0
    finally:
        controller.shutdown()
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
