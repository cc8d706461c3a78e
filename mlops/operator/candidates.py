"""Closing the loop: a retrained candidate becomes a version of its ModelDeployment, an ABExperiment
judges it, the verdict promotes or discards it (``docs/closed-loop.md`` has the diagram).

Why a module of its own: the RetrainPolicy controller (``mlops.operator.retrain``) produces an
artifact; this module is the one place that turns it into served versions and experiments, under
invariants a GitOps user can rely on:

- the operator never writes a spec a user authored. A candidate is an entry of the ConfigMap
  ``<modeldeployment>-candidates``, owned (not controlled) by the ModelDeployment: deleting the
  ModelDeployment garbage-collects it, deleting the RetrainPolicy or the ABExperiment does not;
- every name is deterministic (version ``rt-<8 hex of the run id>``, experiment
  ``<policy>-rt-<8 hex>``) and every write is read-before-write, so :func:`propose_candidate` can be
  called again after a SIGKILL at any step and converges to one entry and one experiment;
- the ModelDeployment reconcile (:func:`reconcile`) settles verdicts (pure rules in
  ``mlops.core.candidates``), completes an interrupted proposal (creates the recorded experiment) and
  hands the served candidates to the builders, which deploy them like spec versions (same init
  container verifying the sha256). Rejected candidates leave the desired set, so their pods go.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mlops.core import candidates as cc
from mlops.operator.k8s import KubeError, now_rfc3339
from mlops.operator.resources import naming as n

log = logging.getLogger("mlops.operator.candidates")
ANN_EXPERIMENT_DEFAULTS = f"{n.GROUP}/candidate-experiment"
LABEL_CANDIDATE = f"{n.GROUP}/candidate"
LABEL_POLICY = f"{n.GROUP}/retrain-policy"
# ABExperiment spec fields a ModelDeployment's annotation may set for the experiments of its candidates
EXPERIMENT_OVERRIDES = ("minSamplesPerVariant", "significanceLevel", "statisticalPower", "minimumDetectableEffect",
                        "primaryMetric", "guardrails", "durationDays", "ramping", "userKeyHeader")


def _now() -> str:
    import time

    return now_rfc3339(time.time())


def _owned_by(obj: Mapping[str, Any] | None, uid: str) -> bool:
    return obj is not None and any(r.get("uid") == uid for r in (obj.get("metadata") or {}).get("ownerReferences") or [])


def _owner_ref(mdep: Mapping[str, Any], *, controller: bool) -> dict[str, Any]:
    meta = mdep["metadata"]
    return {"apiVersion": n.API_VERSION, "kind": n.KIND, "name": meta["name"], "uid": meta["uid"],
            "controller": controller, "blockOwnerDeletion": True}


def _conflict(what: str, mdep_name: str) -> KubeError:
    return KubeError(409, "ResourceConflict", f"{what} exists and is not owned by ModelDeployment {mdep_name}; "
                                              "it is never modified")


def _labels(mdep_name: str) -> dict[str, str]:
    return {"app.kubernetes.io/managed-by": n.MANAGED_BY, "app.kubernetes.io/part-of": n.PART_OF,
            "app.kubernetes.io/component": "candidates", n.LABEL_DEPLOYMENT: n.label_value(mdep_name)}


# ---- the candidates ConfigMap ------------------------------------------------------------------------
def _ensure_configmap(kube: Any, mdep: Mapping[str, Any]) -> dict[str, Any]:
    meta = mdep["metadata"]
    ns, name = meta["namespace"], cc.configmap_name(meta["name"])
    cm = kube.get("ConfigMap", ns, name)
    if cm is None:
        body = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": ns, "labels": _labels(meta["name"]),
                             # owned, not controlled: the ModelDeployment's prune leaves it alone,
                             # garbage collection removes it with the ModelDeployment
                             "ownerReferences": [_owner_ref(mdep, controller=False)]},
                "data": {}}
        try:
            cm = kube.create(body)
        except KubeError as exc:
            if exc.status != 409:
                raise
            cm = kube.get("ConfigMap", ns, name)
    if not _owned_by(cm, meta["uid"]):
        raise _conflict(f"ConfigMap {ns}/{name}", meta["name"])
    return cm


def _put_entry(kube: Any, namespace: str, mdep_name: str, entry: Mapping[str, Any]) -> None:
    """Merge patch of one key: concurrent writers of other entries are never overwritten."""
    kube.patch("ConfigMap", namespace, cc.configmap_name(mdep_name), {"data": {entry["name"]: cc.encode(entry)}})


def _drop_entries(kube: Any, namespace: str, mdep_name: str, names: list[str]) -> None:
    kube.patch("ConfigMap", namespace, cc.configmap_name(mdep_name), {"data": dict.fromkeys(names)})


def _entries(cm: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    return cc.decode((cm or {}).get("data"))


# ---- the experiment ------------------------------------------------------------------------------
def _experiment_spec(mdep: Mapping[str, Any], control: str, treatment: str, traffic_split: float) -> dict[str, Any]:
    """The candidate's ABExperiment spec: the loop's fixed choices, tuned by the ModelDeployment's
    ``mlops.duetmind.io/candidate-experiment`` annotation (JSON with ABExperiment spec fields)."""
    from mlops.operator.api import ABExperimentSpec

    spec: dict[str, Any] = {}
    raw = ((mdep.get("metadata") or {}).get("annotations") or {}).get(ANN_EXPERIMENT_DEFAULTS)
    if raw:
        try:
            overrides = json.loads(raw)
        except ValueError as exc:
            raise ValueError(f"annotation {ANN_EXPERIMENT_DEFAULTS} is not JSON: {exc}") from exc
        if not isinstance(overrides, dict):
            raise ValueError(f"annotation {ANN_EXPERIMENT_DEFAULTS} must be a JSON object")
        unknown = sorted(set(overrides) - set(EXPERIMENT_OVERRIDES))
        if unknown:
            raise ValueError(f"annotation {ANN_EXPERIMENT_DEFAULTS} may set {', '.join(EXPERIMENT_OVERRIDES)}; "
                             f"not {', '.join(unknown)}")
        spec.update(overrides)
    spec.update(modelDeployment=mdep["metadata"]["name"], controlVersion=control, treatmentVersion=treatment,
                trafficSplit=float(traffic_split), autoPromote=True, autoRollback=True)
    try:
        ABExperimentSpec.model_validate(spec)
    except ValueError as exc:
        raise ValueError(f"the candidate's experiment would be invalid: {exc}") from exc
    return spec


def _ensure_experiment(kube: Any, mdep: Mapping[str, Any], entry: Mapping[str, Any]) -> dict[str, Any]:
    """Create the entry's ABExperiment (owned by the ModelDeployment) or return the existing one."""
    meta = mdep["metadata"]
    ns, name = meta["namespace"], entry["experiment"]
    body = {"apiVersion": n.API_VERSION, "kind": n.ABX_KIND,
            "metadata": {"name": name, "namespace": ns,
                         "labels": {**_labels(meta["name"]), "app.kubernetes.io/component": "candidate-experiment",
                                    LABEL_CANDIDATE: entry["name"], LABEL_POLICY: n.label_value(entry["policy"])},
                         "ownerReferences": [_owner_ref(mdep, controller=True)]},
            "spec": entry["experimentSpec"]}
    live = kube.get(n.ABX_KIND, ns, name)
    if live is None:
        try:
            live = kube.create(body)
        except KubeError as exc:
            if exc.status != 409:
                raise
            live = kube.get(n.ABX_KIND, ns, name)
    if not _owned_by(live, meta["uid"]) or (live.get("spec") or {}).get("treatmentVersion") != entry["name"]:
        raise _conflict(f"ABExperiment {ns}/{name}", meta["name"])
    return live


