"""Helpers shared by the tests/test_reliability_*.py modules (no tests here).

Requests are driven straight through the ASGI interface where a test needs
control over the messages (disconnects, cancellation, extensions); a real
uvicorn serves them where a test is about a server.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest

from carbonspan import attributes as a
from carbonspan.runtime import Runtime
from conftest import Otel

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]


def http_scope(
    path: str = "/fast",
    *,
    method: str = "GET",
    query: bytes = b"",
    headers: Iterable[tuple[bytes, bytes]] = (),
    extensions: dict[str, Any] | None = None,
    spec_version: str = "2.4",
) -> dict[str, Any]:
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": spec_version},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    if extensions is not None:
        scope["extensions"] = extensions
    return scope


def request_once() -> Receive:
    """A receive() that gives an empty body, then waits as a connected client."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # the client stays connected
        raise AssertionError("unreachable")

    return receive


@dataclass
class Exchange:
    """What an app sent back for one request."""

    messages: list[Message] = field(default_factory=list)

    @property
    def status(self) -> int:
        starts = [m for m in self.messages if m["type"] == "http.response.start"]
        return int(starts[0]["status"]) if starts else 0

    @property
    def headers(self) -> dict[bytes, bytes]:
        starts = [m for m in self.messages if m["type"] == "http.response.start"]
        return dict(starts[0].get("headers", [])) if starts else {}

    @property
    def body(self) -> bytes:
        return b"".join(
            m.get("body", b"")
            for m in self.messages
            if m["type"] == "http.response.body"
        )

    async def send(self, message: Message) -> None:
        self.messages.append(dict(message))


async def call(
    app: Any,
    path: str = "/fast",
    *,
    receive: Receive | None = None,
    exchange: Exchange | None = None,
    **scope_kwargs: Any,
) -> Exchange:
    """One request through the ASGI interface, as a server would make it."""
    if "?" in path:
        path, _, query = path.partition("?")
        scope_kwargs["query"] = query.encode()
    exchange = exchange if exchange is not None else Exchange()
    await app(
        http_scope(path, **scope_kwargs), receive or request_once(), exchange.send
    )
    return exchange


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


async def async_wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.002)


def energy_values(attributes: dict[str, Any]) -> list[float]:
    """Every codecarbon.energy.* / power.* / emissions figure of a span."""
    keys = [a.ENERGY_TOTAL, a.EMISSIONS, *a.ENERGY.values(), *a.POWER.values()]
    return [attributes[k] for k in keys if k in attributes]


def assert_sane(attributes: dict[str, Any]) -> None:
    """No figure on a span is ever NaN, infinite or negative."""
    for value in energy_values(attributes):
        assert isinstance(value, float), attributes
        assert math.isfinite(value) and value >= 0.0, attributes


def in_flight_metric(otel: Otel) -> float:
    """The codecarbon.requests.in_flight observation, collected now."""
    points = otel.points("codecarbon.requests.in_flight")
    assert len(points) == 1, points
    return float(points[0].value)


def assert_no_open_window(runtime: Runtime, otel: Otel) -> None:
    assert runtime.ledger.in_flight == 0
    assert in_flight_metric(otel) == 0


def carbonspan_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name.startswith("carbonspan") and r.levelno >= logging.WARNING
    ]
