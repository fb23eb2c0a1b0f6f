"""The lifecycle tests' app: the test app, plus a WebSocket echo, a file, a
GET+HEAD route, a request that cleans up slowly, and one that says how many
others are in flight; `app.state.entered` lists the paths whose handlers
were entered (HTTP or WebSocket). In process for asgi/test_lifecycle.py;
served by a real uvicorn (`serve`) for e2e/test_uvicorn.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, WebSocket
from fastapi.requests import HTTPConnection
from fastapi.responses import FileResponse, Response
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.trace import TracerProvider

from carbonspan import CodeCarbonInstrumentor
from carbonspan.otel.instrumentor import instrumentation_of
from carbonspan.testing import ConstantPowerSource
from support.apps import build_app

CPU_W = 10.0


async def note_entry(connection: HTTPConnection) -> None:
    """Run just before each handler (a sync one goes on in a thread)."""
    connection.app.state.entered.append(connection.url.path)


def lifecycle_app(**fastapi_kwargs: Any) -> FastAPI:
    """The test app, plus a WebSocket echo, a file and a GET+HEAD route."""
    app = build_app(dependencies=[Depends(note_entry)], **fastapi_kwargs)
    app.state.entered = []

    @app.websocket("/ws")
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        async for text in websocket.iter_text():
            await websocket.send_text(text.upper())

    @app.get("/file")
    async def file() -> FileResponse:
        return FileResponse(__file__, media_type="text/plain")

    @app.api_route("/page", methods=["GET", "HEAD"])
    async def page() -> Response:
        return Response(b"<p>hello</p>", media_type="text/html")

    @app.get("/slow-cleanup")
    async def slow_cleanup() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            await asyncio.sleep(0.05)  # e.g. giving a connection back to a pool

    @app.get("/in-flight")
    async def in_flight() -> dict[str, int]:
        inst = instrumentation_of(app)
        assert inst is not None
        return {"in_flight": inst.ledger.in_flight - 1}  # less this one

    return app


def serve() -> FastAPI:
    """`uvicorn support.lifecycle:serve --factory`, for e2e/test_uvicorn.py."""

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        yield
        inst = instrumentation_of(app)
        assert inst is not None
        at_shutdown = inst.ledger.in_flight
        began = time.monotonic()
        while inst.ledger.in_flight and time.monotonic() - began < 2:
            await asyncio.sleep(0.001)
        inst.sampler.sample()
        state = {
            "in_flight": inst.ledger.in_flight,
            "errors": inst.sampler.errors,
            "at_shutdown": at_shutdown,
            "waited": time.monotonic() - began,
        }
        with open(os.environ["REL_STATE"], "w") as f:
            json.dump(state, f)

    app = lifecycle_app(lifespan=lifespan)
    FastAPIInstrumentor.instrument_app(app, tracer_provider=TracerProvider())
    CodeCarbonInstrumentor().instrument_app(
        app, power_source=ConstantPowerSource(cpu=CPU_W), sample_interval=0.02
    )
    return app
