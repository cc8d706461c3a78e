"""The RetrainPolicy state machine (``mlops.core.retrain_loop``) with an injected clock: weeks of
evaluations in milliseconds, against exactly the code the operator runs."""

from __future__ import annotations

import json

import pytest

from mlops.core import audit_chain
from mlops.core.retrain_loop import (
    ANN_APPROVE,
    ANN_REJECT,
    ANN_RETRAIN_NOW,
    JobView,
    Observation,
    config_from_spec,
    evaluate,
    material,
    parse_artifact_record,
    record_proposal,
    runs_to_create,
    runs_to_propose,
    status_of,
)

HOUR = 3600.0
T0 = 1_800_000_000.0
SHA = "a" * 64
GOOD = json.dumps({"uri": "file:///models/m.skops", "sha256": SHA, "format": "skops", "metrics": {"accuracy": 0.9}})
DRIFT = {"predictions": 5000, "driftScore": 0.5, "driftedFeatures": ["age"], "driftWindowRows": 500}
IDLE: dict = {}


def spec(**over):
    base = {"modelDeployment": "m", "triggers": {"drift": {"threshold": 0.1}, "schedule": {"maxDaysWithoutRetrain": 7}},
            "constraints": {"minHoursBetweenRetrains": 6, "maxRetrainsPerDay": 2}, "requireApproval": False,
            "onSuccess": {"openExperiment": False, "trafficSplit": 0.1}}
    base.update(over)
    return base


class Sim:
    """Plays the operator around the pure step: persists, 'creates' Jobs, finishes them on command."""

    def __init__(self, spec_, *, job_seconds=600.0, fail=False):
        self.cfg = config_from_spec(spec_)
        self.state = None
        self.audit: list = []
        self.jobs: dict[str, dict] = {}  # name -> {"created": t, "state": ...}
        self.created: list[tuple[str, float]] = []
        self.job_seconds = job_seconds
        self.fail = fail
        self.annotations: dict[str, str] = {}
        self.events: list = []

    def views(self, now):
        out = {}
        for run in (self.state or {}).get("runs", []):
            job = self.jobs.get(run["job"])
            if job is None:
                out[run["job"]] = JobView("missing")
            elif now - job["created"] < self.job_seconds:
                out[run["job"]] = JobView("active")
            elif self.fail:
                out[run["job"]] = JobView("failed", "BackoffLimitExceeded: Job has reached the specified backoff limit")
            else:
                out[run["job"]] = JobView("succeeded", message=GOOD)
        return out

    def tick(self, now, metrics=None, drifting=False):
        step = evaluate(self.state, self.cfg, Observation(metrics=metrics, drifting=drifting,
                                                          annotations=dict(self.annotations), jobs=self.views(now)),
                        now, policy="p", uid="uid-1")
        for action, payload in step.audit:
            audit_chain.append(self.audit, now, action, payload)
        self.state = step.state
        self.events += step.events
        for run in runs_to_create(self.state):
            if run["job"] not in self.jobs:
                self.jobs[run["job"]] = {"created": now}
                self.created.append((run["job"], now))
        return step


def starts(sim):
    return [t for _, t in sim.created]


def test_a_week_of_hourly_drift_respects_the_cap_and_the_spacing():
    sim = Sim(spec())
    for hour in range(7 * 24):
        for minute in range(0, 60, 10):  # evaluated every 10 minutes, drift present all week
            sim.tick(T0 + hour * HOUR + minute * 60, DRIFT, drifting=True)
    times = starts(sim)
    assert len(times) >= 7  # it does retrain (at most 2 a day)
    assert all(b - a >= 6 * HOUR for a, b in zip(times, times[1:], strict=False))
    for t in times:
        assert sum(1 for u in times if t - 24 * HOUR <= u <= t) <= 2
    assert audit_chain.verify(sim.audit).ok
    # blocked triggers are recorded (once per episode), never silently dropped
    blocked = [e for e in sim.audit if e["action"] == "blocked"]
    assert blocked and all(e["payload"]["code"] in ("run_in_progress", "cooldown", "daily_cap") for e in blocked)
    assert len(sim.audit) < 400  # episodes, not one entry per evaluation


