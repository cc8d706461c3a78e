"""The RetrainPolicy controller: governed retraining Jobs, an audit log in the cluster, the candidate.

Why a module of its own: a ModelDeployment is a spec turned into objects; a RetrainPolicy is a loop
over time whose decisions (start, block, wait for a human) must never be taken twice, never be lost
and be provable afterwards. Shape, as for ABExperiments (``mlops.operator.experiments``):

- level-based: every interval, and on every change of the policy, of its ModelDeployment (its
  ``status.metrics`` and ``Drifting`` condition are the evidence) or of one of its Jobs, the policy is
  evaluated by the pure state machine ``mlops.core.retrain_loop.evaluate`` with the operator's clock;
- status only: the spec and the annotations are never written. Annotations are commands acted on
  once per value (``approve=<id>``, ``reject=<id>``, ``retrain-now=<reason>``);
- persisted before acted upon: the state and the hash-chained audit log live in one ConfigMap owned
  by the policy (``<policy>-retrain-audit``, keys ``state.json`` and ``audit.jsonl``), written before
  a Job is created, before status is written and after every finished step. A decision names its Job
  (``<policy>-r<n>``); an operator killed between deciding and creating re-creates the same name on
  restart, and AlreadyExists of a Job it owns is success: one Job per decision;
- the result: the training container writes its artifact record (``mlops train
  --termination-message-path``) to its termination message; the operator reads it from the pod's
  ``status.containerStatuses[].state.terminated.message`` (no exec, no logs), validates it and hands
  it to ``mlops.operator.candidates.propose_candidate`` when ``onSuccess.openExperiment`` (else it is
  only recorded in status). A failed, deadline-exceeded or deleted Job is a failed run.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from mlops.core import audit_chain
from mlops.core import retrain_loop as rl
from mlops.operator import candidates
from mlops.operator.api import RetrainPolicySpec
from mlops.operator.k8s import KubeError
from mlops.operator.periodic import PeriodicEvaluator, run_in_background
from mlops.operator.resources import naming as n
from mlops.operator.status import set_condition

log = logging.getLogger("mlops.operator.retrain")
Key = tuple[str, str]
KIND = "RetrainPolicy"
PLURAL = "retrainpolicies"
STATE_KEY = "state.json"
AUDIT_KEY = "audit.jsonl"
LABEL_POLICY = f"{n.GROUP}/retrainpolicy"
LABEL_RUN = f"{n.GROUP}/retrain-run"
DEFAULT_ARTIFACT_BASE = "/artifacts"
DEFAULT_INTERVAL = 10.0


def audit_configmap_name(policy: str) -> str:
    return n.dns_label(f"{policy}-retrain-audit", 253)


def _owned_by(obj: Mapping[str, Any] | None, uid: str) -> bool:
    return obj is not None and any(r.get("uid") == uid for r in (obj.get("metadata") or {}).get("ownerReferences") or [])


def _owner_ref(cr: Mapping[str, Any]) -> dict[str, Any]:
    meta = cr["metadata"]
    return {"apiVersion": n.API_VERSION, "kind": KIND, "name": meta["name"], "uid": meta["uid"],
            "controller": True, "blockOwnerDeletion": True}


def build_job(cr: Mapping[str, Any], spec: Mapping[str, Any], run: Mapping[str, Any], model_name: str) -> dict[str, Any]:
    """The Job of one run, from ``spec.jobTemplate`` (pure). The operator adds its labels, the owner
    reference and the environment the training container needs; it defaults ``restartPolicy: Never``
    and ``backoffLimit: 0`` (a failed training is a failed run, not a silent retry) unless set."""
    meta = cr["metadata"]
    template = copy.deepcopy(spec.get("jobTemplate") or {})
    tmeta = template.get("metadata") or {}
    job_spec = template.get("spec") or {}
    ours = {"app.kubernetes.io/managed-by": n.MANAGED_BY, "app.kubernetes.io/part-of": n.PART_OF,
            "app.kubernetes.io/component": "retrain", LABEL_POLICY: n.label_value(meta["name"]),
            LABEL_RUN: n.label_value(run["id"])}
    pod = job_spec.setdefault("template", {})
    pod_meta = pod.setdefault("metadata", {})
    pod_meta["labels"] = {**(pod_meta.get("labels") or {}), **ours}
    pod_spec = pod.setdefault("spec", {})
    pod_spec.setdefault("restartPolicy", "Never")
    job_spec.setdefault("backoffLimit", 0)
    for container in pod_spec.get("containers") or []:
        env = [e for e in container.get("env") or [] if isinstance(e, dict)]
        base = next((e.get("value") for e in env if e.get("name") == "MLOPS_ARTIFACT_DIR" and e.get("value")),
                    DEFAULT_ARTIFACT_BASE)
        ours_env = {
            "MLOPS_RUN_ID": run["id"],
            "MLOPS_TRIGGER": run["trigger"],
            "MLOPS_TRIGGER_REASON": run["reason"][:1000],
            "MLOPS_MODEL_NAME": model_name,
            "MLOPS_MODEL_DEPLOYMENT": spec["modelDeployment"],
            "MLOPS_RETRAIN_POLICY": meta["name"],
            "MLOPS_ARTIFACT_DIR": f"{base.rstrip('/')}/{run['id']}",
            "MLOPS_TERMINATION_MESSAGE_PATH": container.get("terminationMessagePath") or "/dev/termination-log",
        }
        container["env"] = [e for e in env if e.get("name") not in ours_env] + [
            {"name": k, "value": v} for k, v in ours_env.items()]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": run["job"],
            "namespace": meta["namespace"],
            "labels": {**(tmeta.get("labels") or {}), **ours},
            "annotations": {**(tmeta.get("annotations") or {}), f"{n.GROUP}/trigger": run["trigger"],
                            f"{n.GROUP}/trigger-reason": run["reason"][:1000]},
            "ownerReferences": [_owner_ref(cr)],
        },
        "spec": job_spec,
    }


def build_scan_job(cr: Mapping[str, Any], spec: Mapping[str, Any], scan: Mapping[str, Any],
                   known: Mapping[str, Any]) -> dict[str, Any]:
    """The data-scan Job (pure): the training pod's spec (same image, volumes, node placement, service
    account) running ``mlops retrain scan-data`` on ``newData.paths``, reporting through its
    termination message what the operator's ledger does not know yet."""
    meta = cr["metadata"]
    new_data = (spec.get("triggers") or {}).get("newData") or {}
    pod_spec = copy.deepcopy(((spec.get("jobTemplate") or {}).get("spec") or {}).get("template", {}).get("spec") or {})
    first = (pod_spec.get("containers") or [{}])[0]
    command = ["mlops", "retrain", "scan-data", "--termination-message-path", "/dev/termination-log"]
    for path in new_data.get("paths") or []:
        command += ["--path", path]
    for pattern in new_data.get("filePatterns") or []:
        command += ["--pattern", pattern]
    container = {"name": "scan", "image": first.get("image", ""), "command": command,
                 "env": [{"name": "MLOPS_SCAN_KNOWN", "value": json.dumps(dict(known), separators=(",", ":"))}],
                 "volumeMounts": first.get("volumeMounts") or [],
                 "terminationMessagePath": "/dev/termination-log"}
    if first.get("securityContext"):
        container["securityContext"] = first["securityContext"]
    pod_spec["containers"] = [container]
    pod_spec.pop("initContainers", None)
    pod_spec["restartPolicy"] = "Never"
    template_meta = copy.deepcopy(((spec.get("jobTemplate") or {}).get("spec") or {}).get("template", {})
                                  .get("metadata") or {})
    labels = {"app.kubernetes.io/managed-by": n.MANAGED_BY, "app.kubernetes.io/part-of": n.PART_OF,
              "app.kubernetes.io/component": "retrain-scan", LABEL_POLICY: n.label_value(meta["name"])}
    template_meta["labels"] = {**(template_meta.get("labels") or {}), **labels}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": scan["job"], "namespace": meta["namespace"], "labels": labels,
                     "ownerReferences": [_owner_ref(cr)]},
        "spec": {"backoffLimit": 0, "activeDeadlineSeconds": 600,
                 "template": {"metadata": template_meta, "spec": pod_spec}},
    }


