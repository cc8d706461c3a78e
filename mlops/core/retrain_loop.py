"""One evaluation of a RetrainPolicy as a pure function: ``evaluate(state, config, observation, now)``.

Why it exists: the operator's RetrainPolicy controller (``mlops.operator.retrain``) must be safe to
kill at any instant and must never start two Jobs for one decision, start Jobs faster than the
policy's limits, or lose a blocked trigger. Those are properties of the *state machine*, not of the
API calls, so the state machine lives here, with no clock, no I/O and no randomness: a simulated week
of hourly drift runs in milliseconds against exactly the code the operator runs.

The state is a JSON-serialisable dict the operator keeps in a ConfigMap owned by the policy, written
*before* anything is acted upon. A run goes through these phases::

    Decided  --(its Job is seen)-->  Started  --(Job Complete + valid artifact record)--> Succeeded
       |                               |      --(Job Failed / DeadlineExceeded / deleted / bad record)--> Failed
       +-- the operator creates the Job named in the run (deterministic), as often as it takes

A run counts against the limits from its decision on (``RunRecord.started_at`` is the decision
time): an operator killed between deciding and creating the Job re-creates *the same* Job name on
restart, and an AlreadyExists is success. Decisions use ``mlops.core.retrain_policy.decide`` with the
minimum time between runs measured between starts (a failed run counts, as the CRD says).

Every trigger, block, approval request, approval, rejection, run decision, Job start, Job finish
and candidate is returned as an audit record ``(action, payload)``; the caller appends them to the
hash chain (``mlops.core.audit_chain``). Repeats of the same blocked level-based trigger (drift still
present, still in the cooldown) are counted on the last history entry instead of filling the log;
every manual trigger is audited on its own.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mlops.core.retrain_policy import (
    AWAIT_APPROVAL,
    BLOCKED,
    MANUAL,
    RUN,
    Evidence,
    History,
    PendingTrigger,
    RunRecord,
    decide,
    decide_pending,
    runs_in_window,
)

# The annotations a user sets on the policy (never removed by the operator: a value is acted on once
# and remembered in the state, so setting the same value again does nothing).
ANN_APPROVE = "mlops.duetmind.io/approve"
ANN_REJECT = "mlops.duetmind.io/reject"
ANN_RETRAIN_NOW = "mlops.duetmind.io/retrain-now"

DISABLED = 2**62  # a threshold no evidence reaches
MIN_PREDICTIONS = 100  # monitoring evidence counts only with at least this many predictions
MAX_RUNS_KEPT = 100
MAX_HISTORY = 20
ARTIFACT_URI = re.compile(r"^((file|https?|s3|gs)://|models:/|runs:/).+$")
SHA256 = re.compile(r"^[a-f0-9]{64}$")
FORMATS = ("skops", "joblib")
FINAL_OUTCOMES = ("promoted", "rejected")
HISTORY_KEYS = ("time", "triggerType", "decision", "reason", "runId", "repeats")

# Run phases and results
DECIDED, STARTED, SUCCEEDED, FAILED = "Decided", "Started", "Succeeded", "Failed"


@dataclass(frozen=True)
class LoopConfig:
    """A RetrainPolicy spec as ``decide`` reads it (satisfies ``retrain_policy.PolicyConfig``)."""

    min_new_samples: int = DISABLED
    max_days_without_retrain: float | None = None
    accuracy_degradation_threshold: float = float(DISABLED)
    drift_score_threshold: float = float(DISABLED)
    error_rate_threshold: float = float(DISABLED)
    data_quality_threshold: float = float("-inf")
    min_hours_between_retrains: float = 6.0
    max_retrains_per_day: int = 4
    require_manual_approval: bool = False
    min_predictions: int = MIN_PREDICTIONS
    open_experiment: bool = False
    traffic_split: float = 0.1
    new_data_enabled: bool = False


def config_from_spec(spec: Mapping[str, Any]) -> LoopConfig:
    """From the camelCase spec (defaults applied, as ``RetrainPolicySpec`` dumps it)."""
    triggers = spec.get("triggers") or {}
    limits = spec.get("constraints") or {}
    on_success = spec.get("onSuccess") or {}

    def threshold(name: str, default: float) -> float:
        value = (triggers.get(name) or {}).get("threshold")
        return float(value) if value is not None else default

    new_data = triggers.get("newData")
    schedule = triggers.get("schedule")
    return LoopConfig(
        min_new_samples=int(new_data.get("minNewSamples") or 1000) if new_data is not None else DISABLED,
        new_data_enabled=new_data is not None,
        max_days_without_retrain=float(schedule.get("maxDaysWithoutRetrain") or 7) if schedule is not None else None,
        accuracy_degradation_threshold=threshold("accuracyDrop", 0.05) if "accuracyDrop" in triggers
        and triggers["accuracyDrop"] is not None else float(DISABLED),
        drift_score_threshold=threshold("drift", 0.1) if triggers.get("drift") is not None else float(DISABLED),
        error_rate_threshold=threshold("errorRate", 0.02) if triggers.get("errorRate") is not None else float(DISABLED),
        data_quality_threshold=threshold("dataQuality", 0.95) if triggers.get("dataQuality") is not None
        else float("-inf"),
        min_hours_between_retrains=float(limits.get("minHoursBetweenRetrains", 6)),
        max_retrains_per_day=int(limits.get("maxRetrainsPerDay") or 4),
        require_manual_approval=bool(spec.get("requireApproval")),
        open_experiment=bool(on_success.get("openExperiment")),
        traffic_split=float(on_success.get("trafficSplit", 0.1)),
    )


@dataclass(frozen=True)
class JobView:
    """What the cluster says about a run's Job. ``state``: active, succeeded, failed or missing."""

    state: str
    reason: str = ""
    message: str | None = None  # the training container's termination message (when succeeded)


