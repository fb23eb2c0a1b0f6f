"""The app e2e/test_exporters.py serves with a real uvicorn: its exporters
send to an endpoint that is down and to one that hangs."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter,
)
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
)

from carbonspan import CodeCarbonInstrumentor
from carbonspan.otel.instrumentor import instrumentation_of
from carbonspan.testing import ConstantPowerSource
from support.apps import build_app


def serve() -> Any:
    """The app under test: `uvicorn support.exporters_app:serve --factory`.

    Spans and metrics go over OTLP/HTTP to REL_DOWN (nothing listens there)
    and to REL_HUNG (the test's receiver), and spans to the REL_SPANS file
    too, so the test can check the figures whatever the exporters do.
    """
    down, hung = os.environ["REL_DOWN"], os.environ["REL_HUNG"]
    spans_file = open(os.environ["REL_SPANS"], "a", buffering=1)  # noqa: SIM115
    tracer_provider = TracerProvider()
    for endpoint, timeout in ((down, 1), (hung, 30)):
        exporter = OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces", timeout=timeout)
        tracer_provider.add_span_processor(
            BatchSpanProcessor(exporter, schedule_delay_millis=50)
        )
    tracer_provider.add_span_processor(
        SimpleSpanProcessor(
            ConsoleSpanExporter(
                out=spans_file, formatter=lambda s: s.to_json(indent=None) + "\n"
            )
        )
    )
    readers = [
        PeriodicExportingMetricReader(
            OTLPMetricExporter(endpoint=f"{endpoint}/v1/metrics", timeout=timeout),
            export_interval_millis=100,
        )
        for endpoint, timeout in ((down, 1), (hung, 30))
    ]
    meter_provider = MeterProvider(metric_readers=readers)

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        yield
        inst = instrumentation_of(app)
        assert inst is not None
        inst.sampler.sample()
        with open(os.environ["REL_STATE"], "w") as f:
            json.dump({"in_flight": inst.ledger.in_flight}, f)

    app = build_app(lifespan=lifespan)
    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=tracer_provider, meter_provider=meter_provider
    )
    CodeCarbonInstrumentor().instrument_app(
        app,
        power_source=ConstantPowerSource(cpu=10.0, ram=2.0),
        meter_provider=meter_provider,
        tracer_provider=tracer_provider,
        sample_interval=0.02,
    )
    return app