def test_an_idle_week_starts_only_the_scheduled_run():
    sim = Sim(spec())
    for hour in range(7 * 24 + 2):
        sim.tick(T0 + hour * HOUR, IDLE)
    assert len(sim.created) == 1
    run = sim.state["runs"][0]
    assert run["trigger"] == "time_based" and run["decidedAt"] >= T0 + 7 * 24 * HOUR


def test_a_storm_of_fifty_triggers_in_an_hour_starts_one_job():
    sim = Sim(spec(constraints={"minHoursBetweenRetrains": 6, "maxRetrainsPerDay": 4}))
    for i in range(50):
        sim.annotations[ANN_RETRAIN_NOW] = f"storm {i}"
        sim.tick(T0 + i * 70, DRIFT, drifting=True)
    assert len(sim.created) == 1
    manual = [e for e in sim.audit if e["payload"].get("trigger") == "manual"]
    assert len(manual) == 50  # each manual trigger audited: 1 started, 49 blocked
    assert sum(e["action"] == "blocked" for e in manual) == 49


def test_a_manual_trigger_value_is_acted_on_once():
    sim = Sim(spec(triggers={"schedule": {"maxDaysWithoutRetrain": 30}}))
    sim.annotations[ANN_RETRAIN_NOW] = "please"
    for i in range(10):
        sim.tick(T0 + i * 7 * HOUR)
    assert len(sim.created) == 1


def test_approval_needs_the_pending_id_and_rejection_discards():
    sim = Sim(spec(requireApproval=True))
    sim.tick(T0, DRIFT, drifting=True)
    pending = sim.state["pending"]
    assert pending and pending["triggerType"] == "data_drift" and not sim.created
    assert status_of(sim.state, T0, audit_entries=len(sim.audit))["phase"] == "AwaitingApproval"
    sim.annotations[ANN_APPROVE] = "1-00000000"  # a wrong id changes nothing
    sim.tick(T0 + 60, DRIFT, drifting=True)
    assert not sim.created and sim.state["pending"] == pending
    assert any(e["action"] == "approve_refused" for e in sim.audit)
    assert any(e[1] == "UnknownApprovalId" for e in sim.events)
    sim.annotations[ANN_REJECT] = pending["id"]
    sim.tick(T0 + 120, IDLE)
    assert sim.state["pending"] is None and not sim.created
    assert any(e["action"] == "rejected" for e in sim.audit)
    sim.tick(T0 + 180, DRIFT, drifting=True)  # a new request with a new id
    second = sim.state["pending"]
    assert second["id"] != pending["id"]
    sim.annotations[ANN_APPROVE] = second["id"]
    sim.tick(T0 + 240, DRIFT, drifting=True)
    assert len(sim.created) == 1 and sim.state["pending"] is None
    assert [e["action"] for e in sim.audit if e["action"] in ("approved", "rejected", "approve_refused")] == [
        "approve_refused", "rejected", "approved"]
    assert audit_chain.verify(sim.audit).ok


@pytest.mark.parametrize("view, why", [
    (JobView("failed", "DeadlineExceeded: Job was active longer than specified deadline"), "DeadlineExceeded"),
    (JobView("failed", "BackoffLimitExceeded"), "BackoffLimitExceeded"),
    (JobView("missing"), "deleted"),
    (JobView("succeeded", message="not json"), "not JSON"),
    (JobView("succeeded", message=json.dumps({"uri": "file:///m", "sha256": "xyz"})), "sha256"),
])
def test_a_failed_deadline_exceeded_deleted_or_unreadable_job_is_a_failed_run(view, why):
    cfg = config_from_spec(spec(onSuccess={"openExperiment": True, "trafficSplit": 0.2}))
    step = evaluate(None, cfg, Observation(metrics=DRIFT, drifting=True), T0, policy="p")
    run = runs_to_create(step.state)[0]
    step = evaluate(step.state, cfg, Observation(jobs={run["job"]: JobView("active")}), T0 + 60, policy="p")
    step = evaluate(step.state, cfg, Observation(jobs={run["job"]: view}), T0 + 120, policy="p")
    done = step.state["runs"][0]
    assert done["result"] == "Failed" and why in done["message"]
    assert not runs_to_propose(step.state) and "candidate" not in done
    assert status_of(step.state, T0 + 130, audit_entries=0)["runsToday"] == 1  # it counts against the cap
    # and against the spacing: drift right after does not start another run
    step = evaluate(step.state, cfg, Observation(metrics=DRIFT, drifting=True), T0 + 3 * HOUR, policy="p")
    assert len(step.state["runs"]) == 1 and step.audit[0][1]["code"] == "cooldown"