@dataclass(frozen=True)
class Observation:
    mdep_found: bool = True
    metrics: Mapping[str, Any] | None = None  # the ModelDeployment's status.metrics
    drifting: bool = False  # its Drifting condition is True
    baseline_accuracy: float | None = None  # its spec.monitoring.baselineAccuracy
    annotations: Mapping[str, str] = field(default_factory=dict)
    jobs: Mapping[str, JobView] = field(default_factory=dict)  # job name -> view (unfinished runs)
    candidate_outcomes: Mapping[str, str | None] = field(default_factory=dict)  # run id -> outcome


@dataclass
class Step:
    state: dict[str, Any]
    audit: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.audit)


def rfc3339(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_state(now: float) -> dict[str, Any]:
    return {"seq": 0, "runs": [], "pending": None, "handled": {}, "blocked": {}, "firstStart": now,
            "labelledAtLastRun": None, "lastSuccess": None, "history": [], "approvals": 0}


def job_name(policy: str, seq: int) -> str:
    """Deterministic per decision: ``<policy>-r<seq>`` (fits a DNS label and the job-name label)."""
    base = policy[:50].rstrip("-.") or "rtp"
    return f"{base}-r{seq}"


def approval_id(policy_uid: str, seq: int) -> str:
    """Ids are not guessable from a counter alone (a stale approval cannot name a future request)."""
    import hashlib

    return f"{seq}-{hashlib.sha256(f'{policy_uid}/{seq}'.encode()).hexdigest()[:8]}"


def parse_artifact_record(message: str | None, run_id: str) -> tuple[dict[str, Any] | None, str | None]:
    """(record, None) or (None, why it is refused). The record is what ``mlops train
    --termination-message-path`` writes: uri, sha256, format, metrics (runId optional, must match)."""
    if not message or not message.strip():
        return None, "the training container wrote no artifact record (empty termination message)"
    try:
        value = json.loads(message)
    except ValueError as exc:
        return None, f"the artifact record is not JSON: {exc}"
    if not isinstance(value, dict):
        return None, "the artifact record is not a JSON object"
    uri, sha, fmt = value.get("uri"), value.get("sha256"), value.get("format", "skops")
    if not isinstance(uri, str) or not ARTIFACT_URI.match(uri):
        return None, f"artifact uri {uri!r} is not a file://, http(s)://, s3://, gs://, models:/ or runs:/ URI"
    if not isinstance(sha, str) or not SHA256.match(sha):
        return None, f"artifact sha256 {sha!r} is not 64 lowercase hex digits"
    if fmt not in FORMATS:
        return None, f"artifact format {fmt!r} is not one of {', '.join(FORMATS)}"
    metrics = value.get("metrics") or {}
    if not isinstance(metrics, dict) or not all(
            isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool) for k, v in metrics.items()):
        return None, "artifact metrics must be an object of numbers"
    if value.get("runId") not in (None, run_id):
        return None, f"the artifact record belongs to run {value.get('runId')!r}, not {run_id!r}"
    return {"uri": uri, "sha256": sha, "format": fmt, "metrics": {k: float(v) for k, v in metrics.items()}}, None


