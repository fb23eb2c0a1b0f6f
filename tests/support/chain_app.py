"""One service of a chain, served by a real uvicorn, configured by env:

CHAIN_NEXT    the URL of the next service's /work ("" for the last one)
CHAIN_CALLS   how many times /work calls it (default 1)
CHAIN_SPANS   file to write finished spans to, one JSON object per line
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, PHOENIX_PROJECT
              where to export them over OTLP too, and the Phoenix project

and carbonspan's own CARBONSPAN_* settings (response_headers,
downstream_energy). Spans go through FastAPIInstrumentor and
HTTPXClientInstrumentor, as a traced service's would; the power source is
constant (support.served).
"""

from __future__ import annotations

import asyncio
import os
import threading

import aiohttp
import httpx
import requests
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.instrumentation.requests import RequestsInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

from support.served import measured

NEXT = os.environ.get("CHAIN_NEXT", "")
CALLS = int(os.environ.get("CHAIN_CALLS", "1"))
spans_file = open(os.environ["CHAIN_SPANS"], "a", buffering=1)  # noqa: SIM115
tracer_provider = TracerProvider(
    resource=Resource.create(
        {"openinference.project.name": os.environ.get("PHOENIX_PROJECT", "chain")}
    )
)
if os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
    tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
# Batched, as a production service exports: what a callee's response costs
# after its head (where its figure is written) stays small.
tracer_provider.add_span_processor(
    BatchSpanProcessor(
        ConsoleSpanExporter(
            out=spans_file, formatter=lambda span: span.to_json(indent=None) + "\n"
        ),
        schedule_delay_millis=100,
    )
)
trace.set_tracer_provider(tracer_provider)
# aiohttp's client instrumentation is left out: its release pins an older
# opentelemetry-instrumentation than the others'. Its calls are read all the
# same; they have no client span.
for instrumentor in (HTTPXClientInstrumentor(), RequestsInstrumentor()):
    instrumentor.instrument(tracer_provider=tracer_provider)
meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
app = FastAPI()
client = httpx.AsyncClient(timeout=30)


@app.get("/work")
async def work(ms: float = 30.0) -> dict[str, int]:
    await asyncio.sleep(ms / 1000.0)
    for _ in range(CALLS if NEXT else 0):
        (await client.get(NEXT, params={"ms": ms})).raise_for_status()
    return {"calls": CALLS if NEXT else 0}


@app.get("/call")
async def call(to: str) -> dict[str, int]:
    """One call to `to`, whatever it answers (or a refused connection)."""
    try:
        status = (await client.get(to)).status_code
    except httpx.TransportError:
        status = 0
    return {"status": status}


@app.get("/call-requests")
def call_requests(to: str) -> dict[str, int]:
    """One call with requests, from a `def` handler (in the threadpool)."""
    return {"status": requests.get(to, timeout=30).status_code}


@app.get("/call-aiohttp")
async def call_aiohttp(to: str) -> dict[str, int]:
    async with aiohttp.ClientSession() as session, session.get(to) as response:
        await response.read()
        return {"status": response.status}


@app.get("/unasked")
def unasked(to: str) -> dict[str, int]:
    """A call from a thread that did not inherit the request's context."""
    got: list[int] = []
    thread = threading.Thread(target=lambda: got.append(httpx.get(to).status_code))
    thread.start()
    thread.join()
    return {"status": got[0]}


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


FastAPIInstrumentor.instrument_app(
    app, tracer_provider=tracer_provider, meter_provider=meter_provider
)
source = measured(app, meter_provider)
