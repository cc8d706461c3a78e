"""Per-resource periodic evaluation, shared by the ABExperiment and RetrainPolicy controllers.

Why it exists: both controllers judge each of their resources on its own interval, at once when an
event wakes it, never twice concurrently, and only while this process is the leader (a standby does
nothing). This is that loop, written once, with the kopf startup/cleanup handlers that run it in the
background of the operator's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from typing import Any

Key = tuple[str, str]  # (namespace, name)


class PeriodicEvaluator(ABC):
    """Subclasses set ``TICK`` and implement ``interval(key)`` and ``evaluate(key)``; ``known`` holds the
    resources (fed by their watch), ``wake(key)`` makes one due now."""

    TICK = 0.25  # seconds between looks at what is due

    def __init__(self, controller: Any) -> None:
        self.c = controller  # the ModelDeployment Controller: clock, leadership (``active``), config
        self.known: dict[Key, dict[str, Any]] = {}
        self._next: dict[Key, float] = {}
        self._locks: dict[Key, asyncio.Lock] = {}

    @abstractmethod
    def interval(self, key: Key) -> float:
        """Seconds until ``key`` is due again after an evaluation starts."""

    @abstractmethod
    async def evaluate(self, key: Key) -> None:
        """Judge one resource (called under its lock, only while leading)."""

    def lock(self, key: Key) -> asyncio.Lock:
        if key not in self._locks:
            self._locks[key] = asyncio.Lock()
        return self._locks[key]

    def wake(self, key: Key) -> None:
        if key in self.known:
            self._next[key] = 0.0

    def unschedule(self, key: Key) -> None:
        self._next.pop(key, None)
        self._locks.pop(key, None)

    async def loop(self, stopped: asyncio.Event) -> None:
        tasks: set[asyncio.Task] = set()
        while not stopped.is_set():
            now = self.c.clock()
            for key in list(self.known) if self.c.active else []:
                if now >= self._next.get(key, 0.0) and not self.lock(key).locked():
                    self._next[key] = now + self.interval(key)
                    task = asyncio.create_task(self.evaluate(key))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopped.wait(), timeout=self.TICK)
        for task in tasks:
            task.cancel()


def run_in_background(registry: Any, name: str, evaluator: PeriodicEvaluator) -> None:
    """Start ``evaluator.loop`` when the operator starts and stop it (5 s grace) when it stops."""
    import kopf

    stopped = asyncio.Event()
    background: dict[str, asyncio.Task] = {}

    @kopf.on.startup(registry=registry, id=f"start-{name}")
    async def _start(**_: Any) -> None:
        background["task"] = asyncio.create_task(evaluator.loop(stopped))

    @kopf.on.cleanup(registry=registry, id=f"stop-{name}")
    async def _stop(**_: Any) -> None:
        stopped.set()
        task = background.get("task")
        if task:
            await asyncio.wait([task], timeout=5)