# ---------------------------------------------------------------------------------------- helpers
def _records(state: Mapping[str, Any]) -> tuple[RunRecord, ...]:
    out = []
    for run in state["runs"]:
        success = None if run.get("result") is None else run["result"] == SUCCEEDED
        out.append(RunRecord(started_at=float(run["decidedAt"]), finished_at=run.get("finishedAt"), success=success))
    last = state.get("lastSuccess")
    if last and not any(r.success and r.started_at == last["startedAt"] for r in out):
        out.append(RunRecord(started_at=last["startedAt"], finished_at=last.get("finishedAt"), success=True))
    return tuple(out)


def history_of(state: Mapping[str, Any]) -> History:
    pending = state.get("pending")
    return History(runs=_records(state),
                   pending=(PendingTrigger(event_id=int(pending["seq"]), trigger_type=pending["triggerType"],
                                           status=pending["status"]),) if pending else ())


def labelled_total(metrics: Mapping[str, Any] | None) -> int | None:
    value = (metrics or {}).get("labelled")
    return int(value) if isinstance(value, int | float) else None


def evidence_of(state: dict[str, Any], cfg: LoopConfig, obs: Observation, manual: str | None) -> Evidence:
    m = obs.metrics or {}
    new_samples = 0
    total = labelled_total(m)
    if cfg.new_data_enabled and total is not None:
        base = state.get("labelledAtLastRun")
        if base is None or total < base:
            # first sight (what was labelled before the policy existed is not "new"), or the sidecars
            # restarted and their counters began again: count from here
            state["labelledAtLastRun"] = 0 if base is not None else total
            base = state["labelledAtLastRun"]
        new_samples = total - base
    new_samples += int(state.get("newRows") or 0)
    window_labelled = m.get("windowLabelled")
    return Evidence(
        new_samples=new_samples,
        total_predictions=m.get("predictions"),
        accuracy=m.get("windowAccuracy"),
        baseline_accuracy=obs.baseline_accuracy,
        labelled=int(window_labelled) if window_labelled is not None else None,
        drift_score=m.get("driftScore") if obs.drifting else None,
        error_rate=m.get("errorRate"),
        data_quality=m.get("dataQuality"),
        first_start=state.get("firstStart"),
        manual_reason=manual,
    )