def test_a_decision_survives_a_crash_before_the_job_exists():
    cfg = config_from_spec(spec())
    step = evaluate(None, cfg, Observation(metrics=DRIFT, drifting=True), T0, policy="p")
    persisted = step.state  # the operator dies here, before creating the Job
    again = evaluate(persisted, cfg, Observation(metrics=DRIFT, drifting=True,
                                                 jobs={"p-r1": JobView("missing")}), T0 + 5, policy="p")
    assert [r["job"] for r in runs_to_create(again.state)] == ["p-r1"]  # the same name: create is idempotent
    assert len(again.state["runs"]) == 1


def test_success_records_the_candidate_then_the_proposal():
    cfg = config_from_spec(spec(onSuccess={"openExperiment": True, "trafficSplit": 0.2}))
    step = evaluate(None, cfg, Observation(metrics=DRIFT, drifting=True), T0, policy="p")
    step = evaluate(step.state, cfg, Observation(jobs={"p-r1": JobView("succeeded", message=GOOD)}), T0 + 60,
                    policy="p")
    assert [a for a, _ in step.audit] == ["job_started", "job_finished"]
    assert [r["id"] for r in runs_to_propose(step.state)] == ["p-r1"]
    step = record_proposal(step.state, "p-r1", version="r1", error=None, now=T0 + 61)
    assert not runs_to_propose(step.state)
    assert status_of(step.state, T0 + 62, audit_entries=3)["lastCandidate"]["version"] == "r1"
    step = evaluate(step.state, cfg, Observation(candidate_outcomes={"p-r1": "promoted"}), T0 + 90, policy="p")
    assert [a for a, _ in step.audit] == ["candidate_outcome"]


def test_repeats_of_a_blocked_trigger_are_not_persisted_each_time():
    cfg = config_from_spec(spec())
    step = evaluate(None, cfg, Observation(metrics=DRIFT, drifting=True), T0, policy="p")
    step = evaluate(step.state, cfg, Observation(metrics=DRIFT, drifting=True, jobs={"p-r1": JobView("active")}),
                    T0 + 10, policy="p")
    first = step.state
    step = evaluate(first, cfg, Observation(metrics=DRIFT, drifting=True, jobs={"p-r1": JobView("active")}),
                    T0 + 20, policy="p")
    assert not step.audit and material(step.state) == material(first)


def test_artifact_records_are_validated():
    assert parse_artifact_record(GOOD, "r")[0]["sha256"] == SHA
    assert "belongs to run" in parse_artifact_record(json.dumps({**json.loads(GOOD), "runId": "x"}), "r")[1]
    assert "format" in parse_artifact_record(json.dumps({**json.loads(GOOD), "format": "pickle"}), "r")[1]
    assert "empty" in parse_artifact_record("", "r")[1]


def test_audit_chain_names_the_edited_entry():
    entries: list = []
    for i in range(5):
        audit_chain.append(entries, T0 + i, "blocked", {"i": i})
    assert audit_chain.verify(entries).ok
    text = audit_chain.dumps(entries).replace('"i":2', '"i":7')
    result = audit_chain.verify(audit_chain.loads(text))
    assert not result.ok and result.first_bad_id == 3 and "modified" in result.problem