def job_view(job: Mapping[str, Any] | None, pods: list[dict[str, Any]] | None) -> rl.JobView:
    """What a Job (and, when it completed, its pods' termination messages) says about a run."""
    if job is None:
        return rl.JobView("missing")
    if (job.get("metadata") or {}).get("deletionTimestamp"):
        return rl.JobView("missing")
    conditions = {c.get("type"): c for c in (job.get("status") or {}).get("conditions") or []
                  if c.get("status") == "True"}
    if "Failed" in conditions:
        c = conditions["Failed"]
        return rl.JobView("failed", f"{c.get('reason') or 'Failed'}: {c.get('message') or 'the Job failed'}")
    if "Complete" in conditions:
        message = None
        for pod in pods or []:
            if (pod.get("status") or {}).get("phase") != "Succeeded":
                continue
            for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                text = ((cs.get("state") or {}).get("terminated") or {}).get("message")
                if text and text.strip():
                    message = text
                    break
            if message:
                break
        return rl.JobView("succeeded", message=message)
    return rl.JobView("active")


class RetrainController(PeriodicEvaluator):
    """Evaluates RetrainPolicies; shares the ModelDeployment Controller's Kube, clock and Events.

    ``propose`` / ``outcome`` default to ``mlops.operator.candidates.propose_candidate`` /
    ``candidate_outcome`` (same signatures)."""

    TICK = 0.1

    def __init__(self, controller: Any, *, propose: Callable[..., str] | None = None,
                 outcome: Callable[..., str | None] | None = None) -> None:
        super().__init__(controller)
        self.kube = controller.kube
        self.propose = propose or candidates.propose_candidate
        self.outcome = outcome or candidates.candidate_outcome
        # (uid, state, audit, ConfigMap resourceVersion): writes are conditional on that version, so an
        # edit made by anyone else is never overwritten (409: re-read, and the edit stays visible)
        self.memory: dict[Key, tuple[str, dict[str, Any] | None, list[dict[str, Any]], str | None]] = {}
        # the audit chain's verification when it was read from the ConfigMap (what this process appends
        # afterwards is valid by construction: not re-hashed at every evaluation)
        self.chain: dict[Key, audit_chain.Verification] = {}

    # ---- the ConfigMap: state + audit ---------------------------------------------------------
    def load(self, cr: Mapping[str, Any]) -> tuple[dict[str, Any] | None, list[dict[str, Any]], str | None]:
        """(state, audit, problem). A ConfigMap of that name not owned by this policy is never touched."""
        meta = cr["metadata"]
        key = (meta["namespace"], meta["name"])
        hit = self.memory.get(key)
        if hit is not None and hit[0] == meta["uid"]:
            return hit[1], hit[2], None
        cm = self.kube.get("ConfigMap", meta["namespace"], audit_configmap_name(meta["name"]))
        if cm is not None and not _owned_by(cm, meta["uid"]):
            return None, [], (f"ConfigMap {meta['namespace']}/{audit_configmap_name(meta['name'])} exists and is not "
                              "owned by this policy: it keeps the policy's state and audit, so nothing is decided")
        data = (cm or {}).get("data") or {}
        state = json.loads(data[STATE_KEY]) if data.get(STATE_KEY) else None
        audit = audit_chain.loads(data.get(AUDIT_KEY) or "")
        self.memory[key] = (meta["uid"], state, audit, (cm or {}).get("metadata", {}).get("resourceVersion"))
        self.chain[key] = audit_chain.verify(audit)
        return state, audit, None

    def save(self, cr: Mapping[str, Any], state: dict[str, Any], audit: list[dict[str, Any]]) -> None:
        """Write state + audit, conditional on the version last read or written (409 when someone
        else changed the ConfigMap: the caller re-reads it and evaluates again)."""
        meta = cr["metadata"]
        key = (meta["namespace"], meta["name"])
        rv = (self.memory.get(key) or (None, None, None, None))[3]
        written = self.kube.apply({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": audit_configmap_name(meta["name"]),
                "namespace": meta["namespace"],
                "labels": {"app.kubernetes.io/managed-by": n.MANAGED_BY, "app.kubernetes.io/part-of": n.PART_OF,
                           LABEL_POLICY: n.label_value(meta["name"])},
                "ownerReferences": [_owner_ref(cr)],
            },
            "data": {STATE_KEY: json.dumps(state, sort_keys=True, separators=(",", ":")),
                     AUDIT_KEY: audit_chain.dumps(audit)},
        }, resource_version=rv)
        self.memory[key] = (meta["uid"], state, audit, ((written or {}).get("metadata") or {}).get("resourceVersion"))

    def commit(self, cr: Mapping[str, Any], before: dict[str, Any] | None, audit: list[dict[str, Any]],
               step: rl.Step, now: float) -> list[dict[str, Any]]:
        """Append the step's audit records and persist (when anything material changed); then Events."""
        new_audit = list(audit)
        for action, payload in step.audit:
            audit_chain.append(new_audit, now, action, payload)
        if step.audit or rl.material(before) != rl.material(step.state):
            self.save(cr, step.state, new_audit)
        else:
            meta = cr["metadata"]
            key = (meta["namespace"], meta["name"])
            self.memory[key] = (meta["uid"], step.state, new_audit, (self.memory.get(key) or (0, 0, 0, None))[3])
        for etype, reason, message in step.events:
            self.c._event(cr, etype, reason, message)
        return new_audit

    # ---- observation ----------------------------------------------------------------------------
    def _jobs(self, cr: Mapping[str, Any], state: Mapping[str, Any] | None) -> dict[str, rl.JobView]:
        out: dict[str, rl.JobView] = {}
        ns, uid = cr["metadata"]["namespace"], cr["metadata"]["uid"]
        for run in (state or {}).get("runs", []):
            if run.get("result") is not None:
                continue
            job = self.kube.get("Job", ns, run["job"])
            if job is not None and not _owned_by(job, uid):
                if run["phase"] == rl.DECIDED:
                    continue  # someone else's Job holds the name: wait (reported when creating)
                job = None  # ours was replaced: ours is gone
            pods = None
            if job is not None and any(c.get("type") == "Complete" and c.get("status") == "True"
                                       for c in (job.get("status") or {}).get("conditions") or []):
                pods = [p for p in self.kube.list("Pod", ns, f"job-name={run['job']}")
                        if any(r.get("uid") == job["metadata"]["uid"]
                               for r in (p.get("metadata") or {}).get("ownerReferences") or [])]
            out[run["job"]] = job_view(job, pods)
        return out

    def _outcomes(self, cr: Mapping[str, Any], spec: Mapping[str, Any], state: Mapping[str, Any] | None
                  ) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        for run in (state or {}).get("runs", []):
            cand = run.get("candidate") or {}
            if cand.get("status") == "proposed" and cand.get("outcome") not in rl.FINAL_OUTCOMES:
                out[run["id"]] = self.outcome(self.kube, namespace=cr["metadata"]["namespace"],
                                              model_deployment=spec["modelDeployment"], run_id=run["id"])
        return out

    # ---- one evaluation -------------------------------------------------------------------------
    def evaluate_sync(self, namespace: str, name: str) -> str | None:
        cr = self.kube.get(KIND, namespace, name)
        if cr is None or cr["metadata"].get("deletionTimestamp"):
            return None
        cr.setdefault("kind", KIND)
        cr.setdefault("apiVersion", n.API_VERSION)
        self.known[(namespace, name)] = cr
        now = self.c.clock()
        try:
            spec = RetrainPolicySpec.model_validate(cr.get("spec") or {}).model_dump(by_alias=True, mode="json")
        except ValueError as exc:
            return self._failed(cr, "InvalidSpec", f"invalid spec: {exc}"[:1000], now)
        if not spec.get("jobTemplate") or not (spec["jobTemplate"].get("spec") or {}).get("template"):
            return self._failed(cr, "NoJobTemplate", "spec.jobTemplate.spec.template is required to run retraining "
                                "Jobs; nothing is decided without it", now)
        state, audit, problem = self.load(cr)
        if problem:
            return self._failed(cr, "ResourceConflict", problem, now)
        broken = self.chain.get((namespace, name)) or audit_chain.Verification(True, len(audit))
        cfg = rl.config_from_spec(spec)
        mdep = self.kube.get_mdep(namespace, spec["modelDeployment"])
        mstatus = (mdep or {}).get("status") or {}
        obs = rl.Observation(
            mdep_found=mdep is not None,
            metrics=mstatus.get("metrics"),
            drifting=any(c.get("type") == "Drifting" and c.get("status") == "True" for c in mstatus.get("conditions") or []),
            baseline_accuracy=(((mdep or {}).get("spec") or {}).get("monitoring") or {}).get("baselineAccuracy"),
            annotations=dict(cr["metadata"].get("annotations") or {}),
            jobs=self._jobs(cr, state),
            candidate_outcomes=self._outcomes(cr, spec, state),
        )
        scanning = bool((spec["triggers"].get("newData") or {}).get("paths"))
        if scanning and state is not None:
            state, audit = self._follow_scan(cr, state, audit, now)
        step = rl.evaluate(state, cfg, obs, now, policy=name, uid=cr["metadata"]["uid"])
        audit = self.commit(cr, state, audit, step, now)  # persisted before anything is created
        state = step.state
        if scanning and rl.scan_due(state, now):
            step = rl.plan_scan(state, now, policy=name)
            audit = self.commit(cr, state, audit, step, now)  # persisted before the scan Job is created
            state = step.state
        if scanning and state.get("scan") and not state["scan"].get("created"):
            self._create_scan(cr, spec, state)
        model_name = ((mdep or {}).get("spec") or {}).get("modelName") or spec["modelDeployment"]
        conflicts: list[str] = []
        for run in rl.runs_to_create(state):
            conflict = self._create_job(cr, spec, run, model_name)
            if conflict:
                conflicts.append(conflict)
        for run in rl.runs_to_propose(state):
            version, error = None, None
            try:
                version = self.propose(
                    self.kube, namespace=namespace, model_deployment=spec["modelDeployment"], policy=name,
                    run_id=run["id"], uri=run["artifact"]["uri"], sha256=run["artifact"]["sha256"],
                    format=run["artifact"].get("format", "skops"), metrics=run["artifact"].get("metrics"),
                    open_experiment=True, traffic_split=cfg.traffic_split)
            except ValueError as exc:
                error = f"candidate refused: {exc}"
            before = state
            step = rl.record_proposal(state, run["id"], version=version, error=error, now=self.c.clock())
            audit = self.commit(cr, before, audit, step, now)
            state = step.state
        reason, message, ok = "Evaluated", "triggers evaluated", True
        if mdep is None:
            reason, message, ok = "ModelDeploymentNotFound", f"ModelDeployment {spec['modelDeployment']} not found", False
        elif conflicts:
            reason, message, ok = "ResourceConflict", "; ".join(conflicts), False
        elif not broken.ok:
            reason, message, ok = "AuditChainBroken", (f"audit entry {broken.first_bad_id}: {broken.problem} "
                                                       "(the chain continues; verify-audit reports it)"), False
        status = rl.status_of(state, now, audit_entries=len(audit))
        self._write(cr, status, ok, reason, message, now)
        return status["phase"]

    def _follow_scan(self, cr: Mapping[str, Any], state: dict[str, Any], audit: list[dict[str, Any]],
                     now: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Read a finished data-scan Job into the ledger (then delete it)."""
        scan = state.get("scan")
        if not scan:
            return state, audit
        ns, uid = cr["metadata"]["namespace"], cr["metadata"]["uid"]
        job = self.kube.get("Job", ns, scan["job"])
        if job is not None and not _owned_by(job, uid):
            job = None
        if job is None and not scan.get("created"):
            return state, audit  # decided, not created yet: created after this evaluation
        if job is not None and not scan.get("created"):
            before = state
            state = {**state, "scan": {**scan, "created": True}}
            audit = self.commit(cr, before, audit, rl.Step(state), now)
        pods = None
        if job is not None and any(c.get("type") == "Complete" and c.get("status") == "True"
                                   for c in (job.get("status") or {}).get("conditions") or []):
            pods = [p for p in self.kube.list("Pod", ns, f"job-name={scan['job']}")
                    if _owned_by(p, job["metadata"]["uid"])]
        view = job_view(job, pods)
        if view.state == "active":
            return state, audit
        step = rl.finish_scan(state, view, now)
        audit = self.commit(cr, state, audit, step, now)
        if job is not None:
            self.kube.delete("Job", ns, scan["job"], uid=job["metadata"]["uid"])
        return step.state, audit

    def _create_scan(self, cr: Mapping[str, Any], spec: Mapping[str, Any], state: Mapping[str, Any]) -> None:
        try:
            self.kube.create(build_scan_job(cr, spec, state["scan"], rl.known_files(state)))
        except KubeError as exc:
            if exc.status != 409:
                raise

    def _create_job(self, cr: Mapping[str, Any], spec: Mapping[str, Any], run: Mapping[str, Any],
                    model_name: str) -> str | None:
        job = build_job(cr, spec, run, model_name)
        meta = cr["metadata"]
        try:
            self.kube.create(job)
            log.info("created retraining Job %s/%s (%s)", meta["namespace"], run["job"], run["trigger"])
            return None
        except KubeError as exc:
            if exc.status != 409:
                raise
        existing = self.kube.get("Job", meta["namespace"], run["job"])
        if existing is None or _owned_by(existing, meta["uid"]):
            return None  # ours already (a restart after the create), or gone: the next evaluation looks again
        message = f"Job {meta['namespace']}/{run['job']} exists and is not owned by this policy; run {run['id']} waits"
        self.c._event(cr, "Warning", "ResourceConflict", message)
        return message

    def _failed(self, cr: Mapping[str, Any], reason: str, message: str, now: float) -> str:
        old = cr.get("status") or {}
        status = {k: old.get(k) for k in old if k not in ("conditions", "phase", "observedGeneration")}
        status["phase"] = "Failed"
        if self._write(cr, status, False, reason, message, now):
            self.c._event(cr, "Warning", reason, message)
        return "Failed"

    def _write(self, cr: Mapping[str, Any], status: dict[str, Any], ok: bool, reason: str, message: str,
               now: float) -> bool:
        old = cr.get("status") or {}
        generation = cr["metadata"].get("generation")
        status = dict(status)
        status["observedGeneration"] = generation
        status["conditions"] = set_condition(old.get("conditions") or [], "Ready", ok, reason, message,
                                             now=rl.rfc3339(now) or "", generation=generation)
        keys = set(old) | set(status)
        if all(old.get(k) == status.get(k) for k in keys):
            return False
        patch = {k: status.get(k) for k in keys}  # None deletes (merge patch)
        meta = cr["metadata"]
        updated = self.kube.patch_status(meta["namespace"], meta["name"], patch, uid=meta.get("uid"), kind=KIND)
        if isinstance(updated, dict) and updated.get("metadata"):
            self.known[(meta["namespace"], meta["name"])] = {**updated, "kind": KIND, "apiVersion": n.API_VERSION}
        return True

    # ---- async plumbing -------------------------------------------------------------------------
    async def evaluate(self, key: Key) -> None:
        if not self.c.active:
            return
        async with self.lock(key):
            try:
                await asyncio.to_thread(self.evaluate_sync, *key)
            except KubeError as exc:
                self.c.metrics.errors.labels("retrain").inc()
                self.memory.pop(key, None)  # re-read the ConfigMap: a write may have failed half-way
                log.warning("evaluation of retrain policy %s/%s failed: %s", key[0], key[1], exc)
            except Exception:  # one policy must never stop the loop
                self.c.metrics.errors.labels("retrain").inc()
                self.memory.pop(key, None)
                log.exception("evaluation of retrain policy %s/%s crashed", key[0], key[1])
        self._next[key] = min(self._next.get(key, float("inf")), self.c.clock() + self.interval(key))

    def interval(self, key: Key) -> float:
        return float(self.c.config.metrics_interval or DEFAULT_INTERVAL)

    def wake_for_mdep(self, namespace: str, mdep: str) -> None:
        for key, cr in list(self.known.items()):
            if key[0] == namespace and (cr.get("spec") or {}).get("modelDeployment") == mdep:
                self._next[key] = 0.0

    def forget(self, key: Key) -> None:
        self.known.pop(key, None)
        self.memory.pop(key, None)
        self.chain.pop(key, None)
        self.unschedule(key)


def register(registry: Any, controller: Any) -> RetrainController:
    """Add the RetrainPolicy handlers to the operator's kopf registry."""
    import kopf

    retrain = RetrainController(controller)
    controller.retrain = retrain
    run_in_background(registry, "retrain", retrain)

    @kopf.on.event(n.GROUP, n.VERSION, PLURAL, registry=registry)
    async def retrainpolicy_event(event: Mapping[str, Any], body: Any, namespace: str, name: str, **_: Any) -> None:
        key = (namespace, name)
        if event.get("type") == "DELETED":
            retrain.forget(key)
            return
        previous = retrain.known.get(key)
        retrain.known[key] = {**dict(body), "kind": KIND, "apiVersion": n.API_VERSION}
        meta = dict(body.get("metadata") or {})
        if previous is None or previous.get("spec") != dict(body.get("spec") or {}) or (
                (previous.get("metadata") or {}).get("annotations") != meta.get("annotations")):
            retrain._next[key] = 0.0  # new, edited or annotated: evaluate at the next tick

    @kopf.on.event(n.GROUP, n.VERSION, n.PLURAL, registry=registry)
    async def retrain_mdep_event(event: Mapping[str, Any], body: Any, namespace: str, name: str, **_: Any) -> None:
        retrain.wake_for_mdep(namespace, name)  # new evidence (status.metrics, Drifting) is judged now

    @kopf.on.event("batch", "v1", "jobs", labels={LABEL_POLICY: kopf.PRESENT}, registry=registry)
    async def retrain_job_event(event: Mapping[str, Any], body: Any, namespace: str, **_: Any) -> None:
        for ref in (body.get("metadata") or {}).get("ownerReferences") or []:
            if ref.get("kind") == KIND and ref.get("controller"):
                retrain.wake((namespace, ref.get("name")))

    return retrain
