"""Collect the sidecars' counters for one ModelDeployment and turn them into ``status.metrics``.

Sources, in order of precedence:
1. an endpoint override file (``--metrics-endpoints FILE``: JSON ``{"<namespace>/<name>": [url, ...]}``,
   re-read on every collection) - how tests point the collector at real local sidecar processes
   while the pods are KWOK pods;
2. a Prometheus query API (``--prometheus-url``): one instant query for the ``mlops_*`` series of the
   deployment's pods;
3. by default, a direct scrape of every ready model pod's sidecar ``/metrics`` (pod IP, port 9090).

Whatever the source, the text is parsed into the sidecar's counts, merged by addition
(``merge_snapshots``) and summarized once (``summarize``): numbers across replicas are sums, never
averages of averages. Drift and accuracy *decisions* use windowed increments per source
(``mlops.operator.windows``): what arrived since the last collection, tested once a window is big
enough, at levels that stay valid under repeated evaluation.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mlops.operator.resources import naming as n
from mlops.operator.resources.model_deployment import SIDECAR_PORT

log = logging.getLogger("mlops.operator.collector")

# summarize() key -> status.metrics key
STATUS_KEYS = {
    "predictions": "predictions",
    "feedback": "labelled",
    "accuracy": "accuracy",
    "precision": "precision",
    "recall": "recall",
    "f1": "f1",
    "latency_p50_ms": "latencyP50Ms",
    "latency_p95_ms": "latencyP95Ms",
    "error_rate": "errorRate",
    "drift_score": "driftScore",
    "drifted_features": "driftedFeatures",
    "data_quality": "dataQuality",
}
WINDOW_KEYS = ("driftScore", "driftedFeatures", "driftWindowRows", "windowAccuracy", "windowLabelled",
               "accuracyDropPValue")


class CollectError(Exception):
    """No source answered (every endpoint failed): the previous status.metrics is kept.

    ``sources`` names what failed (sorted): a failure *episode* is the same set of sources, whatever
    the error of the moment (a status error one time, a timeout the next on a loaded node), so the
    operator posts one Event per episode, not one per flap of the error text."""

    def __init__(self, message: str, *, sources: tuple[str, ...] | list[str] = ()) -> None:
        super().__init__(message)
        self.sources = tuple(sorted(sources))


def to_status_metrics(summary: Mapping[str, Any], collected_at: str) -> dict[str, Any]:
    """summarize() output -> the camelCase status.metrics object (None values are left out)."""
    out: dict[str, Any] = {}
    for key, status_key in STATUS_KEYS.items():
        value = summary.get(key)
        if value is None:
            continue
        if isinstance(value, float):
            value = round(value, 6)
        out[status_key] = value
    out.setdefault("driftedFeatures", [])
    out["collectedAt"] = collected_at
    return out


class Collector:
    def __init__(
        self,
        kube: Any,
        *,
        endpoints_file: str | None = None,
        prometheus_url: str | None = None,
        prometheus_pod_label: str = "pod",
        timeout: float = 5.0,
        pod_source: Callable[[str, str], list[dict[str, Any]]] | None = None,
    ) -> None:
        self.kube = kube
        # (namespace, model-deployment label value) -> its pods; the operator passes its watch-fed cache
        self.pod_source = pod_source
        self.endpoints_file = Path(endpoints_file) if endpoints_file else None
        self.prometheus_url = prometheus_url.rstrip("/") if prometheus_url else None
        self.prometheus_pod_label = prometheus_pod_label
        self.timeout = timeout
        self._profiles: dict[tuple[str, str, str], tuple[str, Any]] = {}
        self._windows: dict[tuple[str, str, str], Any] = {}  # (namespace, name, uid) -> WindowState
        self._clients: dict[bool, Any] = {}
        self._clients_lock = threading.Lock()

    def http(self, *, trust_env: bool) -> Any:
        """The shared HTTP client for scrapes (thread-safe, pooled). Building an ``httpx.Client`` loads
        the CA bundle into a new SSL context: one client per scrape cost 65% of the operator's CPU
        with 1,000 ModelDeployments. Idle connections expire before uvicorn's 5 s keep-alive does."""
        import httpx

        with self._clients_lock:
            client = self._clients.get(trust_env)
            if client is None:
                client = httpx.Client(timeout=self.timeout, trust_env=trust_env,
                                      limits=httpx.Limits(max_connections=64, max_keepalive_connections=16,
                                                          keepalive_expiry=4.0))
                self._clients[trust_env] = client
            return client

    # ---- sources ---------------------------------------------------------------------------------
    def override_endpoints(self, namespace: str, name: str) -> list[str] | None:
        if self.endpoints_file is None or not self.endpoints_file.exists():
            return None
        try:
            table = json.loads(self.endpoints_file.read_text())
        except (OSError, ValueError) as exc:
            log.warning("cannot read metrics endpoints file %s: %s", self.endpoints_file, exc)
            return None
        urls = table.get(f"{namespace}/{name}")
        return list(urls) if urls is not None else None

    def pod_endpoints(self, cr: Mapping[str, Any]) -> list[str]:
        meta = cr["metadata"]
        selector = f"{n.LABEL_DEPLOYMENT}={n.label_value(meta['name'])},app.kubernetes.io/component={n.COMPONENT_MODEL}"
        if self.pod_source is not None:
            pods = [p for p in self.pod_source(meta["namespace"], n.label_value(meta["name"]))
                    if ((p.get("metadata") or {}).get("labels") or {}).get("app.kubernetes.io/component")
                    == n.COMPONENT_MODEL]
        else:
            pods = self.kube.list("Pod", meta["namespace"], selector)
        urls = []
        for pod in pods:
            status = pod.get("status") or {}
            ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
            if ready and status.get("podIP"):
                urls.append(f"http://{status['podIP']}:{SIDECAR_PORT}/metrics")
        return sorted(urls)  # a stable order: the same pods give the same failure message

    def _scrape(self, urls: list[str], *, trust_env: bool = True) -> dict[str, str]:
        import httpx

        texts: dict[str, str] = {}
        failures = []
        failed = []
        client = self.http(trust_env=trust_env)
        for url in urls:
            try:
                resp = client.get(url)
                resp.raise_for_status()
                texts[url] = resp.text
            except httpx.HTTPError as exc:
                failures.append(f"{url}: {type(exc).__name__}")
                failed.append(url)
        if urls and not texts:  # the caller reports it (once per failure episode)
            raise CollectError("no sidecar answered: " + "; ".join(failures), sources=failed)
        if failures:
            log.warning("scrape failures (the other sidecars answered): %s", "; ".join(failures))
        return texts

    def _prometheus_text(self, cr: Mapping[str, Any]) -> str:
        """Instant query for the deployment's pods' mlops_* series, rendered as exposition text."""
        import httpx

        meta = cr["metadata"]
        query = (
            f'{{__name__=~"mlops_.*",namespace="{meta["namespace"]}",'
            f'{self.prometheus_pod_label}=~"{n.dns_label(meta["name"])}-.*"}}'
        )
        try:
            resp = self.http(trust_env=True).get(f"{self.prometheus_url}/api/v1/query", params={"query": query})
            resp.raise_for_status()
            payload = resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise CollectError(f"prometheus query failed: {exc}", sources=[self.prometheus_url or ""]) from exc
        lines = []
        for series in payload.get("data", {}).get("result", []):
            labels = dict(series.get("metric", {}))
            name = labels.pop("__name__", "")
            body = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
            lines.append(f"{name}{{{body}}} {series['value'][1]}")
        return "\n".join(lines) + "\n"

    # ---- profile ---------------------------------------------------------------------------------
    def baseline_profile(self, cr: Mapping[str, Any], spec: Mapping[str, Any]) -> Any:
        ref = spec.get("baselineProfileRef")
        if not ref:
            return None
        ns = cr["metadata"]["namespace"]
        cm = self.kube.get("ConfigMap", ns, ref["configMapName"])
        if cm is None:
            log.warning("baseline profile ConfigMap %s/%s not found", ns, ref["configMapName"])
            return None
        text = (cm.get("data") or {}).get(ref.get("key", "profile.json"))
        if not text:
            return None
        key = (ns, ref["configMapName"], ref.get("key", "profile.json"))
        cached = self._profiles.get(key)
        if cached and cached[0] == text:
            return cached[1]
        from mlops.core.profile import BaselineProfile, ProfileVersionError

        try:
            profile = BaselineProfile.from_dict(json.loads(text))
        except ProfileVersionError as exc:
            # refused, not used: drift is off for this deployment until the profile is rebuilt
            log.warning("baseline profile %s/%s refused: %s", ns, ref["configMapName"], exc)
            return None
        self._profiles[key] = (text, profile)
        return profile

    # ---- the whole thing -------------------------------------------------------------------------
    def collect(self, cr: Mapping[str, Any], spec: Mapping[str, Any], collected_at: str) -> dict[str, Any] | None:
        """status.metrics for ``cr``, or None when there is nothing to scrape yet."""
        from mlops.core.counters import data_quality_from_snapshot, merge_snapshots, summarize
        from mlops.serving.sidecar_metrics import parse_metrics

        meta = cr["metadata"]
        urls = self.override_endpoints(meta["namespace"], meta["name"])
        if urls is not None:
            texts = self._scrape(urls)
        elif self.prometheus_url:
            texts = {"prometheus": self._prometheus_text(cr)}
        else:
            # pod IPs are reached directly, never through an HTTP(S)_PROXY from the environment
            texts = self._scrape(self.pod_endpoints(cr), trust_env=False)
        if not texts:
            return None
        per_source = {source: parse_metrics(t) for source, t in texts.items()}
        snapshot = merge_snapshots(per_source.values())
        profile = self.baseline_profile(cr, spec)
        baseline = spec["monitoring"].get("baselineAccuracy")
        # cumulative numbers for display; drift is decided on windows below, not on cumulative counts
        summary = summarize(snapshot, None, baseline)
        summary["data_quality"] = data_quality_from_snapshot(snapshot, profile)["score"]
        metrics = to_status_metrics(summary, collected_at)
        metrics.update(self.window_metrics(cr, per_source, profile, baseline))
        return metrics

    def window_metrics(self, cr: Mapping[str, Any], per_source: Mapping[str, Any], profile: Any,
                       baseline_accuracy: float | None) -> dict[str, Any]:
        """Advance this deployment's windows with the per-source counters and return the keys of the
        last drift and accuracy decisions (``mlops.operator.windows``)."""
        from mlops.operator import windows

        meta = cr["metadata"]
        key = (meta["namespace"], meta["name"], meta.get("uid", ""))
        state = self._windows.setdefault(key, windows.WindowState())
        windows.advance(state, per_source)
        return windows.evaluate(state, profile, baseline_accuracy)


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
