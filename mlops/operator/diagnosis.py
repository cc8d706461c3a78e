"""Why a rollout does not finish: a Deployment and its pods -> one reason and a short message.

Why it exists: "waiting for v1 0/1" told a user with 203 Pending pods nothing. Kubernetes already knows
why (the scheduler's Unschedulable condition, image pull back-off, a failing init container such as the
artifact fetch, CrashLoopBackOff, the Deployment's ProgressDeadlineExceeded); this module picks the most
telling of those, counts the pods affected, and the status and Events repeat it. Pure: plain dicts in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# most telling first
PRIORITY = (
    "ProgressDeadlineExceeded",
    "InitContainerFailed",
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ContainerConfigError",
    "Unschedulable",
    "ReplicaFailure",
)
IMAGE_REASONS = {"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull"}
CONFIG_REASONS = {"CreateContainerConfigError", "CreateContainerError", "RunContainerError"}


def _deployment_problem(dep: Mapping[str, Any]) -> tuple[str, str] | None:
    for cond in (dep.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("status") == "False" \
                and cond.get("reason") == "ProgressDeadlineExceeded":
            return "ProgressDeadlineExceeded", cond.get("message") or "progress deadline exceeded"
        if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
            return "ReplicaFailure", cond.get("message") or cond.get("reason") or "replica failure"
    return None


def _pod_problem(pod: Mapping[str, Any]) -> tuple[str, str] | None:
    status = pod.get("status") or {}
    for cs in status.get("initContainerStatuses") or []:
        for state in (cs.get("state") or {}, cs.get("lastState") or {}):
            term = state.get("terminated")
            if term and int(term.get("exitCode") or 0) != 0:
                detail = (term.get("message") or "").strip() or term.get("reason") or "error"
                return "InitContainerFailed", (f"init container {cs.get('name')} exited "
                                               f"{term.get('exitCode')}: {detail}")
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in IMAGE_REASONS:
            return "ImagePullBackOff", f"init container {cs.get('name')}: {waiting.get('message') or waiting['reason']}"
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason == "CrashLoopBackOff":
            last = ((cs.get("lastState") or {}).get("terminated")) or {}
            detail = (last.get("message") or "").strip() or last.get("reason") or ""
            return "CrashLoopBackOff", (f"container {cs.get('name')} keeps crashing (restarts "
                                        f"{cs.get('restartCount', 0)}, last exit {last.get('exitCode')})"
                                        + (f": {detail}" if detail else ""))
        if reason in IMAGE_REASONS:
            return "ImagePullBackOff", f"container {cs.get('name')}: {waiting.get('message') or reason}"
        if reason in CONFIG_REASONS:
            return "ContainerConfigError", f"container {cs.get('name')}: {waiting.get('message') or reason}"
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return "Unschedulable", cond.get("message") or cond.get("reason") or "pod cannot be scheduled"
    return None


def diagnose(deployment: Mapping[str, Any] | None, pods: Iterable[Mapping[str, Any]]) -> tuple[str, str] | None:
    """(reason, message) of the most telling problem of one workload, or None when nothing is wrong."""
    found: dict[str, tuple[int, str]] = {}
    total = 0
    for pod in pods:
        total += 1
        problem = _pod_problem(pod)
        if problem:
            count, message = found.get(problem[0], (0, problem[1]))
            found[problem[0]] = (count + 1, message)
    dep_problem = _deployment_problem(deployment) if deployment else None
    if dep_problem:
        found.setdefault(dep_problem[0], (0, dep_problem[1]))
    for reason in PRIORITY:
        if reason in found:
            count, message = found[reason]
            if count:
                return reason, f"{count}/{total} pods {reason}: {message}"
            if reason == "ProgressDeadlineExceeded" and len(found) > 1:
                # name what the pods say as well
                other = next(r for r in PRIORITY if r in found and r != reason)
                return reason, f"{message}; pods: {found[other][0]}/{total} {other}: {found[other][1]}"
            return reason, message
    return None
