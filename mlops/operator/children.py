"""Apply a resource's desired children and prune the rest, safely and without no-op writes.

Why it exists: it is the one place that writes child objects for any controller of the operator
(ModelDeployment today, ABExperiment and RetrainPolicy next), so the rules of ``ownership`` hold for
all of them:

- an object that is ours and already up to date (cache) costs no request;
- an object that is missing or not ours in the cache is read from the API server first; if it exists
  and is not controlled by this owner it is a *conflict*: reported, never modified, never pruned;
- an update is conditional on the resourceVersion the ownership check saw, so an object deleted and
  re-created by someone else in between is not taken over (the API server answers 409; it is re-read);
- API failures of one child (invalid, forbidden, immutable field) are collected as errors with the
  object named, and the other children are still applied; connection-level failures are raised, so
  the caller retries the whole reconciliation with backoff.

Residual window: creating a child is a server-side apply of an object that a GET just found absent; a
user object created in the milliseconds between both would be taken over. The API server offers no
"create or apply-if-controlled-by" primitive; a POST would avoid it but would leave the created fields
owned by an ``Update`` manager, so fields later dropped from the desired state would never be removed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mlops.operator import ownership as own
from mlops.operator.cache import ObjectCache
from mlops.operator.k8s import Kube, KubeError

log = logging.getLogger("mlops.operator.children")


@dataclass
class SyncResult:
    live: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (kind, name) -> object
    applied: list[str] = field(default_factory=list)  # "Kind/name"
    skipped: int = 0
    pruned: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)  # human-readable, each names the object
    errors: list[str] = field(default_factory=list)  # apply/prune failures, each names the object
    conflicting: set[tuple[str, str]] = field(default_factory=set)  # (kind, name) left untouched


def _fatal(exc: KubeError) -> bool:
    """Failures that say nothing about one object (API server down, overloaded): retry everything."""
    return exc.status == 0 or exc.status == 429 or exc.status >= 500


class ChildSync:
    def __init__(self, kube: Kube, cache: ObjectCache):
        self.kube = kube
        self.cache = cache

    def owned(self, owner: Mapping[str, Any], kinds: Iterable[str]) -> list[dict[str, Any]]:
        return self.cache.owned_by(owner["metadata"]["uid"], kinds)

    def _read(self, owner: Mapping[str, Any], obj: Mapping[str, Any], result: SyncResult) -> tuple[bool, Any]:
        """Ownership check of one desired object: (may apply?, live object or None)."""
        kind, meta = obj["kind"], obj["metadata"]
        ns, name = meta["namespace"], meta["name"]
        cached = self.cache.get(kind, ns, name)
        if cached is not None and own.ownership_conflict(cached, owner, kind) is None:
            return True, cached
        try:  # absent, or someone else's per the cache (a user's object carries no label of ours): read it
            live = self.kube.get(kind, ns, name)
        except KubeError as exc:
            if _fatal(exc):
                raise
            result.errors.append(f"read {kind} {ns}/{name}: {exc.status} {exc.reason}: {exc.message}"[:600])
            return False, None
        conflict = own.ownership_conflict(live, owner, kind)
        if conflict:
            result.conflicts.append(conflict)
            result.conflicting.add((kind, name))
            return False, None
        if live is not None:
            self.cache.put(kind, live)
        return True, live

    def _apply_one(self, owner: Mapping[str, Any], obj: Mapping[str, Any], live: Any, result: SyncResult) -> None:
        kind, meta = obj["kind"], obj["metadata"]
        ns, name = meta["namespace"], meta["name"]
        stamped = own.stamp(obj)
        if own.up_to_date(stamped, live):
            result.skipped += 1
            result.live[(kind, name)] = live
            return
        for attempt in range(3):
            if attempt:  # the conditional apply found a newer version: check ownership again on it
                try:
                    live = self.kube.get(kind, ns, name)
                except KubeError as exc:
                    if _fatal(exc):
                        raise
                    result.errors.append(f"read {kind} {ns}/{name}: {exc.status} {exc.reason}: {exc.message}"[:600])
                    return
                conflict = own.ownership_conflict(live, owner, kind)
                if conflict:
                    result.conflicts.append(conflict)
                    result.conflicting.add((kind, name))
                    return
                if own.up_to_date(stamped, live):
                    self.cache.put(kind, live)
                    result.skipped += 1
                    result.live[(kind, name)] = live
                    return
            rv = (live or {}).get("metadata", {}).get("resourceVersion")
            try:
                applied = self.kube.apply(stamped, resource_version=rv)
            except KubeError as exc:
                if exc.status == 409 and rv and attempt < 2:
                    continue
                if _fatal(exc):
                    raise
                result.errors.append(f"apply {kind} {ns}/{name}: {exc.status} {exc.reason}: {exc.message}"[:600])
                if live is not None:
                    result.live[(kind, name)] = live
                return
            self.cache.put(kind, applied)
            result.applied.append(f"{kind}/{name}")
            result.live[(kind, name)] = applied
            return

    def sync(
        self,
        owner: Mapping[str, Any],
        desired: Sequence[Mapping[str, Any]],
        kinds: Iterable[str],
        *,
        prune: bool = True,
    ) -> SyncResult:
        """Apply ``desired`` (in order) for ``owner``, then delete owned objects of ``kinds`` not desired.

        Every desired object is ownership-checked first; if any is controlled by someone else, nothing
        at all is applied or pruned (a half-applied set could, say, start a router that mounts the
        user's ConfigMap of the same name): the resource is blocked until the conflict is resolved.
        """
        result = SyncResult()
        checked = [(obj, *self._read(owner, obj, result)) for obj in desired]
        if result.conflicts:
            for obj, ok, live in checked:
                if ok and live is not None:
                    result.live[(obj["kind"], obj["metadata"]["name"])] = live
            return result
        for obj, ok, live in checked:
            if ok:
                self._apply_one(owner, obj, live, result)
        if not prune:
            return result
        keep = {(o["kind"], o["metadata"]["name"]) for o in desired}
        for obj in self.owned(owner, kinds):
            kind, meta = obj["kind"], obj["metadata"]
            if (kind, meta["name"]) in keep:
                continue
            try:
                deleted = self.kube.delete(kind, meta["namespace"], meta["name"], meta.get("uid"))
            except KubeError as exc:
                if _fatal(exc):
                    raise
                result.errors.append(f"prune {kind} {meta['namespace']}/{meta['name']}: {exc.status} {exc.reason}: "
                                     f"{exc.message}"[:600])
                continue
            self.cache.remove(kind, obj)
            if deleted:
                result.pruned.append(f"{kind}/{meta['name']}")
        return result
