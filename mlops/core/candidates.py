"""Retrained candidates of a ModelDeployment as pure functions: names, entries, verdicts, serving.

Why it exists: the closed loop (drift -> retraining Job -> candidate -> experiment -> promotion,
``docs/closed-loop.md``) must never write a spec a user authored, so a candidate lives in a ConfigMap
the operator owns (``<modeldeployment>-candidates``, one JSON entry per candidate version). Every
decision about those entries — the deterministic names that make the loop safe to repeat after a
SIGKILL, the mapping of an experiment's verdict to a candidate's state, which candidates are served
and which one is the stable version — is a function of its inputs here, so it is unit-tested without
a cluster or a clock.

State machine of one entry (final states never change again)::

    candidate --(its experiment Concluded, winner treatment)------------> promoted
    candidate --(Concluded winner control | Completed | Terminated)-----> rejected
    candidate --(its experiment deleted before a verdict)---------------> rejected

Serving rule: entries in state ``candidate`` are extra versions (Deployment + Service, no stable
traffic); the *active promotion* — the most recent ``promoted`` entry, while ``spec.stableVersion``
is still the value it had when the candidate was promoted — is an extra version too and is the
stable version. When the user changes ``spec.stableVersion`` (for instance to the candidate, after
writing its entry into ``spec.versions`` in Git) the spec governs again.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

CANDIDATE, PROMOTED, REJECTED = "candidate", "promoted", "rejected"
STATES = (CANDIDATE, PROMOTED, REJECTED)
FINAL_STATES = frozenset({PROMOTED, REJECTED})
VERSION_PREFIX = "rt-"
ARTIFACT_URI = re.compile(r"^((file|https?|s3|gs)://|models:/|runs:/).+$")
SHA256 = re.compile(r"^[a-f0-9]{64}$")
FORMATS = ("skops", "joblib")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
MAX_KEPT_FINAL = 20  # settled entries kept (newest first) besides the live ones; a ConfigMap holds 1 MiB


def run_hash(run_id: str) -> str:
    return hashlib.sha256(run_id.encode()).hexdigest()[:8]


def version_name(run_id: str) -> str:
    """``rt-<8 hex of sha256(run id)>``: deterministic (a repeated call names the same version), a valid
    VersionName (DNS label, <= 22 characters) whatever the run id looks like."""
    if not run_id:
        raise ValueError("run_id must not be empty")
    return VERSION_PREFIX + run_hash(run_id)


def experiment_name(policy: str, run_id: str) -> str:
    """``<policy>-rt-<8 hex>``, a DNS label of at most 63 characters (the policy part is shortened)."""
    suffix = "-" + version_name(run_id)
    head = re.sub(r"[^a-z0-9-]+", "-", policy.lower()).strip("-")[: 63 - len(suffix)].rstrip("-") or "retrain"
    return head + suffix


def configmap_name(model_deployment: str) -> str:
    return f"{model_deployment}-candidates"[:253]


def validate(*, run_id: str, policy: str, uri: str, sha256: str, format: str, traffic_split: float) -> None:
    """ValueError naming the first bad input (the same rules the CRD applies to a spec version)."""
    if not run_id or len(run_id) > 253:
        raise ValueError("run_id must be 1..253 characters")
    if not policy:
        raise ValueError("policy must not be empty")
    if not isinstance(uri, str) or len(uri) > 2048 or not ARTIFACT_URI.match(uri):
        raise ValueError(f"artifact uri {uri!r} is not a file://, http(s)://, s3://, gs://, models:/ or runs:/ URI")
    if not isinstance(sha256, str) or not SHA256.match(sha256):
        raise ValueError(f"sha256 {sha256!r} is not 64 lowercase hex digits")
    if format not in FORMATS:
        raise ValueError(f"format {format!r} is not one of {', '.join(FORMATS)}")
    if not (isinstance(traffic_split, int | float) and 0.0 < float(traffic_split) <= 1.0):
        raise ValueError(f"traffic_split {traffic_split!r} must be in (0, 1]")


def new_entry(*, run_id: str, policy: str, uri: str, sha256: str, format: str, metrics: Mapping[str, Any] | None,
              experiment: str | None, now: str) -> dict[str, Any]:
    return {
        "name": version_name(run_id),
        "runId": run_id,
        "policy": policy,
        "artifact": {"uri": uri, "sha256": sha256, "format": format},
        "metrics": dict(metrics or {}),
        "experiment": experiment,
        "experimentUid": None,
        "state": CANDIDATE,
        "reason": "deployed; waiting for its experiment's verdict" if experiment else "deployed; no experiment",
        "createdAt": now,
        "settledAt": None,
        "promotedAtGeneration": None,
        "stableVersionAtPromotion": None,
    }


def same_proposal(entry: Mapping[str, Any], *, run_id: str, uri: str, sha256: str, format: str) -> None:
    """A repeated proposal must describe the same run and artifact (ValueError otherwise)."""
    if entry.get("runId") != run_id:
        raise ValueError(f"candidate version {entry.get('name')} already records run {entry.get('runId')!r}, "
                         f"not {run_id!r} (hash collision)")
    art = entry.get("artifact") or {}
    if (art.get("uri"), art.get("sha256"), art.get("format")) != (uri, sha256, format):
        raise ValueError(f"run {run_id!r} was already proposed with artifact {art.get('uri')} "
                         f"(sha256 {str(art.get('sha256'))[:12]}); a run has one artifact")


def decode(data: Mapping[str, str] | None) -> dict[str, dict[str, Any]]:
    """The ConfigMap's ``data`` -> {version: entry}; unreadable keys are skipped (never ours to fix)."""
    out: dict[str, dict[str, Any]] = {}
    for key, text in (data or {}).items():
        try:
            entry = json.loads(text)
        except (TypeError, ValueError):
            continue
        if isinstance(entry, dict) and entry.get("name") == key and entry.get("state") in STATES:
            out[key] = entry
    return out