def _current_version(mdep: Mapping[str, Any], served: list[str]) -> str:
    """The version serving stable traffic now (control of the candidate's experiment)."""
    status = mdep.get("status") or {}
    spec = mdep.get("spec") or {}
    current = status.get("currentVersion")
    known = {v.get("name") for v in spec.get("versions") or []} | set(served)
    return current if current in known else spec.get("stableVersion")


# ---- the interface the RetrainPolicy controller calls --------------------------------------------
def propose_candidate(kube, *, namespace: str, model_deployment: str, policy: str, run_id: str,
                      uri: str, sha256: str, format: str = "skops", metrics: dict | None = None,
                      open_experiment: bool = True, traffic_split: float = 0.1) -> str:
    """Idempotent (same run_id -> same result, no duplicates, safe to call again after a SIGKILL):
    records the candidate version for the ModelDeployment and, when open_experiment, opens the
    ABExperiment control=current version vs treatment=candidate. Returns the candidate's version
    name. Raises KubeError on API errors; ValueError on invalid input (bad sha256/uri)."""
    cc.validate(run_id=run_id, policy=policy, uri=uri, sha256=sha256, format=format, traffic_split=traffic_split)
    version = cc.version_name(run_id)
    mdep = kube.get_mdep(namespace, model_deployment)
    if mdep is None or (mdep.get("metadata") or {}).get("deletionTimestamp"):
        raise KubeError(404, "NotFound", f"ModelDeployment {namespace}/{model_deployment} not found")
    spec_versions = [v.get("name") for v in (mdep.get("spec") or {}).get("versions") or []]
    cm = _ensure_configmap(kube, mdep)
    entries = _entries(cm)
    entry = entries.get(version)
    if entry is not None:
        cc.same_proposal(entry, run_id=run_id, uri=uri, sha256=sha256, format=format)
    else:
        if version in spec_versions:
            raise ValueError(f"version {version} (run {run_id!r}) is already listed in the ModelDeployment's spec")
        stable = (mdep.get("spec") or {}).get("stableVersion", "")
        serving, _ = cc.served(entries, spec_versions, stable)
        control = _current_version(mdep, serving)
        experiment = cc.experiment_name(policy, run_id) if open_experiment else None
        entry = cc.new_entry(run_id=run_id, policy=policy, uri=uri, sha256=sha256, format=format, metrics=metrics,
                             experiment=experiment, now=_now())
        if experiment:
            entry["experimentSpec"] = _experiment_spec(mdep, control, version, traffic_split)
        _put_entry(kube, namespace, model_deployment, entry)  # recorded before the experiment exists
    if entry.get("experiment") and entry["state"] == cc.CANDIDATE and not entry.get("experimentUid"):
        live = _ensure_experiment(kube, mdep, entry)
        _put_entry(kube, namespace, model_deployment, {**entry, "experimentUid": live["metadata"]["uid"]})
    return version


