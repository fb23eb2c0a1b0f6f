"""The lifecycle tests' app: the test app, plus a WebSocket echo, a file, a
GET+HEAD route, a request that cleans up slowly, and one that says how many
others are in flight. In process for asgi/test_lifecycle.py; served by a real
uvicorn (`serve`) for e2e/test_uvicorn.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, WebSocket
from fastapi.responses import FileResponse, Response
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.trace import TracerProvider

from carbonspan import CodeCarbonInstrumentor
from carbonspan.otel.instrumentor import instrumentation_of
from carbonspan.testing import ConstantPowerSource
from support.apps import build_app

CPU_W = 10.0


def lifecycle_app(**fastapi_kwargs: Any) -> FastAPI:
    """The test app, plus a WebSocket echo, a file and a GET+HEAD route."""
    app = build_app(**fastapi_kwargs)

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
        runtime = instrumentation_of(app)
        assert runtime is not None
        return {"in_flight": runtime.ledger.in_flight - 1}  # less this one

    return app


def serve() -> FastAPI:
    """`uvicorn support.lifecycle:serve --factory`, for e2e/test_uvicorn.py."""

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        yield
        runtime = instrumentation_of(app)
        assert runtime is not None
        at_shutdown = runtime.ledger.in_flight
        began = time.monotonic()
        while runtime.ledger.in_flight and time.monotonic() - began < 2:
            await asyncio.sleep(0.001)
        runtime.sampler.sample()
        state = {
            "in_flight": runtime.ledger.in_flight,
            "errors": runtime.sampler.errors,
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
