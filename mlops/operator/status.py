"""Pure status computation: observed objects + plan (+ collected metrics) -> the status to write.

Kept free of I/O and clocks (``now`` is passed in as an RFC 3339 string) so every phase/condition
transition is unit-tested without a cluster.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mlops.operator.resources import naming as n

CONDITION_TYPES = ("Ready", "Progressing", "Degraded", "Drifting")


def set_condition(
    conditions: Sequence[Mapping[str, Any]],
    ctype: str,
    status: bool,
    reason: str,
    message: str,
    *,
    now: str,
    generation: int | None,
) -> list[dict[str, Any]]:
    """Return ``conditions`` with ``ctype`` set; lastTransitionTime only moves when status flips."""
    value = "True" if status else "False"
    out: list[dict[str, Any]] = []
    found = False
    for cond in conditions:
        cond = dict(cond)
        if cond.get("type") == ctype:
            found = True
            if cond.get("status") != value:
                cond["lastTransitionTime"] = now
            cond.update(status=value, reason=reason, message=message[:1024])
            if generation is not None:
                cond["observedGeneration"] = generation
        out.append(cond)
    if not found:
        cond = {"type": ctype, "status": value, "reason": reason, "message": message[:1024], "lastTransitionTime": now}
        if generation is not None:
            cond["observedGeneration"] = generation
        out.append(cond)
    order = {t: i for i, t in enumerate(CONDITION_TYPES)}
    return sorted(out, key=lambda c: order.get(c["type"], len(order)))


def condition_status(conditions: Sequence[Mapping[str, Any]], ctype: str) -> str | None:
    for cond in conditions:
        if cond.get("type") == ctype:
            return cond.get("status")
    return None


def _ready(dep: Mapping[str, Any] | None, want: int) -> tuple[int, bool]:
    """(ready replicas, rollout complete) of an observed Deployment."""
    if not dep:
        return 0, False
    st = dep.get("status") or {}
    ready = int(st.get("readyReplicas") or 0)
    updated = int(st.get("updatedReplicas") or 0)
    total = int(st.get("replicas") or 0)
    current = st.get("observedGeneration", 0) >= (dep.get("metadata") or {}).get("generation", 0)
    return ready, current and ready >= want and updated >= want and total <= want


def _wanted_replicas(v: Mapping[str, Any], dep: Mapping[str, Any] | None) -> int:
    """Replicas a version should have: the spec's, or with autoscaling what the HPA set (min as floor)."""
    auto = v.get("autoscaling")
    if not auto:
        return int(v["replicas"])
    live = ((dep or {}).get("spec") or {}).get("replicas")
    return int(live) if live is not None else int(auto.get("minReplicas", 1))


