"""Thin kopf handlers around the Controller: observe, build (pure), apply, prune, write status.

Design choices that keep the operator safe to kill at any moment:
- reconciliation is level-based and idempotent (server-side apply of the full desired set, prune by
  label + owner uid), so a restart just runs it again and converges to the same objects;
- no finalizers (owner references make the garbage collector delete everything) and no kopf timers
  (they require a finalizer): periodic resync and metric collection run in one background task;
- the spec is never written; only ``status`` (merge patch on the status subresource) and kopf's own
  bookkeeping annotations (last handled spec, retry progress) on the resource;
- API errors raise ``kopf.TemporaryError`` with exponential backoff; specs the schema admitted but the
  operator cannot act on become a condition and an Event, not an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mlops.operator import status as st
from mlops.operator.artifacts import ArtifactVerifier
from mlops.operator.collector import CollectError, Collector
from mlops.operator.k8s import Kube, KubeError, now_rfc3339
from mlops.operator.metrics import OperatorMetrics
from mlops.operator.resources import naming as n
from mlops.operator.resources.model_deployment import Observed, plan
from mlops.operator.resources.spec import InvalidSpec, normalize_spec
from mlops.operator.signing_key import ensure_signing_key

log = logging.getLogger("mlops.operator")
Key = tuple[str, str]  # (namespace, name)

TRANSITION_EVENTS = {
    # (condition, new status) -> (event type, reason)
    ("Ready", "True"): ("Normal", "Ready"),
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
    cluster_domain: str = "cluster.local"
    workers: int = 4


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
        self.verifier = ArtifactVerifier(max_bytes=config.artifact_max_bytes, enabled=config.verify_artifacts)
        self.collector = Collector(
            kube, endpoints_file=config.metrics_endpoints_file, prometheus_url=config.prometheus_url
        )
        self.known: dict[Key, dict[str, Any]] = {}
        self._locks: dict[Key, asyncio.Lock] = {}
        self._pending: dict[Key, bool] = {}  # key -> full reconcile wanted (else status refresh)
        self._next_resync: dict[Key, float] = {}
        self._next_collect: dict[Key, float] = {}
        self._sem: asyncio.Semaphore | None = None

    # ---- synchronous work (runs in worker threads) --------------------------------------------------
    def _now(self) -> str:
        return now_rfc3339(self.clock())

    def _event(self, cr: Mapping[str, Any], etype: str, reason: str, message: str) -> None:
        try:
            self.kube.post_event(cr, etype, reason, message, self.clock())
        except KubeError as exc:
            self.metrics.errors.labels("event").inc()
            log.warning("could not post event %s for %s: %s", reason, cr["metadata"]["name"], exc)

    def _transition_events(self, cr, old_conditions, new_conditions) -> None:
        for cond in new_conditions:
            before = st.condition_status(old_conditions, cond["type"])
            if before == cond["status"] or (before is None and cond["status"] == "False"):
                continue
            hit = TRANSITION_EVENTS.get((cond["type"], cond["status"]))
            if hit:
                reason = cond.get("reason") if hit[0] == "Warning" else hit[1]
                self._event(cr, hit[0], reason or hit[1], cond.get("message", ""))

    def _write_status(self, cr: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
        old = cr.get("status") or {}
        if all(old.get(k) == v for k, v in new.items()):
            return False
        meta = cr["metadata"]
        self.kube.patch_status(meta["namespace"], meta["name"], new, uid=meta.get("uid"))
        self._transition_events(cr, old.get("conditions") or [], new.get("conditions") or old.get("conditions") or [])
        return True

    def _observe(self, cr: Mapping[str, Any]) -> tuple[list[dict], Observed]:
        owned = self.kube.owned(cr)
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
        observed = Observed(
            deployed_artifacts=deployed,
            previous_stable=(cr.get("status") or {}).get("currentVersion"),
            cluster_domain=self.config.cluster_domain,
        )
        return owned, observed

    def reconcile_sync(self, namespace: str, name: str, *, full: bool = True) -> str:
        """Reconcile one ModelDeployment; returns the phase written. Raises KubeError on API failures."""
        started = time.perf_counter()
        cr = self.kube.get_mdep(namespace, name)
        if cr is None or cr["metadata"].get("deletionTimestamp"):
            return "Gone"
        self.known[(namespace, name)] = cr
        try:
            spec = normalize_spec(cr.get("spec") or {})
        except InvalidSpec as exc:
            self._write_status(cr, st.reconcile_status(cr, plan=None, error=str(exc), deployments={}, now=self._now()))
            self.metrics.reconciles.labels("invalid_spec").inc()
            return "Failed"
        owned, observed = self._observe(cr)
        if full:
            observed.artifact_checks = {
                v["name"]: self.verifier.check(v["artifact"]["uri"], v["artifact"]["sha256"]) for v in spec["versions"]
            }
        else:  # status refresh: reuse cached verdicts only
            observed.artifact_checks = {
                v["name"]: self.verifier.cached(v["artifact"]["uri"], v["artifact"]["sha256"]) for v in spec["versions"]
            }
        try:
            the_plan = plan(cr, observed)
        except InvalidSpec as exc:
            self._write_status(cr, st.reconcile_status(cr, plan=None, error=str(exc), deployments={}, now=self._now()))
            self.metrics.reconciles.labels("invalid_spec").inc()
            return "Failed"
        deployments = {o["metadata"]["name"]: o for o in owned if o["kind"] == "Deployment"}
        if full:
            if ensure_signing_key(self.kube, cr) == "conflict":
                self._event(cr, "Warning", "ResourceConflict", f"Secret {n.signing_key_secret_name(name)} exists "
                            "and is not owned by this ModelDeployment; prediction ids cannot be verified")
            for obj in the_plan.objects:
                applied = self.kube.apply(obj)
                self.metrics.applied.labels(obj["kind"]).inc()
                if obj["kind"] == "Deployment":
                    deployments[obj["metadata"]["name"]] = applied
            for gone in self.kube.prune(cr, the_plan.objects, owned):
                kind, _, obj_name = gone.partition("/")
                deployments.pop(obj_name, None) if kind == "Deployment" else None
                self.metrics.pruned.labels(kind).inc()
                self._event(cr, "Normal", "Pruned", f"deleted {gone}: no longer in spec")
        else:
            desired = {(o["kind"], o["metadata"]["name"]) for o in the_plan.objects}
            deployments = {k: v for k, v in deployments.items() if ("Deployment", k) in desired}
        new = st.reconcile_status(cr, plan=the_plan, error=None, deployments=deployments, now=self._now())
        self._write_status(cr, new)
        self.metrics.reconciles.labels("success").inc()
        self.metrics.reconcile_seconds.observe(time.perf_counter() - started)
        return new["phase"]

    def collect_sync(self, namespace: str, name: str) -> dict[str, Any] | None:
        cr = self.kube.get_mdep(namespace, name)
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
            log.warning("metrics collection for %s/%s failed: %s", namespace, name, exc)
            return None
        self.metrics.collection_seconds.observe(time.perf_counter() - started)
        if metrics is None:
            self.metrics.collections.labels("empty").inc()
            return None
        self.metrics.collections.labels("success").inc()
        new = st.metrics_status(
            cr,
            metrics=metrics,
            thresholds=spec["monitoring"]["alerts"],
            baseline_accuracy=spec["monitoring"].get("baselineAccuracy"),
            now=self._now(),
        )
        old_alerts = {(a.get("severity"), a.get("type")) for a in (cr.get("status") or {}).get("alerts") or []}
        self._write_status(cr, new)
        for alert in new["alerts"]:
            if (alert["severity"], alert["type"]) not in old_alerts:
                etype = "Warning" if alert["severity"] in ("WARNING", "CRITICAL") else "Normal"
                self._event(cr, etype, f"Alert{alert['type']}", f"[{alert['severity']}] {alert['message']}")
        return metrics

    # ---- async plumbing --------------------------------------------------------------------------
    def lock(self, key: Key) -> asyncio.Lock:
        if key not in self._locks:
            self._locks[key] = asyncio.Lock()
        return self._locks[key]

    async def reconcile(self, key: Key, *, full: bool = True) -> str:
        async with self.lock(key):
            phase = await asyncio.to_thread(self.reconcile_sync, key[0], key[1], full=full)
        if full:
            self._next_resync[key] = self.clock() + self.config.resync_interval
        return phase

    async def collect(self, key: Key) -> None:
        async with self.lock(key):
            await asyncio.to_thread(self.collect_sync, key[0], key[1])

    def schedule(self, key: Key, *, full: bool) -> None:
        """Coalesce bursts of events (a rollout updates a Deployment's status several times)."""
        if key in self._pending:
            self._pending[key] = self._pending[key] or full
            return
        self._pending[key] = full
        asyncio.get_running_loop().create_task(self._run_pending(key))

    async def _run_pending(self, key: Key) -> None:
        await asyncio.sleep(0.2)
        full = self._pending.pop(key, False)
        try:
            await self.reconcile(key, full=full)
        except KubeError as exc:
            self.metrics.errors.labels("reconcile").inc()
            log.warning("reconcile of %s/%s failed, the resync will retry: %s", key[0], key[1], exc)

    def forget(self, key: Key) -> None:
        self.known.pop(key, None)
        self._next_resync.pop(key, None)
        self._next_collect.pop(key, None)
        self._locks.pop(key, None)
        self.metrics.managed.set(len(self.known))

    def collect_interval(self, cr: Mapping[str, Any]) -> float:
        if self.config.metrics_interval:
            return self.config.metrics_interval
        mon = (cr.get("spec") or {}).get("monitoring") or {}
        return float(mon.get("collectIntervalSeconds") or 30)

    async def background(self, stopped: asyncio.Event) -> None:
        """Periodic resync (heals deleted objects, re-checks failed artifacts) and metric collection."""
        self._sem = asyncio.Semaphore(self.config.workers)

        async def guarded(coro_fn, key, stage):
            async with self._sem:
                try:
                    await coro_fn(key)
                except KubeError as exc:
                    self.metrics.errors.labels(stage).inc()
                    log.warning("%s of %s/%s failed: %s", stage, key[0], key[1], exc)
                except Exception:  # the loop must survive anything one resource does
                    self.metrics.errors.labels(stage).inc()
                    log.exception("%s of %s/%s crashed", stage, key[0], key[1])

        tasks: set[asyncio.Task] = set()
        while not stopped.is_set():
            now = self.clock()
            for key, cr in list(self.known.items()):
                if now >= self._next_resync.get(key, now + self.config.resync_interval):
                    self._next_resync[key] = now + self.config.resync_interval
                    t = asyncio.create_task(guarded(self.reconcile, key, "resync"))
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
                due = self._next_collect.setdefault(key, now + min(5.0, self.collect_interval(cr)))
                if now >= due:
                    self._next_collect[key] = now + self.collect_interval(cr)
                    t = asyncio.create_task(guarded(self.collect, key, "collect"))
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopped.wait(), timeout=0.5)
        for t in tasks:
            t.cancel()


