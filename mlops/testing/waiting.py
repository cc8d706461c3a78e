"""Polling with a deadline and a useful failure message, for tests, demos and the local cluster tools.

Why it exists: every test that starts a process or a control plane waits for something to become true
("the Deployment exists", "the server answers /health"), and a wait that times out must say what it
waited for, the last value it saw and whatever diagnosis the caller can add (logs, kubectl output).
One implementation instead of a copy per test file.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable
from typing import Any

import httpx


class WaitTimeout(AssertionError):
    """The predicate never held within the timeout (an AssertionError, so pytest reports it as a failure)."""


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, diag: Callable[[], str] = lambda: "", *,
               interval: float = 0.25, error: type[Exception] = WaitTimeout) -> Any:
    """Poll ``predicate`` until it returns something truthy and return that; raise ``error`` naming
    ``what``, the last value and ``diag()`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    raise error(f"timed out after {timeout:g} s waiting for {what}; last={last!r}\n{diag()}")


def wait_http(url: str, proc: subprocess.Popen | None = None, timeout: float = 90.0) -> None:
    """Wait until ``url`` answers 200; fail at once, with the tail of its output, if ``proc`` (the
    process serving it) has exited."""

    def up() -> bool:
        if proc is not None and proc.poll() is not None:
            raise WaitTimeout(f"{proc.args} exited with {proc.returncode} before {url} answered\n{exit_output(proc)}")
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(url, timeout=1).status_code == 200
        return False

    wait_until(up, timeout, url)


def exit_output(proc: subprocess.Popen, tail: int = 3000) -> str:
    """The last ``tail`` characters a finished process wrote to the pipes it was started with."""
    out = []
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            data = stream.read()
            out.append(data.decode(errors="replace") if isinstance(data, bytes) else data)
    return "".join(out)[-tail:]
