"""The operator's only door to the API server: server-side apply, prune, status patch, Events.

A thin synchronous adapter over the official client's ``ApiClient`` (it handles kubeconfig, tokens,
certificates). Handlers call it from worker threads. Every write of an owned object is a server-side
apply with the field manager ``mlops-operator``, so applying the same manifest twice is a no-op and
fields other managers set (an HPA's replicas, kubectl annotations) are left alone.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
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
    n.KIND: (f"/apis/{n.API_VERSION}", n.PLURAL),
}
# What prune looks at, in deletion order (workloads before what they use).
PRUNABLE = ("Deployment", "Service", "ConfigMap", "ServiceAccount")


class KubeError(Exception):
    def __init__(self, status: int, reason: str, message: str):
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def transient(self) -> bool:
        return self.status in (0, 409, 429) or self.status >= 500


def _path(kind: str, namespace: str, name: str | None = None, sub: str | None = None) -> str:
    prefix, plural = KINDS[kind]
    path = f"{prefix}/namespaces/{namespace}/{plural}"
    if name:
        path += f"/{name}"
    if sub:
        path += f"/{sub}"
    return path


def now_rfc3339(clock_value: float) -> str:
    return dt.datetime.fromtimestamp(clock_value, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Kube:
    api: Any  # kubernetes.client.ApiClient
    field_manager: str = n.FIELD_MANAGER
    timeout: float = 15.0

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
    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply (force: the operator is the authority on the fields it sets)."""
        meta = obj["metadata"]
        return self._call(
            "PATCH",
            _path(obj["kind"], meta["namespace"], meta["name"]),
            body=dict(obj),
            query={"fieldManager": self.field_manager, "force": "true"},
            content_type="application/apply-patch+yaml",
        )

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """POST a new object; KubeError 409 when it already exists (never overwrites)."""
        return self._call("POST", _path(obj["kind"], obj["metadata"]["namespace"]), body=dict(obj))

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._call("GET", _path(kind, namespace, name))
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, kind: str, namespace: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        query = {"labelSelector": label_selector} if label_selector else None
        return list(self._call("GET", _path(kind, namespace), query=query).get("items") or [])

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

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any], uid: str | None = None) -> dict:
        """JSON merge patch of the status subresource only: the spec is never written."""
        body: dict[str, Any] = {"status": dict(status)}
        if uid:
            body["metadata"] = {"uid": uid}
        return self._call(
            "PATCH",
            _path(n.KIND, namespace, name, "status"),
            body=body,
            content_type="application/merge-patch+json",
        )

    def post_event(self, cr: Mapping[str, Any], etype: str, reason: str, message: str, now: float) -> None:
        meta = cr["metadata"]
        stamp = now_rfc3339(now)
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": n.API_VERSION,
                "kind": n.KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": etype,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": n.FIELD_MANAGER},
            "reportingComponent": n.FIELD_MANAGER,
            "reportingInstance": socket.gethostname()[:128],
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        self._call("POST", _path("Event", meta["namespace"]), body=event)