def encode(entry: Mapping[str, Any]) -> str:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"))


def verdict(experiment: Mapping[str, Any] | None, entry: Mapping[str, Any]) -> tuple[str, str] | None:
    """(new state, reason) that an experiment's status implies for a candidate, None while undecided.

    ``experiment`` is the ABExperiment named by the entry (None: it does not exist).
    """
    if entry.get("state") in FINAL_STATES or not entry.get("experiment"):
        return None
    if experiment is None:
        if entry.get("experimentUid"):
            return REJECTED, f"experiment {entry['experiment']} was deleted before a verdict"
        return None  # not created yet (the proposal is completed by the next reconcile)
    meta = experiment.get("metadata") or {}
    if entry.get("experimentUid") and meta.get("uid") != entry["experimentUid"]:
        return REJECTED, f"experiment {entry['experiment']} was replaced before a verdict"
    status = experiment.get("status") or {}
    phase = status.get("phase")
    name = entry["experiment"]
    if phase == "Concluded":
        if status.get("winner") == "treatment":
            return PROMOTED, f"experiment {name} concluded: the candidate wins ({status.get('recommendation', '')})"
        return REJECTED, f"experiment {name} concluded: control wins ({status.get('recommendation', '')})"
    if phase == "Completed":
        return REJECTED, f"experiment {name} completed without a winner"
    if phase == "Terminated":
        return REJECTED, f"experiment {name} rolled back ({status.get('recommendation', '')})"
    return None


def settle(entry: Mapping[str, Any], experiment: Mapping[str, Any] | None, *, now: str,
           generation: int | None, stable_version: str) -> dict[str, Any] | None:
    """The entry after the verdict, or None when nothing changes (also records the experiment's uid)."""
    out = dict(entry)
    changed = False
    if (experiment is not None and not entry.get("experimentUid") and entry.get("state") == CANDIDATE
            and entry.get("experiment")):
        out["experimentUid"] = (experiment.get("metadata") or {}).get("uid")
        changed = bool(out["experimentUid"])
    decided = verdict(experiment, out)
    if decided is not None:
        out["state"], out["reason"] = decided
        out["settledAt"] = now
        if out["state"] == PROMOTED:
            out["promotedAtGeneration"] = generation
            out["stableVersionAtPromotion"] = stable_version
        changed = True
    return out if changed else None


