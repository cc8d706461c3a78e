"""Thin kopf handlers around the Controller: observe (from caches), build (pure), apply, prune, status.

Design choices that keep the operator safe to kill at any moment and cheap when nothing changes:
- reconciliation is level-based and idempotent, so a restart just runs it again and converges;
- no finalizers (owner references make the garbage collector delete everything), no kopf
  change-detection handlers: kopf is used only for its watch streams (``on.event``), so the operator
  never writes to the custom resource except its ``status``, and a standby replica writes nothing;
- every owned kind is watched (label-filtered) into a shared ``ObjectCache``; an event on an owned
  object schedules its owner's reconciliation (debounced), so deleted or edited children heal in about
  a second; applies of children that are already up to date are skipped (``ownership.up_to_date``);
- scheduled keys go through a work queue (``schedule``/``work``): a resource waits at most once
  however many events arrive, and is never reconciled by two workers at once;
- children are written only through ``ChildSync``: what another owner controls is never modified
  (``ResourceConflict`` in status and an Event);
- every failure to apply, prune or read becomes a condition with a reason and an Event; pods that do
  not start are diagnosed (``diagnosis``);
- metrics collection runs on its own bounded thread pool; a scrape never holds a reconcile slot or
  the resource's lock, so hanging sidecars cannot delay reconciliation;
- with leader election (``leader``), only the Lease holder reconciles, collects and writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from mlops.operator import candidates as cand
from mlops.operator import status as st
from mlops.operator.artifacts import ArtifactPolicy, ArtifactVerifier
from mlops.operator.cache import ObjectCache
from mlops.operator.children import ChildSync, SyncResult
from mlops.operator.collector import CollectError, Collector
from mlops.operator.diagnosis import diagnose
from mlops.operator.experiments import register as register_experiments
from mlops.operator.experiments import routing_for
from mlops.operator.k8s import OWNED_KINDS, PRUNABLE, Kube, KubeError, now_rfc3339
from mlops.operator.leader import LeaderElector
from mlops.operator.metrics import OperatorMetrics
from mlops.operator.resources import naming as n
from mlops.operator.resources.model_deployment import Observed, plan
from mlops.operator.resources.spec import InvalidSpec, normalize_spec
from mlops.operator.retrain import register as register_retrain
from mlops.operator.signing_key import ensure_signing_key

log = logging.getLogger("mlops.operator")
Key = tuple[str, str]  # (namespace, name)

TRANSITION_EVENTS = {
    # (condition, new status) -> (event type, reason); Warning events carry the condition's reason
    ("Ready", "True"): ("Normal", "Ready"),
    ("Ready", "False"): ("Warning", "NotReady"),
    ("Degraded", "True"): ("Warning", "Degraded"),
    ("Degraded", "False"): ("Normal", "Recovered"),
    ("Drifting", "True"): ("Warning", "DriftDetected"),
    ("Drifting", "False"): ("Normal", "DriftCleared"),
}


@dataclass
class OperatorConfig:
    namespaces: list[str] = field(default_factory=list)
    all_namespaces: bool = False
    prometheus_url: str | None = None
    metrics_interval: float | None = None  # overrides spec.monitoring.collectIntervalSeconds when set
    resync_interval: float = 60.0
    metrics_endpoints_file: str | None = None
    verify_artifacts: bool = True
    artifact_max_bytes: int = 256 << 20
    artifact_policy: ArtifactPolicy = field(default_factory=ArtifactPolicy)
    cluster_domain: str = "cluster.local"
    workers: int = 4
    clock_offset_file: str | None = None  # tests: seconds added to the wall clock (mlops.operator.main)
    collect_workers: int = 4
    debounce: float = 0.2
    leader_elect: bool = False
    leader_election_namespace: str | None = None
    leader_election_lease_name: str = "mlops-operator"
    leader_election_identity: str | None = None
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 1.0  # a standby's look at the Lease (a read)
    renew_period: float = 5.0  # the leader's renewal (a write)


def _rv(obj: Mapping[str, Any]) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


def backoff(retry: int) -> float:
    return float(min(60, 2 ** min(retry, 6)))


class Controller:
    """Everything the handlers do, callable without kopf (the integration tests drive it via kopf)."""

    def __init__(
        self,
        kube: Kube,
        config: OperatorConfig,
        *,
        metrics: OperatorMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.kube = kube
        self.config = config
        self.metrics = metrics or OperatorMetrics()
        self.clock = clock
        self.verifier = ArtifactVerifier(max_bytes=config.artifact_max_bytes, enabled=config.verify_artifacts,
                                         policy=config.artifact_policy)
        self.cache = ObjectCache()
        self.collector = Collector(
            kube, endpoints_file=config.metrics_endpoints_file, prometheus_url=config.prometheus_url,
            pod_source=lambda ns, instance: self.cache.labelled("Pod", ns, instance),
        )
        self._scrape_failures: dict[Key, Any] = {}  # key -> signature of the ongoing failure episode
        self.children = ChildSync(kube, self.cache)
        kube.on_request = self._count_request
        self.known: dict[Key, dict[str, Any]] = {}
        self.experiments: Any = None  # the ABExperiment controller (mlops.operator.experiments.register)
        self.retrain: Any = None  # the RetrainPolicy controller (mlops.operator.retrain.register)
        self._locks: dict[Key, asyncio.Lock] = {}
        self._pending: set[Key] = set()  # debouncing or queued
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._running: set[Key] = set()
        self._rerun: set[Key] = set()  # changed while being reconciled
        self._retries: dict[Key, int] = {}
        self._reconciled_generation: dict[Key, int] = {}
        self._next_resync: dict[Key, float] = {}
        self._next_collect: dict[Key, float] = {}
        self._collecting: set[Key] = set()
        self._reconcile_pool = ThreadPoolExecutor(max(1, config.workers), thread_name_prefix="reconcile")
        self._collect_pool = ThreadPoolExecutor(max(1, config.collect_workers), thread_name_prefix="collect")
        self.elector: LeaderElector | None = None
        self.metrics.leader.set(0 if config.leader_elect else 1)
        if config.leader_elect:
            if not config.leader_election_namespace:
                raise ValueError("leader election needs a namespace (--leader-election-namespace or $POD_NAMESPACE)")
            self.elector = LeaderElector(
                kube, config.leader_election_namespace, config.leader_election_lease_name,
                config.leader_election_identity or f"{socket.gethostname()}_{os.getpid()}",
                lease_duration=config.lease_duration, renew_deadline=config.renew_deadline,
                retry_period=config.retry_period,
            )

    @property
    def active(self) -> bool:
        """Whether this replica may act (it holds the Lease, or leader election is off)."""
        return self.elector is None or self.elector.is_leader

    def _count_request(self, verb: str, kind: str) -> None:
        self.metrics.api_requests.labels(verb, kind).inc()

    # ---- synchronous work (runs in worker threads) --------------------------------------------------
    def _now(self) -> str:
        return now_rfc3339(self.clock())

    def _event(self, cr: Mapping[str, Any], etype: str, reason: str, message: str) -> None:
        try:
            self.kube.post_event(cr, etype, reason, message, self.clock())
            self.metrics.events.labels(etype, reason).inc()
        except KubeError as exc:
            self.metrics.errors.labels("event").inc()
            log.warning("could not post event %s for %s: %s", reason, cr["metadata"]["name"], exc)

    def _transition_events(self, cr, old_conditions, new_conditions) -> None:
        for cond in new_conditions:
            before = next((c for c in old_conditions if c.get("type") == cond["type"]), None)
            before_status = before.get("status") if before else None
            hit = TRANSITION_EVENTS.get((cond["type"], cond["status"]))
            if not hit:
                continue
            if before_status == cond["status"]:
                # still Degraded / not Ready, but for a different reason: that is news too
                if hit[0] != "Warning" or (before.get("reason"), before.get("message")) == (
                        cond.get("reason"), cond.get("message")):
                    continue
                if cond["type"] == "Ready" and before.get("reason") == cond.get("reason"):
                    continue  # "waiting for v1 0/2" -> "1/2" is progress, not news
            elif before_status is None and cond["status"] == "False" and (
                    cond["type"] != "Ready" or cond.get("reason") in ("ReplicasNotReady", "NothingToServe")):
                continue  # a new resource is not ready yet: expected, not an event
            reason = cond.get("reason") if hit[0] == "Warning" else hit[1]
            self._event(cr, hit[0], reason or hit[1], cond.get("message", ""))

    def _write_status(self, cr: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
        old = cr.get("status") or {}
        if all(old.get(k) == v for k, v in new.items()):
            return False
        meta = cr["metadata"]
        updated = self.kube.patch_status(meta["namespace"], meta["name"], new, uid=meta.get("uid"))
        key = (meta["namespace"], meta["name"])
        if key in self.known and isinstance(updated, dict) and updated.get("metadata"):
            updated.setdefault("kind", n.KIND)
            updated.setdefault("apiVersion", n.API_VERSION)
            self.known[key] = updated
        self._transition_events(cr, old.get("conditions") or [], new.get("conditions") or old.get("conditions") or [])
        return True

    def _observe(self, cr: Mapping[str, Any], spec: Mapping[str, Any] | None = None) -> tuple[list[dict], Observed]:
        owned = self.children.owned(cr, PRUNABLE)
        deployed: dict[str, dict[str, str]] = {}
        for obj in owned:
            ann = (obj.get("metadata") or {}).get("annotations") or {}
            labels = (obj.get("metadata") or {}).get("labels") or {}
            version = ann.get(n.ANN_VERSION) or labels.get(n.LABEL_VERSION)
            if obj["kind"] == "Deployment" and version and n.ANN_ARTIFACT_SHA256 in ann:
                deployed[version] = {
                    "uri": ann.get(n.ANN_ARTIFACT_URI, ""),
                    "sha256": ann[n.ANN_ARTIFACT_SHA256],
                    "format": ann.get(n.ANN_ARTIFACT_FORMAT, "skops"),
                }
        # the running ABExperiment and an autoPromote record, from the watch-fed experiments cache
        experiments = self.experiments.experiments_in(cr["metadata"]["namespace"]) if self.experiments else None
        experiment, promoted = routing_for(self.kube, cr, experiments)
        observed = Observed(
            deployed_artifacts=deployed,
            previous_stable=(cr.get("status") or {}).get("currentVersion"),
            experiment=experiment,
            promoted=promoted,
            cluster_domain=self.config.cluster_domain,
        )
        if spec is not None:  # retrained candidates (closed loop): verdicts settled, served ones added
            meta = cr["metadata"]
            if experiments is None:
                experiments = self._list_experiments(meta["namespace"])
            view = cand.reconcile(
                self.kube, cr, spec, configmap=self.cache.get("ConfigMap", meta["namespace"],
                                                               cand.cc.configmap_name(meta["name"])),
                experiments=experiments, now=self._now(), event=self._event)
            observed.candidates, observed.candidate_stable = view.versions, view.stable
            observed.candidate_status, observed.candidate_errors = view.status, view.errors
        return owned, observed

    def _list_experiments(self, namespace: str) -> list[dict[str, Any]]:
        try:
            return self.kube.list(n.ABX_KIND, namespace)
        except KubeError as exc:
            if exc.status in (403, 404):
                return []
            raise

    def _current(self, namespace: str, name: str) -> dict[str, Any] | None:
        cr = self.known.get((namespace, name))
        if cr is None:
            cr = self.kube.get_mdep(namespace, name)
            if cr is not None:
                self.known[(namespace, name)] = cr
        return cr

    def _diagnose(self, cr, the_plan, deployments) -> dict[str, tuple[str, str]]:
        """(reason, message) per version (and "router") whose rollout is not complete."""
        name, ns = cr["metadata"]["name"], cr["metadata"]["namespace"]
        pending = {}
        for v in the_plan.spec["versions"]:
            if v["name"] in the_plan.served_versions:
                dep = deployments.get(n.version_object_name(name, v["name"]))
                want = st._wanted_replicas(v, dep)
                if not st._ready(dep, want)[1]:
                    pending[v["name"]] = dep
        if the_plan.effective_stable is not None:
            router = deployments.get(n.router_name(name))
            if not st._ready(router, 1)[1]:
                pending["router"] = router
        if not pending:
            return {}
        pods = self.cache.labelled("Pod", ns, n.label_value(name))  # watch-fed: no request
        out = {}
        for key, dep in pending.items():
            if key == "router":
                mine = [p for p in pods if ((p.get("metadata") or {}).get("labels") or {}).get(
                    "app.kubernetes.io/component") == n.COMPONENT_ROUTER]
            else:
                mine = [p for p in pods if ((p.get("metadata") or {}).get("labels") or {}).get(
                    n.LABEL_VERSION) == n.label_value(key)]
            problem = diagnose(dep, mine)
            if problem:
                out[key] = problem
        return out

    def reconcile_sync(self, namespace: str, name: str) -> str:
        """Reconcile one ModelDeployment; returns the phase written. Raises KubeError when the API is down."""
        started = time.perf_counter()
        cr = self._current(namespace, name)
        if cr is None or cr["metadata"].get("deletionTimestamp"):
            return "Gone"
        try:
            spec = normalize_spec(cr.get("spec") or {})
        except InvalidSpec as exc:
            self._write_status(cr, st.reconcile_status(cr, plan=None, error=str(exc), deployments={}, now=self._now()))
            self.metrics.reconciles.labels("invalid_spec").inc()
            return "Failed"
        owned, observed = self._observe(cr, spec)
        observed.artifact_checks = {
            v["name"]: self.verifier.check(v["artifact"]["uri"], v["artifact"]["sha256"])
            for v in [*spec["versions"], *observed.candidates]
        }
        try:
            the_plan = plan(cr, observed)
        except InvalidSpec as exc:
            self._write_status(cr, st.reconcile_status(cr, plan=None, error=str(exc), deployments={}, now=self._now()))
            self.metrics.reconciles.labels("invalid_spec").inc()
            return "Failed"
        key_conflict = ensure_signing_key(self.kube, cr, self.cache)
        if key_conflict:  # the pods would mount someone else's Secret: apply nothing, as for any conflict
            result = SyncResult(conflicts=[key_conflict])
        else:
            result = self.children.sync(cr, the_plan.objects, PRUNABLE)
        self.metrics.skipped.inc(result.skipped)
        for applied in result.applied:
            self.metrics.applied.labels(applied.partition("/")[0]).inc()
        for gone in result.pruned:
            self.metrics.pruned.labels(gone.partition("/")[0]).inc()
            self._event(cr, "Normal", "Pruned", f"deleted {gone}: no longer in spec")
        if result.errors:
            self.metrics.errors.labels("apply").inc(len(result.errors))
            log.warning("reconcile of %s/%s: %s", namespace, name, "; ".join(result.errors))
        deployments = {k[1]: v for k, v in result.live.items() if k[0] == "Deployment"}
        errors = list(result.errors) + list(observed.candidate_errors)
        problems = self._diagnose(cr, the_plan, deployments)
        new = st.reconcile_status(
            cr, plan=the_plan, error=None, deployments=deployments, now=self._now(),
            conflicts=result.conflicts, errors=errors, problems=problems,
            artifact_checks=observed.artifact_checks,
        )
        new["candidates"] = observed.candidate_status or None
        self._write_status(cr, new)
        self._reconciled_generation[(namespace, name)] = cr["metadata"].get("generation") or 0
        self.metrics.reconciles.labels("conflict" if result.conflicts else "error" if errors else "success").inc()
        self.metrics.reconcile_seconds.observe(time.perf_counter() - started)
        return new["phase"]

    def scrape_sync(self, namespace: str, name: str) -> dict[str, Any] | None:
        """Collect the sidecars' metrics (slow, bounded by the collector's timeouts): no status write."""
        cr = self.known.get((namespace, name))
        if cr is None:
            return None
        try:
            spec = normalize_spec(cr.get("spec") or {})
        except InvalidSpec:
            return None
        if not spec["monitoring"]["enabled"]:
            return None
        started = time.perf_counter()
        try:
            metrics = self.collector.collect(cr, spec, self._now())
        except CollectError as exc:
            self.metrics.collections.labels("error").inc()
            self._scrape_failed(cr, str(exc), episode=exc.sources or None)
            return None
        except KubeError as exc:
            self.metrics.collections.labels("error").inc()
            self._scrape_failed(cr, f"cannot list pods: {exc}")
            return None
        self.metrics.collection_seconds.observe(time.perf_counter() - started)
        if metrics is None:
            self.metrics.collections.labels("empty").inc()
            return None
        self.metrics.collections.labels("success").inc()
        self._scrape_failures.pop((namespace, name), None)
        return metrics

    def _scrape_failed(self, cr: Mapping[str, Any], message: str, episode: Any = None) -> None:
        """A failed scrape leaves a trace: a Warning Event and a warning in the log when a failure
        episode starts (or what failed changes), the errors metric every time. Repeats are logged at
        debug level and not re-posted: 1,000 resources with dead sidecars must not turn into 1,000 Event
        writes (and 1,000 log warnings) per collection interval. ``episode`` identifies the episode (the
        failing sources; default: the message), so an error text that flaps between a status error and
        a timeout on a loaded node is not a new episode each time."""
        key = (cr["metadata"]["namespace"], cr["metadata"]["name"])
        signature = episode if episode is not None else message
        if self._scrape_failures.get(key) == signature:
            log.debug("metrics collection for %s/%s failed (episode ongoing): %s", *key, message)
            return
        log.warning("metrics collection for %s/%s failed: %s", *key, message)
        self._scrape_failures[key] = signature
        if self.active:
            self._event(cr, "Warning", "MetricsCollectionFailed", message)

    def write_metrics_sync(self, namespace: str, name: str, metrics: Mapping[str, Any]) -> None:
        cr = self.known.get((namespace, name))
        if cr is None:
            return
        spec = normalize_spec(cr.get("spec") or {})
        new = st.metrics_status(
            cr,
            metrics=metrics,
            thresholds=spec["monitoring"]["alerts"],
            baseline_accuracy=spec["monitoring"].get("baselineAccuracy"),
            now=self._now(),
        )
        old_status = cr.get("status") or {}
        if self._metrics_unchanged(old_status, new):
            return
        old_alerts = {(a.get("severity"), a.get("type")) for a in old_status.get("alerts") or []}
        self._write_status(cr, new)
        for alert in new["alerts"]:
            if (alert["severity"], alert["type"]) not in old_alerts:
                etype = "Warning" if alert["severity"] in ("WARNING", "CRITICAL") else "Normal"
                self._event(cr, etype, f"Alert{alert['type']}", f"[{alert['severity']}] {alert['message']}")

    METRICS_HEARTBEAT = 300.0

    def _metrics_unchanged(self, old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
        """Same numbers, alerts and conditions as written, and ``collectedAt`` younger than 5 minutes:
        skip the write (idle resources then cost no status write per collection interval)."""
        old_metrics = dict(old.get("metrics") or {})
        new_metrics = dict(new.get("metrics") or {})
        stamp = old_metrics.pop("collectedAt", None)
        new_metrics.pop("collectedAt", None)
        if stamp is None or old_metrics != new_metrics:
            return False
        if any(old.get(k) != new.get(k) for k in new if k != "metrics"):
            return False
        try:
            age = self.clock() - dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()
        except ValueError:
            return False
        return age < self.METRICS_HEARTBEAT

    def collect_sync(self, namespace: str, name: str) -> dict[str, Any] | None:
        """Scrape and write (tests and callers without the async plumbing)."""
        metrics = self.scrape_sync(namespace, name)
        if metrics is not None:
            self.write_metrics_sync(namespace, name, metrics)
        return metrics

    # ---- async plumbing --------------------------------------------------------------------------
    def lock(self, key: Key) -> asyncio.Lock:
        if key not in self._locks:
            self._locks[key] = asyncio.Lock()
        return self._locks[key]

    async def reconcile(self, key: Key) -> str:
        loop = asyncio.get_running_loop()
        async with self.lock(key):
            if not self.active:
                return "Standby"
            phase = await loop.run_in_executor(self._reconcile_pool, self.reconcile_sync, key[0], key[1])
        self._next_resync[key] = self.clock() + self.config.resync_interval
        return phase

    async def collect(self, key: Key) -> None:
        """Scrape on the collect pool without holding the resource's lock; then write under it."""
        if key in self._collecting:
            return  # the previous collection is still running (hanging sidecars): skip this round
        self._collecting.add(key)
        loop = asyncio.get_running_loop()
        try:
            metrics = await loop.run_in_executor(self._collect_pool, self.scrape_sync, key[0], key[1])
            if metrics is None or not self.active:
                return
            async with self.lock(key):
                await loop.run_in_executor(self._reconcile_pool, self.write_metrics_sync, key[0], key[1], metrics)
        finally:
            self._collecting.discard(key)

    def schedule(self, key: Key, *, delay: float | None = None) -> None:
        """Reconcile ``key`` soon. A work queue as in controller-runtime: a key waits (debounce, then
        the queue) at most once, however many events arrive, and is never reconciled by two workers at
        once; an event during its reconciliation queues exactly one more. Before, every event after
        the debounce queued another reconciliation of the same key: at 1,000 new ModelDeployments the
        pool's queue held thousands of stale duplicates and a rollout that had finished waited minutes
        for its status."""
        if key in self._pending:
            return
        self._pending.add(key)
        asyncio.get_running_loop().call_later(self.config.debounce if delay is None else delay,
                                              self._queue.put_nowait, key)

    async def work(self) -> None:
        """One reconcile worker (``config.workers`` of them run, one per thread of the reconcile pool)."""
        while True:
            key = await self._queue.get()
            self._pending.discard(key)  # from here on, a new event must queue the key again
            if key in self._running:
                self._rerun.add(key)  # reconciled again when the running one finishes
                continue
            if not self.active or key not in self.known:
                continue
            self._running.add(key)
            failed_retry: float | None = None
            try:
                await self.reconcile(key)
                self._retries.pop(key, None)
            except KubeError as exc:
                retry = self._retries.get(key, 0)
                self._retries[key] = retry + 1
                self.metrics.reconciles.labels("error").inc()
                self.metrics.errors.labels("reconcile").inc()
                log.warning("reconcile of %s/%s failed (retry %d in %.0f s): %s", key[0], key[1], retry + 1,
                            backoff(retry), exc)
                failed_retry = backoff(retry)
            except Exception:  # one resource must never stop the others
                self.metrics.errors.labels("reconcile").inc()
                log.exception("reconcile of %s/%s crashed", key[0], key[1])
                failed_retry = backoff(self._retries.get(key, 3))
            finally:
                self._running.discard(key)
            if failed_retry is not None:
                self._rerun.discard(key)
                self.schedule(key, delay=failed_retry)
            elif key in self._rerun:
                self._rerun.discard(key)
                self.schedule(key, delay=0.0)

    def forget(self, key: Key) -> None:
        self.known.pop(key, None)
        self._scrape_failures.pop(key, None)
        self._next_resync.pop(key, None)
        self._next_collect.pop(key, None)
        self._reconciled_generation.pop(key, None)
        self._retries.pop(key, None)
        self._locks.pop(key, None)
        self.metrics.managed.set(len(self.known))

    def observe_resource(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A watch event of a ModelDeployment: keep the cache, reconcile when the spec moved."""
        meta = body.get("metadata") or {}
        key = (meta.get("namespace"), meta.get("name"))
        if event_type == "DELETED":
            self.forget(key)
            return
        obj = dict(body)
        obj.setdefault("kind", n.KIND)
        obj.setdefault("apiVersion", n.API_VERSION)
        first = key not in self.known
        if not first and _rv(self.known[key]) > _rv(obj) and \
                self.known[key]["metadata"].get("uid") == meta.get("uid"):
            return  # an event older than the status this operator just wrote
        self.known[key] = obj
        self.metrics.managed.set(len(self.known))
        generation = meta.get("generation") or 0
        observed = (obj.get("status") or {}).get("observedGeneration")
        if (first or self._reconciled_generation.get(key) != generation or observed != generation) and self.active:
            self.schedule(key)

    def observe_child(self, kind: str, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A watch event of an owned object: update the cache and wake its controller owner."""
        if event_type == "DELETED":
            self.cache.remove(kind, body)
        else:
            self.cache.put(kind, body)
        meta = body.get("metadata") or {}
        if kind == "Pod":  # owned by a ReplicaSet: the label names the ModelDeployment
            instance = (meta.get("labels") or {}).get(n.LABEL_DEPLOYMENT)
            key = (meta.get("namespace"), instance)
            if instance and key in self.known and self.active:
                self.schedule(key)
            return
        for ref in meta.get("ownerReferences") or []:
            # any owner reference, not only the controller's: the candidates ConfigMap is owned (for
            # garbage collection) but not controlled (never pruned), and its changes matter
            if ref.get("kind") == n.KIND and ref.get("apiVersion") == n.API_VERSION:
                key = (meta.get("namespace"), ref.get("name"))
                known = self.known.get(key)
                if known is not None and known["metadata"].get("uid") == ref.get("uid") and self.active:
                    self.schedule(key)

    def prime_cache(self) -> int:
        """One label-filtered LIST per owned kind (per namespace), so the first reconciliations read the
        cache instead of the API server; the watches keep it current from then on."""
        selector = MANAGED_SELECTOR
        namespaces: list[str | None] = [None] if self.config.all_namespaces else list(self.config.namespaces)
        count = 0
        for kind in (*OWNED_KINDS, "Pod"):
            for ns in namespaces:
                try:
                    for obj in self.kube.list(kind, ns, selector):
                        self.cache.put(kind, obj)
                        count += 1
                except KubeError as exc:
                    log.warning("could not prime the %s cache in %s: %s (the watch will fill it)", kind, ns, exc)
        return count

    def collect_interval(self, cr: Mapping[str, Any]) -> float:
        if self.config.metrics_interval:
            return self.config.metrics_interval
        mon = (cr.get("spec") or {}).get("monitoring") or {}
        return float(mon.get("collectIntervalSeconds") or 30)

    async def campaign(self, stopped: asyncio.Event) -> None:
        """Leader election loop: on winning, reconcile everything known; on losing, stop acting."""
        assert self.elector is not None
        loop = asyncio.get_running_loop()
        leading = False
        while not stopped.is_set():
            holds = await loop.run_in_executor(None, self.elector.try_acquire_or_renew)
            self.metrics.leader.set(1 if holds else 0)
            if holds and not leading:
                log.info("leading: reconciling %d resources", len(self.known))
                for key in list(self.known):
                    self.schedule(key)
            elif leading and not holds:
                log.warning("lost the leader lease: standing by")
            leading = holds
            wait = self.config.renew_period if holds else self.config.retry_period
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopped.wait(), timeout=wait)
        await loop.run_in_executor(None, self.elector.release)

    async def background(self, stopped: asyncio.Event) -> None:
        """Periodic resync (re-checks failed artifacts, catches missed events) and metric collection.

        Resyncs go through ``schedule`` (the reconcile pool); collections through the collect pool,
        with at most one in flight per resource: neither can starve the other.
        """
        tasks: set[asyncio.Task] = {asyncio.create_task(self.work()) for _ in range(max(1, self.config.workers))}
        while not stopped.is_set():
            now = self.clock()
            if self.active:
                for key, cr in list(self.known.items()):
                    if now >= self._next_resync.setdefault(key, now + self.config.resync_interval):
                        self._next_resync[key] = now + self.config.resync_interval
                        self.schedule(key)
                    due = self._next_collect.setdefault(key, now + min(5.0, self.collect_interval(cr)))
                    if now >= due and key not in self._collecting:
                        self._next_collect[key] = now + self.collect_interval(cr)
                        t = asyncio.create_task(self._guarded_collect(key))
                        tasks.add(t)
                        t.add_done_callback(tasks.discard)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopped.wait(), timeout=0.5)
        for t in tasks:
            t.cancel()

    async def _guarded_collect(self, key: Key) -> None:
        try:
            await self.collect(key)
        except KubeError as exc:
            self.metrics.errors.labels("collect").inc()
            log.warning("collect of %s/%s failed: %s", key[0], key[1], exc)
        except Exception:  # the loop must survive anything one resource does
            self.metrics.errors.labels("collect").inc()
            log.exception("collect of %s/%s crashed", key[0], key[1])

    def shutdown(self) -> None:
        self._reconcile_pool.shutdown(wait=False, cancel_futures=True)
        self._collect_pool.shutdown(wait=False, cancel_futures=True)


