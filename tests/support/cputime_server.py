"""An app under the cpu_time policy with the patterns that wrapping coroutines broke.

Served by uvicorn (asyncio or uvloop) or hypercorn (asyncio or trio):
a `@app.middleware("http")` (Starlette's BaseHTTPMiddleware, which runs the
rest of the app in an anyio task group) in front of every route, a POST that
reads its body, a stream, and a handler whose task group is cancelled.
`/state` tells what carbonspan and the app saw.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib.metadata import version
from typing import Any

import anyio
from fastapi import FastAPI, Request, Response
from fastapi.responses import StreamingResponse
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind

from carbonspan import CodeCarbonInstrumentor
from carbonspan.otel.instrumentor import instrumentation_of
from carbonspan.testing import ConstantPowerSource
from support.apps import burn

app = FastAPI()
seen: dict[str, Any] = {"chunks": 0, "cancelled_children": 0, "stream_closed": 0}


@app.middleware("http")
async def tag(request: Request, call_next: Callable[..., Awaitable[Response]]) -> Any:
    response = await call_next(request)
    response.headers["x-tagged"] = "yes"
    return response


@app.get("/fast")
async def fast() -> dict[str, str]:
    return {"ok": "yes"}


@app.post("/echo")
async def echo(request: Request) -> dict[str, int]:
    body = await request.body()
    return {"length": len(body)}


@app.get("/stream")
async def stream(chunks: int = 5, pause: float = 0.05) -> StreamingResponse:
    async def produce() -> AsyncIterator[bytes]:
        try:
            for i in range(chunks):
                seen["chunks"] += 1
                burn(0.002)
                yield f"chunk {i}\n".encode()
                await anyio.sleep(pause)
        finally:
            seen["stream_closed"] += 1

    return StreamingResponse(produce(), media_type="text/plain")


@app.get("/taskgroup")
async def taskgroup() -> dict[str, int]:
    """Children wait; one fails; the group must cancel the others and exit."""

    async def waiter() -> None:
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            seen["cancelled_children"] += 1
            raise

    async def failer() -> None:
        await anyio.sleep(0.05)
        raise LookupError("a child failed")

    try:
        async with anyio.create_task_group() as group:
            for _ in range(3):
                group.start_soon(waiter)
            group.start_soon(failer)
    except Exception:  # the child's LookupError, in an ExceptionGroup on 3.11+
        pass
    return {"cancelled": seen["cancelled_children"]}


@app.get("/burn")
def burn_sync(seconds: float = 0.05) -> dict[str, int]:
    return {"loops": burn(seconds)}


@app.get("/state")
async def state() -> dict[str, Any]:
    inst = instrumentation_of(app)
    assert inst is not None
    spans = [
        dict(s.attributes or {})
        for s in exporter.get_finished_spans()
        if s.kind == SpanKind.SERVER
    ]
    return {
        **seen,
        "in_flight": inst.ledger.in_flight,
        "attribution": [s.get("codecarbon.attribution") for s in spans],
        "cpu": [s.get("codecarbon.energy.cpu") for s in spans],
        "routes": [s.get("http.route") for s in spans],
        "anyio": version("anyio"),
    }


exporter = InMemorySpanExporter()
tracer_provider = TracerProvider()
tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
FastAPIInstrumentor.instrument_app(
    app, tracer_provider=tracer_provider, meter_provider=meter_provider
)
CodeCarbonInstrumentor().instrument_app(
    app,
    power_source=ConstantPowerSource(cpu=20.0, ram=2.0),
    attribution=os.environ.get("CPUTIME_POLICY", "cpu_time"),
    meter_provider=meter_provider,
    sample_interval=0.02,
)
