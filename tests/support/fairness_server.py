"""An app whose requests wait on their clients, hang, leave work behind, or upgrade.

Served by a real uvicorn for tests/e2e/test_fairness.py. The power source is a
constant 10 W of CPU, so a request's physical share is 10 W times the seconds
it was in flight, divided by the requests in flight with it. `/state` reports
the ledger, the spans (with their seconds) and the metrics, how many /echo
requests wait on their bodies, since when /stuck hangs, and how long
/background ran on after its response.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import BackgroundTasks, FastAPI, Request, WebSocket, WebSocketDisconnect
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

WATTS = 10.0
app = FastAPI()
stuck = asyncio.Event()
#: /echo requests entered and still waiting on their bodies; when /stuck began;
#: how long each /background request ran on after its response had gone.
waiting = {"echo": 0}
since: dict[str, float] = {}
after_response: list[float] = []


class TimeAfterResponse:
    """Times, for /background, the seconds from its response's last body to
    the app's return (its background task runs meanwhile): the truth of what
    it draws after the response, at WATTS, timed by the app's own clock."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/background":
            await self.app(scope, receive, send)
            return
        sent: list[float] = []

        async def timed(message: Any) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get(
                "more_body", False
            ):
                sent.append(time.monotonic())

        await self.app(scope, receive, timed)
        if sent:
            after_response.append(time.monotonic() - sent[0])


@app.get("/fast")
async def fast() -> dict[str, str]:
    return {"ok": "yes"}


@app.get("/work")
async def work(seconds: float = 0.3) -> dict[str, float]:
    await asyncio.sleep(seconds)
    return {"seconds": seconds}


@app.post("/echo")
async def echo(request: Request) -> dict[str, int]:
    waiting["echo"] += 1
    try:
        return {"length": len(await request.body())}
    finally:
        waiting["echo"] -= 1


@app.get("/stuck")
async def hang() -> dict[str, str]:
    since["stuck"] = time.monotonic()
    await stuck.wait()  # until the test lets it go
    return {"released": "yes"}


@app.post("/release")
async def release() -> dict[str, str]:
    stuck.set()
    return {"released": "yes"}


@app.get("/big")
async def big(chunks: int = 40) -> StreamingResponse:
    async def produce() -> Any:
        for _ in range(chunks):
            yield b"x" * 1_000_000

    return StreamingResponse(produce(), media_type="application/octet-stream")


@app.get("/background")
async def background(tasks: BackgroundTasks, seconds: float = 0.2) -> dict[str, str]:
    tasks.add_task(burn, seconds)  # a sync task: after the response, in a thread
    return {"queued": "yes"}


@app.websocket("/ws")
async def ws(socket: WebSocket) -> None:
    await socket.accept()
    try:
        while True:
            text = await socket.receive_text()
            burn(0.01)
            await socket.send_text(text)
    except WebSocketDisconnect:
        pass


def _points() -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for point in metric.data.data_points:
                    value = getattr(point, "value", None)
                    if value is None:
                        value = {"sum": point.sum, "count": point.count}
                    out.setdefault(metric.name, []).append(
                        {"attributes": dict(point.attributes or {}), "value": value}
                    )
    return out


@app.get("/state")
async def state() -> dict[str, Any]:
    inst = instrumentation_of(app)
    assert inst is not None
    inst.sampler.sample()  # a reading now: the open energy is up to date
    spans = [
        {
            "name": s.name,
            "attributes": dict(s.attributes or {}),
            "seconds": ((s.end_time or 0) - (s.start_time or 0)) / 1e9,
        }
        for s in exporter.get_finished_spans()
        if s.kind == SpanKind.SERVER
    ]
    totals = inst.ledger.totals()
    return {
        "in_flight": inst.ledger.in_flight,
        "spans": spans,
        "metrics": _points(),
        "measured": totals.measured[0],
        "time": time.monotonic(),
        "echo_waiting": waiting["echo"],
        "stuck_since": since.get("stuck"),
        "after_response": after_response,
    }


exporter = InMemorySpanExporter()
tracer_provider = TracerProvider()
tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
reader = InMemoryMetricReader()
meter_provider = MeterProvider(metric_readers=[reader])
app.add_middleware(TimeAfterResponse)  # inside carbonspan's middleware
FastAPIInstrumentor.instrument_app(
    app, tracer_provider=tracer_provider, meter_provider=meter_provider
)
CodeCarbonInstrumentor().instrument_app(
    app,
    power_source=ConstantPowerSource(cpu=WATTS),
    meter_provider=meter_provider,
    sample_interval=0.05,
    long_request=1.0,
)
