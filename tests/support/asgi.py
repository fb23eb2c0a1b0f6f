"""Driving an app in process, through its ASGI interface.

`client`, `get` and `fetch` send requests with httpx's ASGI transport, as most
tests do. `call` sends one request message by message, where a test needs
control over them (disconnects, cancellation, extensions).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx


def client(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


def get(app: Any, path: str, *, backend: str = "asyncio") -> httpx.Response:
    """One GET request, answered; under asyncio, or (`backend`) trio."""

    async def go() -> httpx.Response:
        async with client(app) as c:
            return await c.get(path)

    response: httpx.Response = anyio.run(go, backend=backend)
    return response


def fetch(app: Any, paths: list[str], *, concurrently: bool = False) -> list[int]:
    """The status of a GET to each path: one after the other, or all at once."""

    async def go() -> list[int]:
        async with client(app) as c:
            if concurrently:
                responses = await asyncio.gather(*(c.get(p) for p in paths))
            else:
                responses = [await c.get(p) for p in paths]
        return [r.status_code for r in responses]

    return asyncio.run(go())


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


class Lifespan:
    """The server's side of the ASGI lifespan protocol, step by step.

    `start()` sends lifespan.startup and runs the app's lifespan in a task;
    `shutdown()` sends lifespan.shutdown; `sent` lists the types of the
    messages the app answered with.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.incoming: asyncio.Queue[Message] = asyncio.Queue()
        self.sent: list[str] = []

    async def send(self, message: Message) -> None:
        self.sent.append(message["type"])

    async def start(self) -> asyncio.Task[None]:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        await self.incoming.put({"type": "lifespan.startup"})
        return asyncio.create_task(self.app(scope, self.incoming.get, self.send))

    async def shutdown(self) -> None:
        await self.incoming.put({"type": "lifespan.shutdown"})
