"""The operator's only door to the API server: server-side apply, prune, status patch, Events, Leases.

A thin synchronous adapter over the official client's ``ApiClient`` (it handles kubeconfig, tokens,
certificates). Handlers call it from worker threads. Every write of an owned object is a server-side
apply with the field manager ``mlops-operator``, so applying the same manifest twice is a no-op and
fields other managers set (an HPA's replicas, kubectl annotations) are left alone. Whether an object
may be applied at all (is it ours?) is decided before, by ``mlops.operator.children``.

Every method is generic over the kinds in ``KINDS`` and over the custom resource kind (the involved
object of an Event, the status subresource), so the ABExperiment and RetrainPolicy controllers reuse it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import socket
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mlops.operator.resources import naming as n

# kind -> (api prefix, plural); all namespaced
KINDS: dict[str, tuple[str, str]] = {
    "Deployment": ("/apis/apps/v1", "deployments"),
    "ReplicaSet": ("/apis/apps/v1", "replicasets"),
    "Service": ("/api/v1", "services"),
    "ConfigMap": ("/api/v1", "configmaps"),
    "Secret": ("/api/v1", "secrets"),
    "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "Pod": ("/api/v1", "pods"),
    "Event": ("/api/v1", "events"),
    "Job": ("/apis/batch/v1", "jobs"),
    "HorizontalPodAutoscaler": ("/apis/autoscaling/v2", "horizontalpodautoscalers"),
    "Lease": ("/apis/coordination.k8s.io/v1", "leases"),
    n.KIND: (f"/apis/{n.API_VERSION}", n.PLURAL),
    n.ABX_KIND: (f"/apis/{n.API_VERSION}", n.ABX_PLURAL),
    "RetrainPolicy": (f"/apis/{n.API_VERSION}", "retrainpolicies"),
}
# What a ModelDeployment owns and prune looks at, in deletion order (workloads before what they use).
# The signing-key Secret is created once and never in the desired set (its key is random), so it is not
# pruned: it goes with the ModelDeployment through garbage collection.
PRUNABLE = ("HorizontalPodAutoscaler", "Deployment", "Service", "ConfigMap", "ServiceAccount")
# Kinds any of the operator's controllers may own: watched (label-filtered) into the shared cache.
OWNED_KINDS = ("Deployment", "Service", "ConfigMap", "ServiceAccount", "Secret", "Job", "HorizontalPodAutoscaler")


class KubeError(Exception):
    def __init__(self, status: int, reason: str, message: str):
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def transient(self) -> bool:
        return self.status in (0, 409, 429) or self.status >= 500


def _path(kind: str, namespace: str | None, name: str | None = None, sub: str | None = None) -> str:
    prefix, plural = KINDS[kind]
    path = f"{prefix}/{plural}" if namespace is None else f"{prefix}/namespaces/{namespace}/{plural}"
    if name:
        path += f"/{name}"
    if sub:
        path += f"/{sub}"
    return path


def now_rfc3339(clock_value: float) -> str:
    return dt.datetime.fromtimestamp(clock_value, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def event_name(involved_name: str, key: str) -> str:
    """Deterministic Event name for one (object, type, reason, message): repeats update it (count)."""
    return f"{involved_name[:200]}.{hashlib.sha256(key.encode()).hexdigest()[:16]}"


@dataclass
class Kube:
    api: Any  # kubernetes.client.ApiClient
    field_manager: str = n.FIELD_MANAGER
    timeout: float = 15.0

    on_request: Any = None  # callable(verb, resource) counting every request sent (operator metrics)

    def __post_init__(self) -> None:
        self._events: dict[str, int] = {}  # event name -> count this process last wrote
        self._events_lock = threading.Lock()

    def _count(self, method: str, path: str, content_type: str) -> None:
        if self.on_request is None:
            return
        parts = path.strip("/").split("/")
        if "namespaces" in parts and parts.index("namespaces") + 2 < len(parts):
            rest = parts[parts.index("namespaces") + 2:]
        else:
            rest = parts[2:] if parts[0] == "api" else parts[3:]
        resource = rest[0] if rest else "?"
        if len(rest) >= 3:
            resource += "/" + rest[2]
        verb = method.lower()
        if method == "GET":
            verb = "get" if len(rest) >= 2 else "list"
        elif method == "PATCH" and content_type == "application/apply-patch+yaml":
            verb = "apply"
        self.on_request(verb, resource)

    @classmethod
    def from_environment(cls, kubeconfig: str | None = None, context: str | None = None) -> Kube:
        from kubernetes import client, config

        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
        configuration.connection_pool_maxsize = 32
        return cls(api=client.ApiClient(configuration))

    def _call(self, method: str, path: str, *, body=None, query=None, content_type="application/json"):
        from kubernetes.client.exceptions import ApiException

        self._count(method, path, content_type)
        try:
            return self.api.call_api(
                path,
                method,
                query_params=list((query or {}).items()),
                header_params={"Content-Type": content_type, "Accept": "application/json"},
                body=body,
                response_type="object",
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
                _request_timeout=self.timeout,
            )
        except ApiException as exc:
            reason, message = exc.reason or "", str(exc.body or "")
            try:
                payload = json.loads(exc.body)
                reason, message = payload.get("reason", reason), payload.get("message", message)
            except (TypeError, ValueError):
                pass
            raise KubeError(int(exc.status or 0), str(reason), str(message)) from exc
        except OSError as exc:  # connection refused/reset, timeouts (urllib3 errors subclass OSError or wrap it)
            raise KubeError(0, "ConnectionError", str(exc)) from exc
        except Exception as exc:
            import urllib3

            if isinstance(exc, urllib3.exceptions.HTTPError):
                raise KubeError(0, "ConnectionError", str(exc)) from exc
            raise

    # ---- owned objects -------------------------------------------------------------------------
    def apply(self, obj: Mapping[str, Any], *, resource_version: str | None = None) -> dict[str, Any]:
        """Server-side apply (force: the operator is the authority on the fields it sets).

        With ``resource_version`` the apply is conditional (409 Conflict when the object changed or was
        replaced since it was read): the ownership check done on that version still holds.
        """
        meta = obj["metadata"]
        body = dict(obj)
        if resource_version:
            body["metadata"] = {**meta, "resourceVersion": resource_version}
        return self._call(
            "PATCH",
            _path(obj["kind"], meta["namespace"], meta["name"]),
            body=body,
            query={"fieldManager": self.field_manager, "force": "true"},
            content_type="application/apply-patch+yaml",
        )

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create only (409 AlreadyExists if someone else's object appeared meanwhile)."""
        meta = obj["metadata"]
        return self._call("POST", _path(obj["kind"], meta["namespace"]), body=dict(obj),
                          query={"fieldManager": self.field_manager})

    def patch(self, kind: str, namespace: str, name: str, body: Mapping[str, Any], *,
              content_type: str = "application/merge-patch+json") -> dict[str, Any]:
        return self._call("PATCH", _path(kind, namespace, name), body=dict(body),
                          query={"fieldManager": self.field_manager}, content_type=content_type)

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._call("GET", _path(kind, namespace, name))
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, kind: str, namespace: str | None, label_selector: str | None = None) -> list[dict[str, Any]]:
        """Objects of ``kind`` in ``namespace`` (None: all namespaces), each with its ``kind`` set."""
        query = {"labelSelector": label_selector} if label_selector else None
        items = list(self._call("GET", _path(kind, namespace), query=query).get("items") or [])
        for item in items:
            item.setdefault("kind", kind)
        return items

    def delete(self, kind: str, namespace: str, name: str, uid: str | None = None) -> bool:
        body: dict[str, Any] = {"propagationPolicy": "Background"}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            self._call("DELETE", _path(kind, namespace, name), body=body)
            return True
        except KubeError as exc:
            if exc.status in (404, 409):  # gone already, or replaced by a different object
                return False
            raise

    def owned(self, cr: Mapping[str, Any], kinds: Iterable[str] = PRUNABLE) -> list[dict[str, Any]]:
        """Objects of ``kinds`` labelled for this ModelDeployment *and* owned by this exact instance."""
        meta = cr["metadata"]
        uid = meta["uid"]
        items = []
        for kind in kinds:
            for obj in self.list(kind, meta["namespace"], n.owned_selector(meta["name"])):
                refs = (obj.get("metadata") or {}).get("ownerReferences") or []
                if any(r.get("uid") == uid for r in refs):
                    obj.setdefault("kind", kind)
                    items.append(obj)
        return items

    def prune(self, cr: Mapping[str, Any], desired: Iterable[Mapping[str, Any]], owned=None) -> list[str]:
        """Delete owned objects that are no longer desired. Returns "Kind/name" of each deleted."""
        keep = {(o["kind"], o["metadata"]["name"]) for o in desired}
        deleted = []
        for obj in owned if owned is not None else self.owned(cr):
            key = (obj["kind"], obj["metadata"]["name"])
            if key in keep:
                continue
            if self.delete(obj["kind"], cr["metadata"]["namespace"], key[1], obj["metadata"].get("uid")):
                deleted.append(f"{key[0]}/{key[1]}")
        return deleted

    # ---- the custom resource -------------------------------------------------------------------
    def get_mdep(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.get(n.KIND, namespace, name)

    def list_mdeps(self, namespace: str | None) -> list[dict[str, Any]]:
        path = f"/apis/{n.API_VERSION}/{n.PLURAL}" if namespace is None else _path(n.KIND, namespace)
        return list(self._call("GET", path).get("items") or [])

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any], uid: str | None = None,
                     kind: str = n.KIND) -> dict:
        """JSON merge patch of the status subresource only (the spec is never written), as ``mlops-operator``."""
        body: dict[str, Any] = {"status": dict(status)}
        if uid:
            body["metadata"] = {"uid": uid}
        return self._call(
            "PATCH",
            _path(kind, namespace, name, "status"),
            body=body,
            query={"fieldManager": self.field_manager},
            content_type="application/merge-patch+json",
        )

    def post_event(self, cr: Mapping[str, Any], etype: str, reason: str, message: str, now: float) -> None:
        """Record an Event about ``cr`` (any kind), aggregated: the same (type, reason, message) about the
        same object is one Event whose ``count``/``lastTimestamp`` (and ``series``) move, not a new object.

        The Event's name is derived from the object's uid, type, reason and message, so aggregation also
        holds across restarts and replicas (a create that finds the name taken turns into an update).
        """
        meta = cr["metadata"]
        ns = meta["namespace"]
        message = message[:1024]
        name = event_name(meta["name"], "\x00".join([str(meta.get("uid")), etype, reason, message]))
        stamp = now_rfc3339(now)
        with self._events_lock:
            count = self._events.get(name)
        if count is not None:
            try:
                self._bump_event(ns, name, count + 1, stamp)
                return
            except KubeError as exc:
                if exc.status != 404:  # expired (events have a TTL): create it afresh below
                    raise
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": ns},
            "involvedObject": {
                "apiVersion": cr.get("apiVersion") or n.API_VERSION,
                "kind": cr.get("kind") or n.KIND,
                "name": meta["name"],
                "namespace": ns,
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": etype,
            "reason": reason,
            "message": message,
            "source": {"component": n.FIELD_MANAGER},
            "reportingComponent": n.FIELD_MANAGER,
            "reportingInstance": socket.gethostname()[:128],
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            self._call("POST", _path("Event", ns), body=event)
            count = 1
        except KubeError as exc:
            if exc.status != 409:
                raise
            existing = self.get("Event", ns, name) or {}
            count = int(existing.get("count") or 1) + 1
            self._bump_event(ns, name, count, stamp)
        with self._events_lock:
            if len(self._events) > 10000:
                self._events.clear()
            self._events[name] = count

    def _bump_event(self, ns: str, name: str, count: int, stamp: str) -> None:
        self._call(
            "PATCH", _path("Event", ns, name),
            body={"count": count, "lastTimestamp": stamp},
            content_type="application/merge-patch+json",
        )
        with self._events_lock:
            self._events[name] = count

    # ---- leases (leader election) ----------------------------------------------------------------
    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.get("Lease", namespace, name)

    def create_lease(self, namespace: str, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": namespace}, "spec": dict(spec)}
        return self._call("POST", _path("Lease", namespace), body=body)

    def replace_lease(self, lease: Mapping[str, Any]) -> dict[str, Any]:
        """PUT with the read resourceVersion: fails with 409 if another candidate wrote it first."""
        meta = lease["metadata"]
        return self._call("PUT", _path("Lease", meta["namespace"], meta["name"]), body=dict(lease))