def build_registry(controller: Controller) -> Any:
    """Register the handlers on a fresh kopf registry bound to ``controller``."""
    import kopf

    registry = kopf.OperatorRegistry()
    stopped = asyncio.Event()
    background: dict[str, asyncio.Task] = {}

    @kopf.on.startup(registry=registry)
    async def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.peering.standalone = True
        settings.posting.level = logging.WARNING
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=n.GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=n.GROUP, key="last-handled-configuration"
        )
        # No runtime observation of namespaces and CRDs: it needs cluster-wide list/watch on both (least
        # privilege says no), and without it kopf retries 403s for ~30 s before using the named namespaces.
        # The CRDs must therefore be installed before the operator starts.
        settings.scanning.disabled = True
        settings.watching.server_timeout = 300
        settings.batching.error_delays = [1, 2, 5, 10, 30, 60]
        settings.execution.max_workers = max(4, controller.config.workers * 2)
        background["task"] = asyncio.create_task(controller.background(stopped))

    @kopf.on.login(registry=registry)
    def _login(**kwargs: Any) -> Any:
        # A custom registry gets no default login handlers: in-cluster token first, then $KUBECONFIG
        # (both read at call time, so `--kubeconfig` works however early the client was imported).
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.cleanup(registry=registry)
    async def _cleanup(**_: Any) -> None:
        stopped.set()
        task = background.get("task")
        if task:
            await asyncio.wait([task], timeout=5)

    @kopf.on.resume(n.GROUP, n.VERSION, n.PLURAL, registry=registry)
    @kopf.on.create(n.GROUP, n.VERSION, n.PLURAL, registry=registry)
    @kopf.on.update(n.GROUP, n.VERSION, n.PLURAL, field="spec", registry=registry)
    async def reconcile_mdep(namespace: str, name: str, retry: int, logger: Any, **_: Any) -> None:
        try:
            phase = await controller.reconcile((namespace, name))
        except KubeError as exc:
            controller.metrics.reconciles.labels("error").inc()
            controller.metrics.errors.labels("reconcile").inc()
            # every API failure is retried: 403s get fixed by RBAC changes, 404s by a namespace coming back
            raise kopf.TemporaryError(f"reconcile failed: {exc}", delay=backoff(retry)) from exc
        logger.info("reconciled: phase %s", phase)

    @kopf.on.event(n.GROUP, n.VERSION, n.PLURAL, registry=registry)
    async def track_mdep(event: Mapping[str, Any], body: Any, namespace: str, name: str, **_: Any) -> None:
        key = (namespace, name)
        if event.get("type") == "DELETED":
            controller.forget(key)
            return
        controller.known[key] = dict(body)
        controller.metrics.managed.set(len(controller.known))

    @kopf.on.event("apps", "v1", "deployments", labels={"app.kubernetes.io/managed-by": n.MANAGED_BY}, registry=registry)
    async def owned_deployment_changed(event: Mapping[str, Any], body: Any, namespace: str, **_: Any) -> None:
        refs = (body.get("metadata") or {}).get("ownerReferences") or []
        owner = next((r for r in refs if r.get("kind") == n.KIND and r.get("apiVersion") == n.API_VERSION), None)
        if owner is None:
            return
        key = (namespace, owner["name"])
        if key not in controller.known:
            return
        # A deleted owned Deployment is re-created by a full reconcile; otherwise only status moves.
        controller.schedule(key, full=event.get("type") == "DELETED")

    return registry