def active_promotion(entries: Mapping[str, Mapping[str, Any]], stable_version: str) -> str | None:
    """The promoted candidate that serves as stable: the newest promotion made while ``spec.stableVersion``
    had its current value. A change of ``spec.stableVersion`` by the user ends it."""
    promoted = [e for e in entries.values() if e.get("state") == PROMOTED]
    if not promoted:
        return None
    newest = max(promoted, key=lambda e: (e.get("settledAt") or "", e["name"]))
    return newest["name"] if newest.get("stableVersionAtPromotion") == stable_version else None


def served(entries: Mapping[str, Mapping[str, Any]], spec_versions: Sequence[str], stable_version: str,
           ) -> tuple[list[str], str | None]:
    """(candidate versions to deploy besides the spec's, stable override or None).

    A version the spec lists (adopted) is the spec's: it is not deployed twice.
    """
    active = active_promotion(entries, stable_version)
    names = sorted(e["name"] for e in entries.values()
                   if (e.get("state") == CANDIDATE or e["name"] == active) and e["name"] not in spec_versions)
    return names, active


def version_spec(entry: Mapping[str, Any], template: Mapping[str, Any], *, stable: bool) -> dict[str, Any]:
    """A normalized spec version for a candidate: the stable version's resources; a candidate in trial
    runs one replica, an active promotion the stable version's replicas and autoscaling."""
    art = entry["artifact"]
    out: dict[str, Any] = {
        "name": entry["name"],
        "artifact": {"uri": art["uri"], "sha256": art["sha256"], "format": art.get("format", "skops")},
        "replicas": int(template.get("replicas", 1)) if stable else 1,
        "resources": dict(template.get("resources") or {}),
    }
    if stable and template.get("autoscaling"):
        out["autoscaling"] = dict(template["autoscaling"])
    return out


def gitops_hint(entry: Mapping[str, Any]) -> str:
    """What to write into Git to make a promotion permanent."""
    art = entry["artifact"]
    version = json.dumps({"name": entry["name"], "artifact": {"uri": art["uri"], "sha256": art["sha256"],
                                                              "format": art.get("format", "skops")}},
                         sort_keys=True)
    return (f"to make the promotion permanent, add to spec.versions {version} and set spec.stableVersion "
            f"to {entry['name']!r}; until spec.stableVersion changes, {entry['name']} stays the stable version")


def status_entries(entries: Mapping[str, Mapping[str, Any]], spec_versions: Sequence[str], stable_version: str,
                   limit: int = 10) -> list[dict[str, Any]]:
    """The ModelDeployment's ``status.candidates``: newest first, at most ``limit``."""
    active = active_promotion(entries, stable_version)
    out = []
    for e in sorted(entries.values(), key=lambda e: (e.get("createdAt") or "", e["name"]), reverse=True)[:limit]:
        art = e.get("artifact") or {}
        message = e.get("reason") or ""
        if e["name"] == active:
            message = f"{message}; serving as stable; {gitops_hint(e)}" if e["name"] not in spec_versions else \
                f"{message}; serving as stable; adopted into spec.versions"
        elif e.get("state") == PROMOTED:
            message = f"{message}; superseded (spec.stableVersion changed or a newer candidate was promoted)"
        out.append({"name": e["name"], "state": e["state"], "runId": e.get("runId"), "policy": e.get("policy"),
                    "experiment": e.get("experiment"), "uri": art.get("uri"), "sha256": art.get("sha256"),
                    "format": art.get("format"), "createdAt": e.get("createdAt"), "settledAt": e.get("settledAt"),
                    "message": message[:1024]})
    return out


def expired(entries: Mapping[str, Mapping[str, Any]], keep: int = MAX_KEPT_FINAL) -> list[str]:
    """Rejected entries beyond the newest ``keep`` ones (removed from the ConfigMap)."""
    rejected = sorted((e for e in entries.values() if e.get("state") == REJECTED),
                      key=lambda e: (e.get("settledAt") or "", e["name"]), reverse=True)
    return [e["name"] for e in rejected[keep:]]
