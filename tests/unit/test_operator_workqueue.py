"""The reconcile work queue: however many events arrive for a resource, it waits in the queue at most
once, is never reconciled by two workers at once, and a change during a reconciliation is picked up by
exactly one more. Reproduced before: every event after the 0.2 s debounce queued another
reconciliation of the same key, so at 1,000 new ModelDeployments the pool's queue held thousands of
stale duplicates and finished rollouts waited minutes for their status (benchmarks/operator.py)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from mlops.operator.handlers import Controller, OperatorConfig


class NoKube:
    on_request = None


def _cr(name: str) -> dict:
    return {"metadata": {"name": name, "namespace": "ns", "uid": f"u-{name}", "generation": 1}, "spec": {}}


@pytest.fixture
def controller():
    c = Controller(NoKube(), OperatorConfig(namespaces=["ns"], workers=2, debounce=0.01))
    c.runs = []  # (key, start, end)
    c.lock_runs = threading.Lock()

    def reconcile_sync(namespace: str, name: str) -> str:
        start = time.monotonic()
        time.sleep(0.15)
        with c.lock_runs:
            c.runs.append(((namespace, name), start, time.monotonic()))
        return "Ready"

    c.reconcile_sync = reconcile_sync
    for name in ("a", "b"):
        c.known[("ns", name)] = _cr(name)
    yield c
    c.shutdown()


async def _run(controller: Controller, events) -> None:
    workers = [asyncio.create_task(controller.work()) for _ in range(2)]
    try:
        await events()
        while controller._pending or controller._running or controller._rerun:
            await asyncio.sleep(0.02)
    finally:
        for w in workers:
            w.cancel()


def test_a_burst_of_events_is_a_few_reconciliations_never_concurrent_and_the_last_sees_the_last_event(controller):
    last_event = 0.0

    async def events():
        nonlocal last_event
        for _ in range(60):  # 60 events over ~0.6 s, four times as long as one reconciliation
            controller.schedule(("ns", "a"))
            last_event = time.monotonic()
            await asyncio.sleep(0.01)

    asyncio.run(_run(controller, events))
    runs = sorted(r for r in controller.runs if r[0] == ("ns", "a"))
    assert 2 <= len(runs) <= 6, runs  # one per reconciliation's length of events, not one per event
    for (_, _, end), (_, start, _) in zip(runs, runs[1:], strict=False):
        assert start >= end, "two workers reconciled the same resource at once"
    assert runs[-1][1] >= last_event, "the last event happened after the last reconciliation started"


def test_different_resources_are_reconciled_in_parallel(controller):
    async def events():
        controller.schedule(("ns", "a"))
        controller.schedule(("ns", "b"))
        await asyncio.sleep(0)

    asyncio.run(_run(controller, events))
    (_, a_start, a_end), (_, b_start, b_end) = sorted(controller.runs)
    assert a_start < b_end and b_start < a_end, controller.runs


def test_an_unknown_or_forgotten_resource_is_not_reconciled(controller):
    async def events():
        controller.schedule(("ns", "a"))
        controller.schedule(("ns", "gone"))
        controller.forget(("ns", "a"))
        await asyncio.sleep(0)

    asyncio.run(_run(controller, events))
    assert controller.runs == []


def test_a_resource_deleted_while_it_waits_behind_busy_workers_is_not_reconciled(controller):
    """The 398.6 GETs a minute at 1,000 idle resources: reconciliations queued behind busy workers had
    passed their "still known?" check long before they ran, so resources deleted meanwhile (a deleted
    namespace) were read from the API server, one 404 each. The check now happens when a worker
    takes the key."""
    controller.known[("ns", "c")] = _cr("c")

    async def events():
        controller.schedule(("ns", "a"))
        controller.schedule(("ns", "b"))
        await asyncio.sleep(0.05)  # both workers busy for 0.15 s
        controller.schedule(("ns", "c"))
        await asyncio.sleep(0.05)  # past the debounce: c waits in the queue
        controller.forget(("ns", "c"))  # its DELETED event

    asyncio.run(_run(controller, events))
    assert sorted(r[0] for r in controller.runs) == [("ns", "a"), ("ns", "b")]