class _Ctx:
    def __init__(self, state: dict[str, Any], now: float, policy: str, uid: str, labelled: int | None) -> None:
        self.step = Step(state)
        self.state = state
        self.now = now
        self.policy = policy
        self.uid = uid
        self.labelled = labelled
        self.seen_blocks: set[str] = set()

    def audit(self, action: str, **payload: Any) -> None:
        self.step.audit.append((action, payload))

    def event(self, etype: str, reason: str, message: str) -> None:
        self.step.events.append((etype, reason, message))

    def history(self, trigger: str | None, decision: str, reason: str, run: str | None = None) -> None:
        entry = {"time": rfc3339(self.now), "triggerType": trigger, "decision": decision, "reason": reason[:1000]}
        if run:
            entry["runId"] = run
        self.state["history"] = [entry, *self.state["history"]][:MAX_HISTORY]

    def start_run(self, trigger: str, reason: str, via: str) -> dict[str, Any]:
        self.state["seq"] += 1
        name = job_name(self.policy, self.state["seq"])
        run = {"id": name, "job": name, "seq": self.state["seq"], "trigger": trigger, "reason": reason[:1000],
               "decidedAt": self.now, "phase": DECIDED, "result": None}
        self.state["runs"] = [*self.state["runs"], run][-MAX_RUNS_KEPT:]
        if self.labelled is not None:
            self.state["labelledAtLastRun"] = self.labelled
        self.state["newRows"] = 0  # rows in files up to the decision are this run's data
        self.audit("run_decided", run=name, job=name, trigger=trigger, reason=reason, via=via)
        self.history(trigger, "Started", reason, name)
        self.event("Normal", "RetrainStarted", f"run {name} ({trigger}): {reason}")
        return run

    def block(self, trigger: str, code: str, why: str, reason: str) -> None:
        """A qualifying trigger a constraint forbids. The same (trigger, constraint) blocked at consecutive
        evaluations is one episode: audited once, its repeats counted (a manual trigger is always new)."""
        key = f"{trigger}|{code}"
        episodes = self.state.setdefault("blocked", {}) or {}
        self.state["blocked"] = episodes
        self.seen_blocks.add(key)
        if trigger != MANUAL and key in episodes:
            episodes[key] = int(episodes[key]) + 1  # counted, not re-logged (written when the episode ends)
            return
        if trigger != MANUAL:
            episodes[key] = 0
        self.audit("blocked", trigger=trigger, reason=reason, code=code, blockedBy=why)
        self.history(trigger, "Blocked", f"{reason} -- blocked: {why}")
        self.state["history"][0]["key"] = key
        self.event("Normal", "RetrainBlocked", f"{trigger} blocked ({code}): {why}")

    def end_episodes(self) -> None:
        """Blocks not seen in this evaluation are over: the next one is news again."""
        episodes = self.state.get("blocked") or {}
        for key, repeats in episodes.items():
            if key not in self.seen_blocks and repeats:
                for entry in self.state["history"]:
                    if entry.get("decision") == "Blocked" and entry.get("key") == key:
                        entry["repeats"] = repeats
                        break
        self.state["blocked"] = {k: v for k, v in episodes.items() if k in self.seen_blocks}


# ---------------------------------------------------------------------------------------- the step
def evaluate(state: Mapping[str, Any] | None, cfg: LoopConfig, obs: Observation, now: float, *,
             policy: str, uid: str = "") -> Step:
    """One level-based evaluation. Returns the new state (a copy), the audit records to append (the
    state must be persisted with them *before* acting), and the Events to post."""
    s: dict[str, Any] = json.loads(json.dumps(state)) if state else new_state(now)
    ctx = _Ctx(s, now, policy, uid, labelled_total(obs.metrics))
    if state is None:
        ctx.audit("policy_started", firstStart=now)

    _follow_runs(ctx, cfg, obs)
    _follow_candidates(ctx, obs)
    manual = _annotations(ctx, obs)
    if not obs.mdep_found and manual is None:
        return ctx.step  # nothing to judge: no evidence, and no Job is started for a missing model
    history = history_of(s)

    pending = s.get("pending")
    if pending and pending["status"] == "approved":
        d = decide_pending(PendingTrigger(int(pending["seq"]), pending["triggerType"], "approved"), pending["reason"],
                           history, cfg, now, cooldown_from_start=True)
        if d.action == RUN:
            s["pending"] = None
            ctx.start_run(pending["triggerType"], pending["reason"], via=f"approval {pending['id']}")
            history = history_of(s)
        else:
            ctx.block(pending["triggerType"], d.block_code or "", d.block_reason or "", pending["reason"])

    evidence = evidence_of(s, cfg, obs, manual)
    d = decide(evidence, history, cfg, now, cooldown_from_start=True)
    if d.action == RUN:
        ctx.start_run(d.trigger_type or "", d.reason, via="trigger")
    elif d.action == BLOCKED:
        ctx.block(d.trigger_type or "", d.block_code or "", d.block_reason or "", d.reason)
        for other, _ in d.candidates:  # triggers behind the one judged are blocked alike: their episodes go on
            if f"{other}|{d.block_code}" in (s.get("blocked") or {}):
                ctx.seen_blocks.add(f"{other}|{d.block_code}")
    elif d.action == AWAIT_APPROVAL:
        if s.get("pending"):
            ctx.block(d.trigger_type or "", "approval_pending",
                      f"approval {s['pending']['id']} ({s['pending']['triggerType']}) is pending", d.reason)
        else:
            s["approvals"] = int(s.get("approvals", 0)) + 1
            pid = approval_id(uid or policy, s["approvals"])
            s["pending"] = {"id": pid, "seq": s["approvals"], "triggerType": d.trigger_type, "reason": d.reason[:1000],
                            "requestedAt": now, "status": "pending_approval"}
            ctx.audit("approval_requested", id=pid, trigger=d.trigger_type, reason=d.reason)
            ctx.history(d.trigger_type, "AwaitingApproval", f"{d.reason} -- approve with "
                        f"kubectl annotate rtp {policy} {ANN_APPROVE}={pid}")
            ctx.event("Normal", "ApprovalRequired", f"{d.trigger_type}: {d.reason}; approve with "
                      f"`kubectl annotate rtp {policy} {ANN_APPROVE}={pid}` or reject with {ANN_REJECT}={pid}")
    ctx.end_episodes()
    return ctx.step


