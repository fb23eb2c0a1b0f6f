"""An app exporting its spans over OTLP/HTTP with the standard exporter.

OTEL_EXPORTER_OTLP_TRACES_ENDPOINT  where to send them (Phoenix, in the tests)
PHOENIX_PROJECT                     the project the spans belong to
"""

from __future__ import annotations

import os

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from carbonspan import CodeCarbonInstrumentor
from support.apps import build_app

resource = Resource.create(
    {
        "service.name": "carbonspan-demo",
        "openinference.project.name": os.environ.get("PHOENIX_PROJECT", "carbonspan"),
    }
)
tracer_provider = TracerProvider(resource=resource)
tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))

app = build_app()
FastAPIInstrumentor.instrument_app(app, tracer_provider=tracer_provider)
# The real CodeCarbon power source: whatever this machine has. Each response
# says its energy so far, once there are figures: the test waits for them.
CodeCarbonInstrumentor().instrument_app(
    app,
    country_iso_code="FRA",
    tracer_provider=tracer_provider,
    response_headers=["energy"],
)