def candidate_outcome(kube, *, namespace: str, model_deployment: str, run_id: str) -> str | None:
    """'candidate' | 'promoted' | 'rejected' | None (unknown run): lets the RetrainPolicy controller
    record the loop's outcome in its status/audit."""
    cm = kube.get("ConfigMap", namespace, cc.configmap_name(model_deployment))
    entry = _entries(cm).get(cc.version_name(run_id)) if run_id else None
    if entry is None or entry.get("runId") != run_id:
        return None
    return entry["state"]


# ---- the ModelDeployment reconcile's part -------------------------------------------------------
@dataclass
class CandidateView:
    versions: list[dict[str, Any]] = field(default_factory=list)  # normalized spec versions to deploy
    stable: str | None = None  # the active promotion (serves all stable traffic)
    status: list[dict[str, Any]] = field(default_factory=list)  # status.candidates
    errors: list[str] = field(default_factory=list)


def _template(spec: Mapping[str, Any]) -> Mapping[str, Any]:
    return next((v for v in spec.get("versions") or [] if v.get("name") == spec.get("stableVersion")), {})


def reconcile(kube: Any, cr: Mapping[str, Any], spec: Mapping[str, Any], *, configmap: Mapping[str, Any] | None,
              experiments: list[dict[str, Any]], now: str,
              event: Callable[[Mapping[str, Any], str, str, str], None]) -> CandidateView:
    """Settle verdicts, complete interrupted proposals, and say which candidates to serve.

    ``configmap`` is the candidates ConfigMap from the watch-fed cache (None: no candidates);
    ``spec`` the normalized ModelDeployment spec. API failures of single writes are reported in
    ``errors`` (the caller makes them a condition); connection failures raise KubeError.
    """
    meta = cr["metadata"]
    ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
    view = CandidateView()
    if configmap is None or not _owned_by(configmap, uid):
        return view
    entries = _entries(configmap)
    if not entries:
        return view
    spec_versions = [v["name"] for v in spec["versions"]]
    stable_version = spec["stableVersion"]
    by_name = {e["metadata"]["name"]: e for e in experiments if _owned_by(e, uid)}
    for key, entry in sorted(entries.items()):
        if entry["state"] != cc.CANDIDATE or not entry.get("experiment"):
            continue
        try:
            exp = by_name.get(entry["experiment"])
            if exp is None:  # the watch-fed list may lag: ask the API server before concluding anything
                exp = kube.get(n.ABX_KIND, ns, entry["experiment"])
                if exp is not None and not _owned_by(exp, uid):
                    exp = None
            if exp is None and not entry.get("experimentUid") and entry.get("experimentSpec"):
                exp = _ensure_experiment(kube, cr, entry)  # the proposal was interrupted: finish it
            new = cc.settle(entry, exp, now=now, generation=meta.get("generation"), stable_version=stable_version)
            if new is None:
                continue
            _put_entry(kube, ns, name, new)
        except KubeError as exc:
            if exc.status == 0 or exc.status == 429 or exc.status >= 500:
                raise
            view.errors.append(f"candidate {key}: {exc.status} {exc.reason}: {exc.message}"[:600])
            continue
        entries[key] = new
        if new["state"] == cc.PROMOTED:
            event(cr, "Normal", "CandidatePromoted", f"{key} (run {new['runId']}, policy {new['policy']}) promoted: "
                  f"{new['reason']}; {cc.gitops_hint(new)}")
        elif new["state"] == cc.REJECTED:
            event(cr, "Normal", "CandidateRejected", f"{key} (run {new['runId']}) discarded, its pods are removed: "
                  f"{new['reason']}")
    stale = cc.expired(entries)
    if stale:
        try:
            _drop_entries(kube, ns, name, stale)
            for key in stale:
                entries.pop(key, None)
        except KubeError as exc:
            if exc.status == 0 or exc.status == 429 or exc.status >= 500:
                raise
            view.errors.append(f"candidates ConfigMap: {exc.status} {exc.reason}: {exc.message}"[:600])
    extra, active = cc.served(entries, spec_versions, stable_version)
    template = _template(spec)
    view.versions = [cc.version_spec(entries[v], template, stable=v == active) for v in extra]
    view.stable = active
    view.status = cc.status_entries(entries, spec_versions, stable_version)
    return view


def served_names(cache: Any, kube: Any, mdep: Mapping[str, Any]) -> list[str]:
    """Candidate versions a ModelDeployment serves besides its spec's (the experiment controller's
    view of "versions of the ModelDeployment"): from the watch-fed cache, else one read."""
    meta = mdep["metadata"]
    name = cc.configmap_name(meta["name"])
    cm = cache.get("ConfigMap", meta["namespace"], name) if cache is not None else None
    if cm is None:
        cm = kube.get("ConfigMap", meta["namespace"], name)
    if not _owned_by(cm, meta["uid"]):
        return []
    spec = mdep.get("spec") or {}
    extra, _ = cc.served(_entries(cm), [v.get("name") for v in spec.get("versions") or []],
                         spec.get("stableVersion", ""))
    return extra