def reconcile_status(
    cr: Mapping[str, Any],
    *,
    plan: Any | None,
    error: str | None,
    deployments: Mapping[str, Mapping[str, Any]],
    now: str,
    conflicts: Sequence[str] = (),
    errors: Sequence[str] = (),
    problems: Mapping[str, tuple[str, str]] | None = None,
    artifact_checks: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Status fields owned by reconciliation (everything except metrics/alerts/Drifting).

    ``plan`` is the builder's Plan (None when the spec was unusable, then ``error`` says why);
    ``deployments`` maps Deployment name -> the observed Deployment object; ``conflicts`` are objects
    left untouched because another owner controls them; ``errors`` are failed API writes (each names
    its object); ``problems`` maps a version name (or "router") to the (reason, message) that explains
    why its pods are not ready; ``artifact_checks`` maps a version to the operator's ArtifactCheck.
    """
    meta = cr["metadata"]
    generation = meta.get("generation")
    old = cr.get("status") or {}
    conditions = list(old.get("conditions") or [])
    status: dict[str, Any] = {"observedGeneration": generation}
    problems = problems or {}
    if plan is None:
        conditions = set_condition(conditions, "Ready", False, "InvalidSpec", error or "invalid spec", now=now, generation=generation)
        conditions = set_condition(conditions, "Progressing", False, "InvalidSpec", error or "", now=now, generation=generation)
        conditions = set_condition(conditions, "Degraded", True, "InvalidSpec", error or "", now=now, generation=generation)
        status.update(phase="Failed", conditions=conditions)
        return status

    name = meta["name"]
    versions_status = []
    all_complete = True
    any_ready = False
    pending: list[str] = []
    stable_ready = 0
    for v in plan.spec["versions"]:
        vname = v["name"]
        dep = deployments.get(n.version_object_name(name, vname))
        want = _wanted_replicas(v, dep)
        ready, complete = _ready(dep, want)
        entry = {"name": vname, "replicas": want, "readyReplicas": ready, "sha256": v["artifact"]["sha256"]}
        if dep:
            entry["sha256"] = ((dep.get("metadata") or {}).get("annotations") or {}).get(n.ANN_ARTIFACT_SHA256, entry["sha256"])
        versions_status.append(entry)
        if vname == plan.effective_stable:
            stable_ready = ready
        if vname in plan.served_versions:
            any_ready = any_ready or ready > 0
            if not complete:
                all_complete = False
                why = problems.get(vname)
                pending.append(f"{vname} {ready}/{want}" + (f" ({why[0]}: {why[1]})" if why else ""))
    router_ready, router_complete = _ready(deployments.get(n.router_name(name)), 1)
    if plan.effective_stable is not None and not router_complete:
        all_complete = False
        why = problems.get("router")
        pending.append(f"router {router_ready}/1" + (f" ({why[0]}: {why[1]})" if why else ""))

    held = plan.held_versions
    degraded_parts: list[tuple[str, str]] = []
    if conflicts:
        degraded_parts.append(("ResourceConflict", "; ".join(conflicts)))
    if errors:
        reason = "PruneFailed" if all(e.startswith("prune ") for e in errors) else "ApplyFailed"
        degraded_parts.append((reason, "; ".join(errors)))
    if held:
        degraded_parts.append(("ArtifactVerificationFailed", "; ".join(f"{v}: {why}" for v, why in sorted(held.items()))))
    degraded = bool(degraded_parts)
    if degraded:
        message = " | ".join(msg for _, msg in degraded_parts)
        conditions = set_condition(conditions, "Degraded", True, degraded_parts[0][0], message, now=now, generation=generation)
    else:
        conditions = set_condition(conditions, "Degraded", False, "AsExpected", _artifact_summary(plan, artifact_checks),
                                   now=now, generation=generation)
    stable_serving = plan.effective_stable is not None and stable_ready > 0
    if all_complete and plan.served_versions and stable_serving:
        conditions = set_condition(conditions, "Progressing", False, "RolloutComplete", "all replicas updated and ready", now=now, generation=generation)
        conditions = set_condition(conditions, "Ready", True, "AllReplicasReady", f"serving {plan.effective_stable} at {plan.url}", now=now, generation=generation)
    elif all_complete and plan.served_versions:
        msg = f"stable version {plan.effective_stable} has no ready replicas (replicas: 0)"
        conditions = set_condition(conditions, "Progressing", False, "RolloutComplete", "all replicas updated and ready", now=now, generation=generation)
        conditions = set_condition(conditions, "Ready", False, "StableVersionNotServing", msg, now=now, generation=generation)
    else:
        msg = "waiting for " + ", ".join(pending) if pending else "no version can be served"
        first_problem = next((problems[k] for k in [*plan.served_versions, "router"] if k in problems), None)
        ready_reason = first_problem[0] if first_problem else ("ReplicasNotReady" if plan.served_versions else "NothingToServe")
        conditions = set_condition(conditions, "Progressing", bool(plan.served_versions), "RollingOut" if plan.served_versions else "NothingToServe", msg, now=now, generation=generation)
        conditions = set_condition(conditions, "Ready", False, ready_reason, msg, now=now, generation=generation)

    if not plan.served_versions:
        phase = "Failed"
    elif degraded or (all_complete and not stable_serving):
        phase = "Degraded"
    elif all_complete:
        phase = "Ready"
    elif any_ready or deployments:
        phase = "Progressing"
    else:
        phase = "Pending"
    # The router serves the new table only once its rollout (keyed by the table's hash) is complete.
    current = plan.effective_stable if router_complete else old.get("currentVersion")
    status.update(
        phase=phase,
        conditions=conditions,
        url=plan.url,
        currentVersion=current,
        versions=versions_status,
    )
    return status


def _artifact_summary(plan: Any, checks: Mapping[str, Any] | None) -> str:
    """'verified' only for versions whose sha256 the operator actually checked."""
    checks = checks or {}
    verified = [v for v in plan.served_versions if getattr(checks.get(v), "ok", None) is True]
    unverified = [v for v in plan.served_versions if v not in verified]
    if not unverified:
        return f"all artifacts verified by the operator (sha256): {', '.join(verified)}"
    parts = []
    if verified:
        parts.append(f"sha256 verified by the operator: {', '.join(verified)}")
    detail = "; ".join(f"{v}: {getattr(checks.get(v), 'reason', '') or 'not checked'}" for v in unverified)
    parts.append(f"not verified by the operator (the init container checks the sha256 before loading): {detail}")
    return "no problems; " + "; ".join(parts)


def is_drifting(metrics: Mapping[str, Any], thresholds: Mapping[str, float]) -> bool:
    """Drift as the status reports it: a named drifted feature, or a drift score at the threshold."""
    score = metrics.get("driftScore")
    return bool(metrics.get("driftedFeatures")) or (score is not None and score >= thresholds["driftThreshold"])


def evaluate_alerts(
    metrics: Mapping[str, Any],
    thresholds: Mapping[str, float],
    baseline_accuracy: float | None,
) -> list[dict[str, str]]:
    """Alerts (severity, type, message) for collected metrics against the spec's thresholds."""
    alerts: list[dict[str, str]] = []

    def add(severity: str, kind: str, message: str) -> None:
        alerts.append({"severity": severity, "type": kind, "message": message})

    def ladder(value: float, critical_key: str, warning_key: str, kind: str, describe) -> None:
        """CRITICAL at or past the critical threshold, else WARNING at or past the warning one."""
        for severity, key in (("CRITICAL", critical_key), ("WARNING", warning_key)):
            if value >= thresholds[key]:
                add(severity, kind, describe(thresholds[key]))
                return

    acc = metrics.get("accuracy")
    if acc is not None and baseline_accuracy is not None:
        drop = baseline_accuracy - acc
        ladder(drop, "criticalAccuracyDrop", "warningAccuracyDrop", "AccuracyDrop",
               lambda _t: f"accuracy {acc:.4f} is {drop:.4f} below baseline {baseline_accuracy:.4f}")
    err = metrics.get("errorRate")
    if err is not None:
        ladder(err, "criticalErrorRate", "warningErrorRate", "ErrorRate",
               lambda t: f"error rate {err:.4f} >= {t}")
    p95 = metrics.get("latencyP95Ms")
    if p95 is not None:
        ladder(p95, "criticalLatencyMs", "warningLatencyMs", "Latency",
               lambda t: f"p95 latency {p95:.1f} ms >= {t} ms")
    if is_drifting(metrics, thresholds):
        drift = metrics.get("driftScore")
        drifted = list(metrics.get("driftedFeatures") or [])
        add("WARNING", "Drift", f"drift score {drift if drift is not None else float('nan'):.4f}; drifted features: {', '.join(drifted) or 'none'}")
    dq = metrics.get("dataQuality")
    if dq is not None and dq < thresholds["dataQualityThreshold"]:
        add("WARNING", "DataQuality", f"data quality {dq:.4f} < {thresholds['dataQualityThreshold']}")
    return alerts


def metrics_status(
    cr: Mapping[str, Any],
    *,
    metrics: Mapping[str, Any],
    thresholds: Mapping[str, float],
    baseline_accuracy: float | None,
    now: str,
) -> dict[str, Any]:
    """Status fields owned by the metrics timer: metrics, alerts, and the Drifting condition."""
    generation = (cr.get("metadata") or {}).get("generation")
    conditions = list((cr.get("status") or {}).get("conditions") or [])
    alerts = evaluate_alerts(metrics, thresholds, baseline_accuracy)
    drifted = list(metrics.get("driftedFeatures") or [])
    score = metrics.get("driftScore")
    if is_drifting(metrics, thresholds):
        msg = f"drift score {score}; drifted features: {', '.join(drifted) or 'none named'}"
        conditions = set_condition(conditions, "Drifting", True, "FeatureDrift", msg, now=now, generation=generation)
    elif metrics.get("predictions"):
        conditions = set_condition(conditions, "Drifting", False, "NoDrift", f"drift score {score}", now=now, generation=generation)
    else:
        conditions = set_condition(conditions, "Drifting", False, "NoTraffic", "no predictions collected yet", now=now, generation=generation)
    return {"metrics": dict(metrics), "alerts": alerts, "conditions": conditions}