def _follow_runs(ctx: _Ctx, cfg: LoopConfig, obs: Observation) -> None:
    s = ctx.state
    for run in s["runs"]:
        if run.get("result") is not None:
            continue
        view = obs.jobs.get(run["job"])
        if view is None:
            continue  # not observed this time (the caller could not read it): nothing is concluded
        if run["phase"] == DECIDED:
            if view.state == "missing":
                continue  # the caller creates it after this state is persisted
            run["phase"] = STARTED
            run["startedAt"] = ctx.now
            ctx.audit("job_started", run=run["id"], job=run["job"])
        if view.state == "active":
            continue
        if view.state == "succeeded":
            record, problem = parse_artifact_record(view.message, run["id"])
            if record is None:
                _finish(ctx, run, FAILED, f"Job complete but {problem}")
                continue
            _finish(ctx, run, SUCCEEDED, "Job complete; artifact record read from the termination message",
                    artifact=record)
            run["candidate"] = {"status": "to_propose" if cfg.open_experiment else "recorded",
                                "openExperiment": cfg.open_experiment, "trafficSplit": cfg.traffic_split}
            if not cfg.open_experiment:
                ctx.audit("candidate_recorded", run=run["id"], uri=record["uri"], sha256=record["sha256"],
                          note="onSuccess.openExperiment is false: no experiment is opened")
        elif view.state == "failed":
            _finish(ctx, run, FAILED, view.reason or "Job failed")
        elif view.state == "missing":
            _finish(ctx, run, FAILED, "the Job was deleted before it finished")


def _finish(ctx: _Ctx, run: dict[str, Any], result: str, reason: str, artifact: dict | None = None) -> None:
    run["result"] = result
    run["phase"] = result
    run["finishedAt"] = ctx.now
    run["message"] = reason[:1000]
    if artifact is not None:
        run["artifact"] = artifact
    if result == SUCCEEDED:
        ctx.state["lastSuccess"] = {"startedAt": float(run["decidedAt"]), "finishedAt": ctx.now, "run": run["id"]}
    ctx.audit("job_finished", run=run["id"], job=run["job"], result=result, reason=reason,
              **({"artifact": artifact} if artifact else {}))
    ctx.history(run["trigger"], result, reason, run["id"])
    ctx.event("Normal" if result == SUCCEEDED else "Warning", f"Retrain{result}", f"run {run['id']}: {reason}")


def _follow_candidates(ctx: _Ctx, obs: Observation) -> None:
    for run in ctx.state["runs"]:
        cand = run.get("candidate") or {}
        if cand.get("status") != "proposed" or cand.get("outcome") in FINAL_OUTCOMES:
            continue
        outcome = obs.candidate_outcomes.get(run["id"])
        if outcome and outcome != cand.get("outcome"):
            cand["outcome"] = outcome
            ctx.audit("candidate_outcome", run=run["id"], version=cand.get("version"), outcome=outcome)
            ctx.event("Normal", f"Candidate{outcome.capitalize()}", f"run {run['id']}: candidate "
                      f"{cand.get('version')} {outcome}")


