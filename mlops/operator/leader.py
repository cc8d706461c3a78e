"""Leader election with a ``coordination.k8s.io/v1`` Lease, so only one operator replica acts.

Why it exists: kopf's peering only pauses operators that see each other's peering objects; it is not
leader election, and without any, a second operator re-reconciled everything beside the first and
performed one of the prunes. Here every replica watches and caches, but only the holder of the Lease
reconciles, collects metrics, writes status and posts Events.

The algorithm is client-go's: a candidate takes the Lease when it is free or when its record has not
changed for ``lease_duration`` seconds *as measured on the candidate's own clock* (remote timestamps
are informational: clocks of two nodes may disagree); every write is a compare-and-swap on the
Lease's resourceVersion, so two candidates can never both win the same term. The holder renews
periodically (the caller's loop: every 5 s by default, one PUT); if it cannot renew within
``renew_deadline`` (< ``lease_duration``) it stops acting at once, before any other candidate may
take over. Standbys look at the Lease every ``retry_period`` (1 s, a GET).

Guarantees (with the defaults 15 s / 10 s / 1 s): after the leader dies, a standby acts within
``lease_duration + 2 * retry_period`` (<= 17 s) of the last renewal; a leader cut off from the API
server stops acting after ``renew_deadline`` (10 s), 5 s before anyone else may start; writes already
in flight when it stops (bounded by the client timeout) may still land, as with every Lease-based
controller.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mlops.operator.k8s import Kube, KubeError

log = logging.getLogger("mlops.operator.leader")


def _micro_time(now: float) -> str:
    return dt.datetime.fromtimestamp(now, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class LeaderElector:
    kube: Kube
    namespace: str
    name: str
    identity: str
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 1.0
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    _observed: tuple[Any, ...] | None = field(default=None, init=False)
    _observed_at: float = field(default=0.0, init=False)
    _renewed_at: float | None = field(default=None, init=False)
    _lease: dict[str, Any] | None = field(default=None, init=False)  # as last written by us
    transitions: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if not self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError("leader election needs retry_period < renew_deadline < lease_duration")

    @property
    def is_leader(self) -> bool:
        """True while the last successful renewal is younger than the renew deadline."""
        return self._renewed_at is not None and self.clock() - self._renewed_at < self.renew_deadline

    def _spec(self, previous: dict[str, Any] | None) -> dict[str, Any]:
        now = _micro_time(self.wall())
        spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(round(self.lease_duration)),
            "renewTime": now,
            "acquireTime": now,
            "leaseTransitions": 0,
        }
        if previous:
            same = previous.get("holderIdentity") == self.identity
            spec["acquireTime"] = previous.get("acquireTime") if same and previous.get("acquireTime") else now
            spec["leaseTransitions"] = int(previous.get("leaseTransitions") or 0) + (0 if same else 1)
        return spec

    def try_acquire_or_renew(self) -> bool:
        """One round of the election (blocking I/O). Returns whether this candidate holds the Lease."""
        now = self.clock()
        if self.is_leader and self._lease is not None:  # renew blind: one request per period
            lease = dict(self._lease)
            lease["spec"] = {**lease["spec"], **self._spec(lease["spec"])}
            try:
                self._lease = self.kube.replace_lease(lease)
                self._observed_at = self._renewed_at = now
                return True
            except KubeError as exc:  # 409: someone wrote it (a takeover after a stall?): look below
                log.warning("renewing lease %s/%s failed: %s", self.namespace, self.name, exc)
                self._lease = None
        try:
            lease = self.kube.get_lease(self.namespace, self.name)
            if lease is None:
                self._lease = self.kube.create_lease(self.namespace, self.name, self._spec(None))
                self._won(now)
                return True
            spec = lease.get("spec") or {}
            record = (spec.get("holderIdentity"), spec.get("renewTime"), lease["metadata"].get("resourceVersion"))
            if record != self._observed:
                self._observed, self._observed_at = record, now
            holder = spec.get("holderIdentity")
            duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
            if holder and holder != self.identity and now - self._observed_at < duration:
                self._renewed_at = None
                self._lease = None
                return False  # someone else holds a live lease
            lease["spec"] = {**spec, **self._spec(spec)}
            updated = self.kube.replace_lease(lease)
            self._lease = updated
            self._observed = (self.identity, lease["spec"]["renewTime"], updated["metadata"].get("resourceVersion"))
            self._observed_at = now
            if holder != self.identity:
                self.transitions += 1
                log.info("acquired leader lease %s/%s (previous holder %s)", self.namespace, self.name, holder)
            self._renewed_at = now
            return True
        except KubeError as exc:
            if exc.status == 409:  # another candidate wrote first: it won this round
                log.info("lost the race for lease %s/%s", self.namespace, self.name)
            else:
                log.warning("leader election round failed: %s", exc)
            return self.is_leader  # still leading until the renew deadline passes

    def _won(self, now: float) -> None:
        self.transitions += 1
        self._renewed_at = now
        log.info("acquired new leader lease %s/%s", self.namespace, self.name)

    def release(self) -> None:
        """Give the Lease up on a clean shutdown so a standby takes over at once (best effort)."""
        if not self.is_leader:
            return
        self._renewed_at = None
        try:
            lease = self.kube.get_lease(self.namespace, self.name)
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"] = {**lease["spec"], "holderIdentity": None, "leaseDurationSeconds": 1}
                self.kube.replace_lease(lease)
        except KubeError as exc:
            log.warning("could not release the leader lease: %s", exc)
