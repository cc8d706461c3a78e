"""Lease-based leader election (mlops.operator.leader) with injected clocks.

The Lease store below implements exactly the API server's contract the algorithm relies on (create
fails if present, replace is a compare-and-swap on resourceVersion); the real thing is exercised by
tests/integration/test_operator_hardening.py (two operator processes, SIGKILL of the leader).
"""

from __future__ import annotations

import copy

from mlops.operator.k8s import KubeError
from mlops.operator.leader import LeaderElector


class LeaseStore:
    def __init__(self) -> None:
        self.lease = None
        self.rv = 0
        self.down = False

    def _check(self):
        if self.down:
            raise KubeError(0, "ConnectionError", "api server down")

    def get_lease(self, ns, name):
        self._check()
        return copy.deepcopy(self.lease)

    def create_lease(self, ns, name, spec):
        self._check()
        if self.lease is not None:
            raise KubeError(409, "AlreadyExists", "exists")
        self.rv += 1
        self.lease = {"metadata": {"namespace": ns, "name": name, "resourceVersion": str(self.rv)}, "spec": dict(spec)}
        return copy.deepcopy(self.lease)

    def replace_lease(self, lease):
        self._check()
        if lease["metadata"]["resourceVersion"] != self.lease["metadata"]["resourceVersion"]:
            raise KubeError(409, "Conflict", "the object has been modified")
        self.rv += 1
        self.lease = copy.deepcopy(lease)
        self.lease["metadata"]["resourceVersion"] = str(self.rv)
        return copy.deepcopy(self.lease)


def candidates(store, now):
    return [LeaderElector(store, "ns", "lease", ident, lease_duration=15, renew_deadline=10, retry_period=1,
                          clock=lambda: now[0], wall=lambda: 1e9 + now[0]) for ident in ("a", "b")]


def test_one_leader_then_failover_after_the_lease_expires():
    store, now = LeaseStore(), [0.0]
    a, b = candidates(store, now)
    assert a.try_acquire_or_renew() is True
    assert b.try_acquire_or_renew() is False
    assert a.is_leader and not b.is_leader
    for t in range(1, 30):  # a renews every 5 s, b looks every second: b never wins
        now[0] = float(t)
        if t % 5 == 0:
            assert a.try_acquire_or_renew()
        assert b.try_acquire_or_renew() is False
    # a dies at t=29 (last renewal at 25); b takes over once the record is 15 s old on b's clock
    took = None
    for t in range(30, 50):
        now[0] = float(t)
        if b.try_acquire_or_renew():
            took = t
            break
    assert took is not None and 25 + 15 <= took <= 25 + 15 + 2
    assert store.lease["spec"]["holderIdentity"] == "b" and store.lease["spec"]["leaseTransitions"] == 1
    assert not a.is_leader  # a's renew deadline passed long ago


def test_leader_cut_off_stops_acting_before_anyone_may_take_over():
    store, now = LeaseStore(), [0.0]
    a, b = candidates(store, now)
    assert a.try_acquire_or_renew()
    store.down = True
    now[0] = 9.9
    assert a.try_acquire_or_renew() is True  # still within the renew deadline
    now[0] = 10.0
    assert a.try_acquire_or_renew() is False and not a.is_leader
    store.down = False
    assert b.try_acquire_or_renew() is False  # b first saw the record now: it waits a full lease duration
    now[0] = 24.9
    assert b.try_acquire_or_renew() is False
    now[0] = 25.0
    assert b.try_acquire_or_renew() is True


def test_concurrent_takeover_has_one_winner_and_release_hands_over_at_once():
    store, now = LeaseStore(), [0.0]
    a, b = candidates(store, now)
    # both read the free lease, both try to write it: the compare-and-swap lets exactly one through
    store.create_lease("ns", "lease", {"holderIdentity": None, "leaseDurationSeconds": 15})
    lease_a, lease_b = store.get_lease("ns", "lease"), store.get_lease("ns", "lease")
    store.replace_lease({**lease_a, "spec": {**lease_a["spec"], "holderIdentity": "a"}})
    try:
        store.replace_lease({**lease_b, "spec": {**lease_b["spec"], "holderIdentity": "b"}})
        raise AssertionError("second writer must lose")
    except KubeError as exc:
        assert exc.status == 409
    store.lease = None
    assert a.try_acquire_or_renew()
    a.release()
    assert not a.is_leader
    assert b.try_acquire_or_renew() is True  # released: no need to wait for expiry