def record_proposal(state: Mapping[str, Any], run_id: str, *, version: str | None, error: str | None,
                    now: float) -> Step:
    """After ``propose_candidate`` returned (or refused the record): the candidate's fate in state+audit."""
    s: dict[str, Any] = json.loads(json.dumps(state))
    ctx = _Ctx(s, now, "", "", None)
    for run in s["runs"]:
        if run["id"] != run_id:
            continue
        cand = run.setdefault("candidate", {})
        if error is None:
            cand.update(status="proposed", version=version, outcome="candidate")
            ctx.audit("candidate_proposed", run=run_id, version=version, uri=run["artifact"]["uri"],
                      sha256=run["artifact"]["sha256"], openExperiment=cand.get("openExperiment", True),
                      trafficSplit=cand.get("trafficSplit"))
            ctx.event("Normal", "CandidateProposed", f"run {run_id}: candidate version {version} proposed")
        else:
            cand.update(status="refused", error=error[:1000])
            ctx.audit("candidate_refused", run=run_id, error=error)
            ctx.event("Warning", "CandidateRefused", f"run {run_id}: {error}")
    return ctx.step


# ---------------------------------------------------------------------------------------- data files
SCAN_INTERVAL_SECONDS = 300.0


def scan_due(state: Mapping[str, Any], now: float) -> bool:
    return not state.get("scan") and now >= float(state.get("nextScanAt") or 0.0)


def plan_scan(state: Mapping[str, Any], now: float, *, policy: str) -> Step:
    """Decide a scan of ``newData.paths``: a Job named ``<policy>-scan-<n>``, persisted before it is
    created (as for runs: one Job per decision)."""
    s: dict[str, Any] = json.loads(json.dumps(state))
    s["scanSeq"] = int(s.get("scanSeq") or 0) + 1
    base = policy[:44].rstrip("-.") or "rtp"
    s["scan"] = {"job": f"{base}-scan-{s['scanSeq']}", "decidedAt": now}
    return Step(s)


def known_files(state: Mapping[str, Any]) -> dict[str, list[int]]:
    """What the scanner skips: {path: [size, mtime_ns]} of every file already in the ledger."""
    return {path: [int(v[0]), int(v[1])] for path, v in (state.get("files") or {}).items()}


def finish_scan(state: Mapping[str, Any], view: JobView, now: float) -> Step:
    """Fold a finished scan into the ledger: each file counted once (a grown file adds its new rows, a
    file replaced by fewer rows counts afresh). Files seen by the first scan ever are taken as
    already trained on. The report is ``{"files": {path: [size, mtime_ns, rows]}, "more": bool}``."""
    s: dict[str, Any] = json.loads(json.dumps(state))
    ctx = _Ctx(s, now, "", "", None)
    scan = s.pop("scan", None) or {}
    s["scan"] = None
    s["nextScanAt"] = now + SCAN_INTERVAL_SECONDS
    if view.state != "succeeded":
        ctx.event("Warning", "DataScanFailed", f"scan {scan.get('job')}: {view.reason or view.state}")
        return ctx.step
    try:
        report = json.loads(view.message or "")
        files = report["files"]
        if not isinstance(files, dict):
            raise TypeError("files is not an object")
    except (ValueError, KeyError, TypeError):
        ctx.event("Warning", "DataScanFailed", f"scan {scan.get('job')}: unreadable report {str(view.message)[:200]!r}")
        return ctx.step
    ledger = s.setdefault("files", {})
    first = not s.get("filesInitialized")
    new_rows = 0
    for path, value in files.items():
        try:
            size, mtime, rows = int(value[0]), int(value[1]), int(value[2])
        except (TypeError, ValueError, IndexError):
            continue
        prev = ledger.get(path)
        if not first:
            new_rows += rows if prev is None or rows < int(prev[2]) else rows - int(prev[2])
        ledger[path] = [size, mtime, rows]
    s["filesInitialized"] = True
    if report.get("more"):
        s["nextScanAt"] = now  # the report was cut to fit a termination message: look again now
    if new_rows or first:
        s["newRows"] = int(s.get("newRows") or 0) + new_rows
        ctx.audit("data_scanned", job=scan.get("job"), files=len(files), newRows=new_rows,
                  baseline=first, pendingRows=s["newRows"])
    return ctx.step


