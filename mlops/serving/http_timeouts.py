"""Cut off slow clients: a request's headers must arrive within ``header_timeout`` seconds, its body
within ``body_timeout`` seconds.

Why it exists: uvicorn only times out *idle* keep-alive connections. A client that opens a connection
and sends nothing, or trickles its headers a byte at a time (slowloris), or never finishes its body,
held a connection (and a file descriptor) forever: 4,000 of them were held open against the model
server. ``HeaderTimeoutProtocol`` is uvicorn's httptools protocol with a timer that runs from the
connection (or the start of each request) until the headers are complete, and answers ``408`` and
closes when it fires. Bodies are awaited with ``read_with_timeout`` (the app side).

The timeouts are read from ``MLOPS_SERVE_HEADER_TIMEOUT`` / ``MLOPS_SERVE_BODY_TIMEOUT`` (seconds;
``mlops serve --header-timeout/--body-timeout`` and ``mlops route`` set them), so worker processes of
``mlops serve --workers N`` inherit them.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEADER_TIMEOUT_ENV = "MLOPS_SERVE_HEADER_TIMEOUT"
BODY_TIMEOUT_ENV = "MLOPS_SERVE_BODY_TIMEOUT"
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 30.0
_TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                     b"content-length: 80\r\n\r\n"
                     b'{"error": "request_timeout", "message": "request headers too slow", "field": null}')


def _seconds(env: str, default: float) -> float:
    try:
        value = float(os.environ.get(env) or default)
    except ValueError:
        return default
    return value if value > 0 else default


def header_timeout() -> float:
    return _seconds(HEADER_TIMEOUT_ENV, DEFAULT_HEADER_TIMEOUT)


def body_timeout() -> float:
    return _seconds(BODY_TIMEOUT_ENV, DEFAULT_BODY_TIMEOUT)


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, closing connections whose request headers are too slow."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout = header_timeout()
        self._header_timer: asyncio.TimerHandle | None = None
        self._headers_done = False

    def _arm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._headers_done = False
        self._header_timer = self.loop.call_later(self._header_timeout, self._expired)

    def _disarm(self) -> None:
        self._headers_done = True
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expired(self) -> None:
        self._header_timer = None
        if self._headers_done or self.transport.is_closing():
            return
        self.transport.write(_TIMEOUT_RESPONSE)
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_timer is None or self._headers_done:
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Between requests the connection is idle: uvicorn's keep-alive timeout applies, but a client
        # that trickles bytes cancels it, so the next request's headers are timed from now.
        if not self.transport.is_closing():
            self._arm()


async def read_with_timeout(receive: Callable[[], Awaitable[dict[str, Any]]], timeout: float) -> dict[str, Any]:
    """One ASGI receive, or TimeoutError when the client does not send the body in time."""
    return await asyncio.wait_for(receive(), timeout)
