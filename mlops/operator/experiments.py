"""The ABExperiment controller: collect per-arm counts, decide (pure, ``mlops.core.experiment``),
write status, route traffic through the ModelDeployment, post Events.

Why a module of its own: the ModelDeployment controller turns a spec into objects; an experiment is a
loop over time (ramp steps, repeated looks at the data, a verdict) whose only outputs are its own
status, its own counts ConfigMap and the experiment entry of its ModelDeployment's routing table.
Shape, as for ModelDeployments:

- level-based: every ``interval`` (and on every change of an ABExperiment) the experiment is
  evaluated from what is in the cluster: the ABExperiment, its ModelDeployment, the other
  experiments of the namespace and the sidecars' per-arm counts;
- status only: the spec is never written. Routing follows status: the ModelDeployment's reconcile
  reads the experiments that reference it (:func:`routing_for`) and writes the routing ConfigMap,
  so the router follows ``status.routing`` and a promotion recorded in ``status.promotion``
  (which holds while the ModelDeployment's generation is unchanged);
- counter resets: per-arm totals are accumulated per sidecar (``mlops.core.arm_counts.accumulate``)
  and persisted in a ConfigMap the ABExperiment owns (``<name>-abx-counts``) before status is
  written, so an operator restart (even SIGKILL) continues from the same totals and figures in
  status only grow;
- deleting an experiment removes it from the routing table (the ModelDeployment is reconciled on the
  DELETED event): all traffic goes back to the stable version.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any

from mlops.core.arm_counts import Accumulator, ArmTable, accumulate, for_experiment, table_from_list
from mlops.core.experiment import ACTIVE, FINAL, Situation, analyse, evaluate, holder_of
from mlops.operator.api import ABExperimentSpec
from mlops.operator.candidates import served_names
from mlops.operator.k8s import KubeError
from mlops.operator.periodic import PeriodicEvaluator, run_in_background
from mlops.operator.resources import naming as n

log = logging.getLogger("mlops.operator.experiments")
Key = tuple[str, str]
ARMS_PATH = "/v1/arms"
STATE_KEY = "counts.json"


def counts_configmap_name(name: str) -> str:
    return n.dns_label(f"{name}-abx-counts", 253)


def _spec(cr: Mapping[str, Any]) -> dict[str, Any]:
    return ABExperimentSpec.model_validate(cr.get("spec") or {}).model_dump(by_alias=True, mode="json")


def _rv(obj: Mapping[str, Any]) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


def routing_for(kube: Any, mdep: Mapping[str, Any], experiments: list[dict[str, Any]] | None = None,
                ) -> tuple[dict[str, Any] | None, str | None]:
    """(routing-table experiment entry, promoted version) for a ModelDeployment, from the status of
    the ABExperiments that reference it (``experiments``: the namespace's, from the watch-fed cache;
    listed when not given). The ModelDeployment reconcile calls this."""
    meta = mdep["metadata"]
    if experiments is None:
        try:
            experiments = kube.list(n.ABX_KIND, meta["namespace"])
        except KubeError as exc:
            if exc.status in (403, 404):  # CRD or permission missing: serve without experiments
                return None, None
            raise
    mine = [e for e in experiments if (e.get("spec") or {}).get("modelDeployment") == meta["name"]
            and not e["metadata"].get("deletionTimestamp")]
    route = None
    holder = holder_of(mine, meta["name"])
    for exp in mine:
        status = exp.get("status") or {}
        routing = status.get("routing")
        if exp["metadata"]["name"] != holder or status.get("phase") not in ACTIVE or not routing:
            continue
        spec = exp.get("spec") or {}
        route = {
            "name": exp["metadata"]["name"],
            "salt": status.get("salt") or exp["metadata"]["name"],
            "control": spec.get("controlVersion"),
            "treatment": spec.get("treatmentVersion"),
            "treatment_share": float(routing.get("treatmentShare") or 0.0),
            "segment": spec.get("segmentCriteria") or None,
            "paused": bool(routing.get("paused")),
            "phase": int(routing.get("rampStep") or 0),
        }
    promoted = None
    generation = meta.get("generation")
    records = [
        (e["status"]["promotion"].get("at") or "", e["status"]["promotion"].get("version"))
        for e in mine
        if ((e.get("status") or {}).get("promotion") or {}).get("modelDeploymentGeneration") == generation
        and (e.get("status") or {}).get("promotion", {}).get("version")
    ]
    if records:
        promoted = max(records)[1]
    return route, promoted


class ExperimentController(PeriodicEvaluator):
    """Evaluates ABExperiments; shares the ModelDeployment Controller's Kube, collector and clock."""

    def __init__(self, controller: Any, *, timeout: float = 5.0) -> None:
        super().__init__(controller)
        self.kube = controller.kube
        self.timeout = timeout
        self.accumulators: dict[Key, Accumulator] = {}
        self._synced: set[str] = set()
        self.route_changes: set[Key] = set()
        self._foreign: set[Key] = set()  # ModelDeployments whose routing table must be rebuilt  # namespaces listed once; the watch keeps ``known`` current

    def store(self, obj: Mapping[str, Any]) -> None:
        """Keep the newest copy of an ABExperiment (watch events can arrive after our own write)."""
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace"), meta.get("name"))
        old = self.known.get(key)
        if old is not None and _rv(old) > _rv(obj) and (old.get("metadata") or {}).get("uid") == meta.get("uid"):
            return
        self.known[key] = {**dict(obj), "kind": n.ABX_KIND, "apiVersion": n.API_VERSION}

    def experiments_in(self, namespace: str) -> list[dict[str, Any]]:
        """The namespace's ABExperiments from the watch-fed cache (one LIST the first time)."""
        if namespace not in self._synced:
            try:
                for item in self.kube.list(n.ABX_KIND, namespace):
                    self.store(item)
            except KubeError as exc:
                if exc.status in (403, 404):
                    return []
                raise
            self._synced.add(namespace)
        return [v for (ns, _), v in list(self.known.items()) if ns == namespace]

    # ---- per-arm counts -----------------------------------------------------------------------
    def _sources(self, mdep: Mapping[str, Any]) -> list[str]:
        meta = mdep["metadata"]
        urls = self.c.collector.override_endpoints(meta["namespace"], meta["name"])
        if urls is None:
            urls = self.c.collector.pod_endpoints(mdep)
        return [u[: -len("/metrics")] + ARMS_PATH if u.endswith("/metrics") else u.rstrip("/") + ARMS_PATH
                for u in urls]

    def _scrape(self, urls: list[str]) -> dict[str, tuple[str, ArmTable]]:
        import httpx

        out: dict[str, tuple[str, ArmTable]] = {}
        client = self.c.collector.http(trust_env=False)  # pod IPs: never through a proxy
        for url in urls:
            try:
                resp = client.get(url, timeout=self.timeout)
                resp.raise_for_status()
                body = resp.json()
                out[url] = (str(body["instance"]), table_from_list(body.get("arms") or []))
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                log.warning("per-arm scrape of %s failed: %s", url, exc)
        return out

    def _load_accumulator(self, cr: Mapping[str, Any]) -> Accumulator:
        key = (cr["metadata"]["namespace"], cr["metadata"]["name"])
        acc = self.accumulators.get(key)
        if acc is not None:
            return acc
        cm = self.kube.get("ConfigMap", key[0], counts_configmap_name(key[1]))
        owned = cm is not None and any(r.get("uid") == cr["metadata"]["uid"]
                                       for r in (cm.get("metadata") or {}).get("ownerReferences") or [])
        text = ((cm or {}).get("data") or {}).get(STATE_KEY) if owned else None
        if cm is not None and not owned:
            self._foreign.add(key)  # someone else's ConfigMap: never modified (ResourceConflict)
            self.c._event(cr, "Warning", "ResourceConflict",
                          f"ConfigMap {key[0]}/{counts_configmap_name(key[1])} exists and is not owned by this "
                          "experiment; its counts are kept in memory only (an operator restart loses them)")
        acc = Accumulator.from_dict(json.loads(text)) if text else Accumulator()
        self.accumulators[key] = acc
        return acc

    def _save_accumulator(self, cr: Mapping[str, Any], acc: Accumulator) -> None:
        meta = cr["metadata"]
        if (meta["namespace"], meta["name"]) in self._foreign:
            return
        state = acc.to_dict()
        for source in state["sources"].values():  # sketches merge by maximum: the totals' copy suffices
            for item in source["last"]:
                item.pop("users", None)
        self.kube.apply({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": counts_configmap_name(meta["name"]),
                "namespace": meta["namespace"],
                "labels": {"app.kubernetes.io/managed-by": n.MANAGED_BY, "app.kubernetes.io/part-of": n.PART_OF,
                           f"{n.GROUP}/abexperiment": n.label_value(meta["name"])},
                "ownerReferences": [{"apiVersion": n.API_VERSION, "kind": n.ABX_KIND, "name": meta["name"],
                                     "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}],
            },
            "data": {STATE_KEY: json.dumps(state, sort_keys=True, separators=(",", ":"))},
        })

    def collect(self, cr: Mapping[str, Any], mdep: Mapping[str, Any]) -> ArmTable:
        """Scrape every sidecar, fold into the persisted totals, return this experiment's totals."""
        acc = self._load_accumulator(cr)
        before = json.dumps(acc.to_dict(), sort_keys=True)
        for source, (instance, table) in self._scrape(self._sources(mdep)).items():
            if accumulate(acc, source, instance, table):
                log.info("sidecar %s restarted (counter reset); totals kept", source)
        if json.dumps(acc.to_dict(), sort_keys=True) != before:
            self._save_accumulator(cr, acc)
        return for_experiment(acc.totals, cr["metadata"]["name"])

    # ---- one evaluation -------------------------------------------------------------------------
    def evaluate_sync(self, namespace: str, name: str) -> str | None:
        cr = self.kube.get(n.ABX_KIND, namespace, name)
        if cr is None or cr["metadata"].get("deletionTimestamp"):
            return None
        cr.setdefault("kind", n.ABX_KIND)
        self.store(cr)
        old = cr.get("status") or {}
        try:
            spec = _spec(cr)
        except ValueError as exc:  # admitted by an older CRD, or edited around validation
            self._write(cr, {**old, "phase": "Pending", "recommendation": f"Invalid spec: {exc}"}, [
                ("Warning", "InvalidSpec", str(exc)[:1000])])
            return "Pending"
        if old.get("phase") in FINAL:
            return old["phase"]
        mdep = self.kube.get_mdep(namespace, spec["modelDeployment"])
        holder = None
        versions: list[str] = []
        analysis = None
        if mdep is not None:
            versions = [v.get("name") for v in (mdep.get("spec") or {}).get("versions") or []]
            if spec["controlVersion"] not in versions or spec["treatmentVersion"] not in versions:
                # retrained candidates are versions too (mlops.operator.candidates)
                versions += served_names(getattr(self.c, "cache", None), self.kube, mdep)
            holder = holder_of(self.experiments_in(namespace), spec["modelDeployment"])
            if holder == name and old.get("startedAt"):
                counts = self.collect(cr, mdep)
                if counts:
                    analysis = analyse(spec, counts, prior_p_value=old.get("pValue"),
                                       prior_srm=old.get("srmPhasePValues"), prior_guardrails=old.get("guardrails"))
        situation = Situation(
            now=self.c.clock(), mdep_found=mdep is not None, mdep_versions=versions,
            mdep_generation=(mdep or {}).get("metadata", {}).get("generation"), holder=holder, analysis=analysis,
        )
        outcome = evaluate(name, spec, old, situation, generation=cr["metadata"].get("generation"),
                           salt=f"{name}-{cr['metadata']['uid'][:8]}")
        status = outcome.status
        status["routing"] = None if outcome.route is None else {
            "treatmentShare": outcome.route["treatment_share"], "rampStep": outcome.route["phase"],
            "paused": outcome.route["paused"]}
        changed = self._write(cr, status, outcome.events)
        route_changed = (old.get("routing") != status["routing"] or old.get("phase") != status.get("phase")
                         or old.get("promotion") != status.get("promotion"))
        if mdep is not None and changed and route_changed:
            # the router follows status: the caller schedules the ModelDeployment's reconcile now
            self.route_changes.add((namespace, spec["modelDeployment"]))
        return status.get("phase")

    def _write(self, cr: Mapping[str, Any], status: dict[str, Any], events: list[tuple[str, str, str]]) -> bool:
        old = cr.get("status") or {}
        keys = set(old) | set(status)
        if all(old.get(k) == status.get(k) for k in keys) and not events:
            return False
        patch = {k: status.get(k) for k in keys}  # None deletes (merge patch)
        meta = cr["metadata"]
        updated = self.kube.patch_status(meta["namespace"], meta["name"], patch, uid=meta.get("uid"), kind=n.ABX_KIND)
        if isinstance(updated, dict) and updated.get("metadata"):
            self.store(updated)  # the ModelDeployment's reconcile reads this copy
        for etype, reason, message in events:
            self.c._event(cr, etype, reason, message)
        return True

    # ---- async plumbing -------------------------------------------------------------------------
    async def evaluate(self, key: Key) -> None:
        if not self.c.active:  # a standby (leader election) does nothing
            return
        async with self.lock(key):
            try:
                await asyncio.to_thread(self.evaluate_sync, *key)
            except KubeError as exc:
                self.c.metrics.errors.labels("experiment").inc()
                log.warning("evaluation of experiment %s/%s failed: %s", key[0], key[1], exc)
            except Exception:  # one experiment must never stop the loop
                self.c.metrics.errors.labels("experiment").inc()
                log.exception("evaluation of experiment %s/%s crashed", key[0], key[1])
        while self.route_changes:
            self.c.schedule(self.route_changes.pop(), delay=0.0)
        self._next[key] = self.c.clock() + self.interval(key)

    def interval(self, key: Key) -> float:
        if self.c.config.metrics_interval:
            return float(self.c.config.metrics_interval)
        cr = self.known.get(key) or {}
        mdep = self.c.known.get((key[0], (cr.get("spec") or {}).get("modelDeployment", "")))
        mon = ((mdep or {}).get("spec") or {}).get("monitoring") or {}
        return float(mon.get("collectIntervalSeconds") or 30)

    def forget(self, key: Key) -> None:
        self.known.pop(key, None)  # (a namespace stays synced: the watch reports what comes later)
        self._foreign.discard(key)
        self.accumulators.pop(key, None)
        self.unschedule(key)


def register(registry: Any, controller: Any) -> ExperimentController:
    """Add the ABExperiment handlers to the operator's kopf registry."""
    import kopf

    experiments = ExperimentController(controller)
    controller.experiments = experiments
    run_in_background(registry, "experiments", experiments)

    @kopf.on.event(n.GROUP, n.VERSION, n.ABX_PLURAL, registry=registry)
    async def abexperiment_event(event: Mapping[str, Any], body: Any, namespace: str, name: str, **_: Any) -> None:
        key = (namespace, name)
        spec = dict(body.get("spec") or {})
        if event.get("type") == "DELETED":
            experiments.forget(key)
            mdep = spec.get("modelDeployment")
            if mdep and (namespace, mdep) in controller.known and controller.active:
                controller.schedule((namespace, mdep))  # traffic back to the stable version
            return
        previous = experiments.known.get(key)
        experiments.store(dict(body))
        if previous is None or (previous.get("spec") != spec) or (
                previous.get("metadata", {}).get("generation") != body.get("metadata", {}).get("generation")):
            experiments._next[key] = 0.0  # new or changed spec: evaluate at the next tick

    return experiments
