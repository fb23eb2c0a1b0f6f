"""gunicorn settings for the worker tests: each worker exports its own telemetry."""

import os

from opentelemetry import metrics, trace
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

workers = 2
worker_class = "uvicorn.workers.UvicornWorker"
graceful_timeout = 10


def post_fork(server: object, worker: object) -> None:
    # One identity per worker, so the test can tell their counters apart.
    resource = Resource.create({"service.instance.id": str(os.getpid())})
    endpoint = os.environ["E2E_OTLP"]
    reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=f"{endpoint}/v1/metrics"),
        export_interval_millis=1000,
    )
    metrics.set_meter_provider(
        MeterProvider(resource=resource, metric_readers=[reader])
    )
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(
        BatchSpanProcessor(
            OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces"),
            schedule_delay_millis=200,
        )
    )
    trace.set_tracer_provider(tracer_provider)