def material(state: Mapping[str, Any] | None) -> str:
    """The state as persisted, minus the repeat counters of ongoing blocked episodes (which change at
    every evaluation while a trigger stays blocked; writing them each time would cost one API write
    per interval). Persist when this changes."""
    if state is None:
        return ""
    copy = dict(state)
    copy["blocked"] = sorted((state.get("blocked") or {}).keys())
    return json.dumps(copy, sort_keys=True)


def runs_to_create(state: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [r for r in state["runs"] if r.get("result") is None and r["phase"] == DECIDED]


def runs_to_propose(state: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [r for r in state["runs"] if (r.get("candidate") or {}).get("status") == "to_propose"]


def _annotations(ctx: _Ctx, obs: Observation) -> str | None:
    """Act on each annotation value once (approve / reject / retrain-now). Returns a manual reason."""
    s = ctx.state
    handled = s.setdefault("handled", {})
    manual = None
    for ann, verb in ((ANN_REJECT, "reject"), (ANN_APPROVE, "approve")):
        value = (obs.annotations.get(ann) or "").strip()
        if not value or handled.get(verb) == value:
            continue
        handled[verb] = value
        pending = s.get("pending")
        if pending and pending["id"] == value and (verb == "reject" or pending["status"] == "pending_approval"):
            if verb == "approve":
                pending["status"] = "approved"
                ctx.audit("approved", id=value, trigger=pending["triggerType"], reason=pending["reason"])
                ctx.history(pending["triggerType"], "Approved", pending["reason"])
                ctx.event("Normal", "Approved", f"approval {value} ({pending['triggerType']}) granted")
            else:
                s["pending"] = None
                ctx.audit("rejected", id=value, trigger=pending["triggerType"], reason=pending["reason"])
                ctx.history(pending["triggerType"], "Rejected", pending["reason"])
                ctx.event("Normal", "Rejected", f"approval {value} ({pending['triggerType']}) rejected: discarded")
        else:
            current = pending["id"] if pending else "none"
            ctx.audit(f"{verb}_refused", id=value, pending=current)
            ctx.event("Warning", "UnknownApprovalId",
                      f"{verb} annotation names {value!r}, which is not the pending request (pending: {current}); "
                      "nothing changed")
    value = (obs.annotations.get(ANN_RETRAIN_NOW) or "").strip()
    if value and handled.get("retrain-now") != value:
        handled["retrain-now"] = value
        manual = f"manual trigger: {value}"
    return manual


# ---------------------------------------------------------------------------------------- status
def _pruned(value: Any) -> Any:
    """Without None values in nested objects (as the API server stores a merge patch)."""
    if isinstance(value, dict):
        return {k: _pruned(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_pruned(v) for v in value]
    return value


def status_of(state: Mapping[str, Any], now: float, *, audit_entries: int) -> dict[str, Any]:
    """The policy's status (camelCase), recomputed from state at every evaluation. Top-level None
    means "remove the field"; nested objects carry no None values (so an unchanged status compares
    equal to what the API server stored, and is not written again)."""
    runs = state["runs"]
    active = next((r for r in runs if r.get("result") is None), None)
    last = runs[-1] if runs else None
    pending = state.get("pending")
    phase = "Running" if active else "AwaitingApproval" if pending and pending["status"] == "pending_approval" \
        else "Idle"
    candidate = None
    for run in reversed(runs):
        if run.get("candidate"):
            c = run["candidate"]
            candidate = {"runId": run["id"], "uri": run["artifact"]["uri"], "sha256": run["artifact"]["sha256"],
                         "status": c.get("status"), "version": c.get("version"), "outcome": c.get("outcome")}
            break
    return {
        "phase": phase,
        "lastRunTime": rfc3339(last["decidedAt"]) if last else None,
        "lastRunResult": (last.get("result") or "Running") if last else None,
        "runsToday": runs_in_window(_records(state), now),
        "activeJob": active["job"] if active else None,
        "pendingApproval": _pruned({"id": pending["id"], "triggerType": pending["triggerType"], "reason": pending["reason"],
                            "requestedAt": rfc3339(pending["requestedAt"])}) if pending else None,
        "history": [_pruned({k: v for k, v in e.items() if k in HISTORY_KEYS}) for e in state.get("history") or []],
        "lastCandidate": _pruned(candidate),
        "auditEntries": audit_entries,
    }