MANAGED_SELECTOR = f"app.kubernetes.io/managed-by={n.MANAGED_BY}"
OWNED_RESOURCES = {
    # kind -> (group, version, plural) for kopf's watch streams
    "Deployment": ("apps", "v1", "deployments"),
    "Service": ("", "v1", "services"),
    "ConfigMap": ("", "v1", "configmaps"),
    "ServiceAccount": ("", "v1", "serviceaccounts"),
    "Secret": ("", "v1", "secrets"),
    "Job": ("batch", "v1", "jobs"),
    "HorizontalPodAutoscaler": ("autoscaling", "v2", "horizontalpodautoscalers"),
    # not owned directly (ReplicaSets own them) but labelled: rollout diagnosis and scrape targets
    "Pod": ("", "v1", "pods"),
}


def _no_diffbase_storage() -> Any:
    """kopf builds a deep-copied "essence" of every object on every watch event (for its on.create/
    on.update handlers' diffs), even when, as here, only on.event handlers exist: at 1,000
    ModelDeployments that copying was the largest part of the event loop's CPU. This storage makes
    the essence empty. ``build_registry`` refuses handlers that would need a real one."""
    import kopf

    class NoDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
        def build(self, *, body: Any, extra_fields: Any = None) -> Any:
            return {}

        def fetch(self, *, body: Any) -> Any:
            return None

    return NoDiffBaseStorage()


