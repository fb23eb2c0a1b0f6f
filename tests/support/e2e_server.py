"""The app the end-to-end tests serve with a real uvicorn, configured by env.

E2E_MODE      contrib (opentelemetry-instrumentation-fastapi) or native
              (FastAPI's own telemetry, global providers)
E2E_SPANS     file to write finished spans to, one JSON object per line
E2E_STATE     file to write the ledger's state to at shutdown
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

from carbonspan.otel.instrumentor import instrumentation_of
from carbonspan.power.source import COMPONENTS
from support.apps import build_app
from support.served import drawn, measured

MODE = os.environ.get("E2E_MODE", "contrib")
spans_file = open(os.environ["E2E_SPANS"], "a", buffering=1)  # noqa: SIM115
tracer_provider = TracerProvider()
tracer_provider.add_span_processor(
    SimpleSpanProcessor(
        ConsoleSpanExporter(
            out=spans_file, formatter=lambda span: span.to_json(indent=None) + "\n"
        )
    )
)
meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])


def per_component(joules: tuple[float, ...]) -> dict[str, float]:
    return dict(zip(COMPONENTS, joules, strict=True))


@asynccontextmanager
async def lifespan(app: object) -> AsyncIterator[None]:
    inst = instrumentation_of(app)
    assert inst is not None
    deadline = time.monotonic() + 10
    while source.reads < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    yield
    inst.sampler.sample()  # a last tick, after every request has closed
    ledger = inst.ledger
    totals = ledger.totals()
    state = {
        "in_flight": ledger.in_flight,
        "unattributed": per_component(totals.unattributed),
        "attributed": per_component(totals.attributed),
        "after_response": per_component(totals.after_response),
        "measured": drawn(inst, source),
    }
    with open(os.environ["E2E_STATE"], "w") as f:
        json.dump(state, f)


app = build_app(lifespan=lifespan)
if MODE == "native":
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
else:
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=tracer_provider, meter_provider=meter_provider
    )
source = measured(app, meter_provider)
