"""Slow clients are cut off (issue 11, finding 8), on a real `mlops serve` process.

Reproduced on main: no header or body read timeout, 4,000 slow connections were held open."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from _procs import env, free_port, serve, stop, train_model

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N = 2000


async def _attack(port: int) -> tuple[list[float | None], int, float]:
    """Open N slow connections (nothing / half the headers / headers and half a body); return when
    each was closed by the server (None: still open after 30 s), plus how a normal request fared."""
    opened = []
    for i in range(N):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if i % 3 == 1:
            writer.write(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        elif i % 3 == 2:
            writer.write(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{\"features\": ")
        opened.append((reader, writer))
    start = time.monotonic()
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.post(f"http://127.0.0.1:{port}/predict", json={"features": {"a": 1.0, "b": 0.0}})
        normal_status, normal_seconds = r.status_code, time.monotonic() - start

    async def closed_after(reader: asyncio.StreamReader) -> float | None:
        try:
            await asyncio.wait_for(reader.read(), 30)  # returns at EOF (the server closed it)
            return time.monotonic() - start
        except (TimeoutError, ConnectionError):
            return None

    closed = await asyncio.gather(*(closed_after(reader) for reader, _ in opened))
    for _, writer in opened:
        writer.close()
    return list(closed), normal_status, normal_seconds


def test_2000_slow_connections_are_cut_off_and_others_are_served(tmp_path):
    train_model(tmp_path / "model")
    port = free_port()
    server = serve(tmp_path / "model", port, env(), "--header-timeout", "2", "--body-timeout", "2")
    try:
        closed, normal_status, normal_seconds = asyncio.run(_attack(port))
        assert normal_status == 200 and normal_seconds < 10
        still_open = sum(1 for c in closed if c is None)
        assert still_open == 0, f"{still_open} of {N} slow connections still open"
        assert max(closed) < 20
        # The server is fine afterwards.
        assert httpx.post(f"http://127.0.0.1:{port}/predict", json={"features": {"a": 1.0, "b": 0.0}},
                          timeout=10).status_code == 200
    finally:
        stop(server)