def build_registry(controller: Controller) -> Any:
    """Register the handlers on a fresh kopf registry bound to ``controller``."""
    import kopf

    registry = kopf.OperatorRegistry()
    stopped = asyncio.Event()
    background: dict[str, asyncio.Task] = {}

    @kopf.on.startup(registry=registry)
    async def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.peering.standalone = True
        settings.posting.enabled = False  # our Events are aggregated and posted by the Controller
        # No runtime observation of namespaces and CRDs: it needs cluster-wide list/watch on both (least
        # privilege says no), and without it kopf retries 403s for ~30 s before using the named namespaces.
        # The CRDs must therefore be installed before the operator starts.
        settings.scanning.disabled = True
        settings.watching.server_timeout = 300
        settings.batching.error_delays = [1, 2, 5, 10, 30, 60]
        settings.execution.max_workers = max(4, controller.config.workers * 2)
        settings.persistence.diffbase_storage = _no_diffbase_storage()
        # Server-side label filtering of the owned kinds' watch streams: only our objects cross the wire.
        from kopf._cogs.structs.references import Selector

        for group, version, plural in OWNED_RESOURCES.values():
            settings.watching.label_selectors[Selector(group=group, version=version, plural=plural)] = MANAGED_SELECTOR
        primed = await asyncio.get_running_loop().run_in_executor(None, controller.prime_cache)
        log.info("owned-object cache primed with %d objects", primed)
        background["task"] = asyncio.create_task(controller.background(stopped))
        if controller.elector is not None:
            background["campaign"] = asyncio.create_task(controller.campaign(stopped))

    @kopf.on.login(registry=registry)
    def _login(**kwargs: Any) -> Any:
        # A custom registry gets no default login handlers: in-cluster token first, then $KUBECONFIG
        # (both read at call time, so `--kubeconfig` works however early the client was imported).
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.cleanup(registry=registry)
    async def _cleanup(**_: Any) -> None:
        stopped.set()
        tasks = [t for t in background.values() if t]
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        controller.shutdown()

    @kopf.on.event(n.GROUP, n.VERSION, n.PLURAL, registry=registry)
    async def track_mdep(event: Mapping[str, Any], body: Any, **_: Any) -> None:
        controller.observe_resource(event.get("type"), dict(body))

    managed = {"app.kubernetes.io/managed-by": n.MANAGED_BY}
    for kind, (group, version, plural) in OWNED_RESOURCES.items():
        def make(kind: str) -> Callable[..., Any]:
            async def owned_changed(event: Mapping[str, Any], body: Any, **_: Any) -> None:
                controller.observe_child(kind, event.get("type"), dict(body))
            owned_changed.__name__ = f"owned_{kind.lower()}_changed"
            return owned_changed

        kopf.on.event(group, version, plural, labels=managed, id=f"owned-{kind.lower()}", registry=registry)(make(kind))

    register_experiments(registry, controller)
    register_retrain(registry, controller)
    changing = [h.id for h in (*registry._changing.get_all_handlers(), *registry._spawning.get_all_handlers())]
    if changing:  # they would need kopf's diff base, which _no_diffbase_storage switches off
        raise RuntimeError(f"on.create/update/delete, daemon and timer handlers are not supported here: {changing}")
    return registry
