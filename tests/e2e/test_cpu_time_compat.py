"""cpu_time never changes what the app does, on every server and event loop.

The policy times each request's CPU. It used to wrap child coroutines, which
anyio's task groups could not inspect: cancelled task groups hung, POSTs behind
`@app.middleware("http")` never answered, streams ran on after their client
left, and under trio every request failed. These tests serve an app with all
of those patterns through real servers: uvicorn on asyncio and uvloop, and
hypercorn on asyncio and trio (where carbonspan falls back on time share and
says so on the span). `scripts/test` runs them again with the oldest anyio
FastAPI accepts.
"""

from __future__ import annotations

import asyncio
import sys
import time
from importlib.metadata import version
from typing import Any

import httpx
import pytest

from support.server import Server

pytestmark = pytest.mark.e2e

SERVERS = {
    "uvicorn-asyncio": ("uvicorn", "asyncio", "cpu_time"),
    "uvicorn-uvloop": ("uvicorn", "uvloop", "cpu_time"),
    "hypercorn-asyncio": ("hypercorn", "asyncio", "cpu_time"),
    "hypercorn-trio": ("hypercorn", "trio", "time_share"),
}


def command(server: str, loop: str) -> list[str]:
    if server == "uvicorn":
        return [sys.executable, "-m", "uvicorn", "support.cputime_server:app",
                "--host", "127.0.0.1", "--port", "{port}", "--loop", loop,
                "--http", "h11", "--log-level", "warning"]  # fmt: skip
    return [sys.executable, "-m", "hypercorn", "support.cputime_server:app",
            "--bind", "127.0.0.1:{port}", "--worker-class", loop]  # fmt: skip


def state(url: str) -> dict[str, Any]:
    result: dict[str, Any] = httpx.get(url + "/state", timeout=10).json()
    return result


def wait_until(url: str, check: Any, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        now = state(url)
        if check(now) or time.monotonic() > deadline:
            return now
        time.sleep(0.05)


async def leave_after_first_chunk(url: str) -> bytes:
    async with (
        httpx.AsyncClient(base_url=url, timeout=10) as c,
        c.stream("GET", "/stream?chunks=40&pause=0.05") as response,
    ):
        async for chunk in response.aiter_raw():
            return chunk  # leaves: the connection closes mid-stream
    return b""


async def leave_before_the_stream(url: str, port: int) -> None:
    """Send a request and close the socket before any response arrives."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /stream?chunks=3&pause=0.2 HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def posts(url: str, n: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        return list(
            await asyncio.gather(
                *(c.post("/echo", content=b"x" * (1000 * (i + 1))) for i in range(n))
            )
        )


@pytest.mark.parametrize("name", list(SERVERS))
def test_the_app_behaves_as_without_carbonspan(name: str) -> None:
    server, loop, label = SERVERS[name]
    with Server(command(server, loop), {}) as s:
        # @app.middleware("http") in front of POSTs that read their body.
        responses = asyncio.run(posts(s.url, 5))
        assert [r.status_code for r in responses] == [200] * 5
        lengths = [r.json()["length"] for r in responses]
        assert lengths == [1000 * i for i in range(1, 6)]
        assert all(r.headers["x-tagged"] == "yes" for r in responses)
        # A failing child cancels its task group's other children, which exit.
        r = httpx.get(s.url + "/taskgroup", timeout=10)
        assert r.status_code == 200 and r.json() == {"cancelled": 3}
        # A stream behind the same middleware arrives whole.
        r = httpx.get(s.url + "/stream?chunks=4&pause=0.01", timeout=10)
        assert r.text == "".join(f"chunk {i}\n" for i in range(4))
        # A sync handler in the thread pool.
        assert httpx.get(s.url + "/burn?seconds=0.02", timeout=10).status_code == 200
        # A client that leaves mid-stream: the stream stops, the window closes.
        before = state(s.url)
        assert asyncio.run(leave_after_first_chunk(s.url)).startswith(b"chunk 0")
        after = wait_until(
            s.url, lambda st: st["stream_closed"] > before["stream_closed"]
        )
        assert after["stream_closed"] == before["stream_closed"] + 1
        assert after["chunks"] - before["chunks"] < 40
        # A client that leaves before the stream starts.
        asyncio.run(leave_before_the_stream(s.url, s.port))
        end = wait_until(s.url, lambda st: st["in_flight"] == 1)  # /state itself
        assert end["in_flight"] == 1
        assert end["anyio"] == version("anyio")  # the one this test runs with
        started = time.monotonic()
        output = s.stop()
        assert time.monotonic() - started < 10  # shut down, nothing stuck
    assert "Traceback" not in output and "AttributeError" not in output, output
    # Every request has its figures, charged by the policy the span names
    # (the readiness probe may come before the sampler's second reading).
    spans = zip(end["routes"], end["attribution"], end["cpu"], strict=True)
    measured = [(a, cpu) for route, a, cpu in spans if route not in ("/fast", "/state")]
    assert len(measured) >= 10
    assert {a for a, _ in measured} == {label}
    assert all(cpu is not None and cpu >= 0 for _, cpu in measured)
