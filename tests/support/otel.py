"""The OpenTelemetry SDK set up for a test, and apps instrumented under it.

`Otel` is a real tracer and meter provider with in-memory exporters;
`Instrumented` instruments apps (with the contrib span creator before or after
carbonspan, or none) and undoes it all at teardown. The `otel` and
`instrument` fixtures in tests/conftest.py hand them out. `wait_ready` starts
an instrumentation's sampler and waits for readings; `ready_app` gives the
test app instrumented and ready.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.sdk.trace.sampling import Sampler
from opentelemetry.trace import SpanKind

from carbonspan import CodeCarbonInstrumentor
from carbonspan.otel import attributes as a
from carbonspan.otel.instrumentation import Instrumentation
from carbonspan.otel.instrumentor import instrumentation_of
from support.apps import build_app


@dataclass
class Otel:
    """A real SDK tracer and meter provider with in-memory exporters."""

    sampler: Sampler | None = None
    exporter: InMemorySpanExporter = field(default_factory=InMemorySpanExporter)
    reader: InMemoryMetricReader = field(default_factory=InMemoryMetricReader)

    def __post_init__(self) -> None:
        kwargs = {"sampler": self.sampler} if self.sampler else {}
        self.tracer_provider = TracerProvider(**kwargs)  # type: ignore[arg-type]
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def server_spans(self) -> list[ReadableSpan]:
        return [
            s for s in self.exporter.get_finished_spans() if s.kind == SpanKind.SERVER
        ]

    def routes(self) -> list[Any]:
        """The http.route of each codecarbon.request.energy point (None: none)."""
        points = self.points("codecarbon.request.energy")
        return [p.attributes.get(a.HTTP_ROUTE) for p in points]

    def collect(self) -> dict[str, list[Any]]:
        """One collection: each metric's points, by name."""
        data = self.reader.get_metrics_data()
        out: dict[str, list[Any]] = {}
        for rm in data.resource_metrics if data is not None else ():
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    out.setdefault(metric.name, []).extend(metric.data.data_points)
        return out

    def points(self, name: str) -> list[Any]:
        return self.collect().get(name, [])


class Instrumented:
    """Instruments apps and undoes it all at teardown."""

    def __init__(self) -> None:
        self.carbon: list[Any] = []
        self.contrib: list[Any] = []

    def __call__(
        self,
        app: Any,
        otel: Otel | None,
        *,
        contrib: str | None = "before",
        **settings: Any,
    ) -> Instrumentation:
        if otel is not None:
            settings.setdefault("meter_provider", otel.meter_provider)
        if contrib == "before" and otel is not None:
            self.instrument_contrib(app, otel)
        CodeCarbonInstrumentor().instrument_app(app, **settings)
        self.carbon.append(app)
        if contrib == "after" and otel is not None:
            self.instrument_contrib(app, otel)
        inst = instrumentation_of(app)
        assert inst is not None
        return inst

    def instrument_contrib(self, app: Any, otel: Otel) -> None:
        FastAPIInstrumentor.instrument_app(
            app,
            tracer_provider=otel.tracer_provider,
            meter_provider=otel.meter_provider,
        )
        self.contrib.append(app)

    def cleanup(self) -> None:
        for app in self.carbon:
            CodeCarbonInstrumentor.uninstrument_app(app)
        for app in self.contrib:
            FastAPIInstrumentor.uninstrument_app(app)


def attrs(span: ReadableSpan, prefix: str = "codecarbon.") -> dict[str, Any]:
    return {k: v for k, v in (span.attributes or {}).items() if k.startswith(prefix)}


def wait_ready(inst: Instrumentation, readings: int = 2, timeout: float = 10.0) -> None:
    """Start the sampler as a server's startup would, and wait until it has
    taken `readings` more readings."""
    from support.checks import wait_for  # support.checks imports this module

    inst.sampler.start()
    start = inst.sampler.reads
    wait_for(lambda: inst.sampler.reads - start >= readings, timeout=timeout)


def ready_app(
    instrument: Instrumented, otel: Otel | None, **settings: Any
) -> tuple[FastAPI, Instrumentation]:
    """The test app (support.apps), instrumented with `settings` under `otel`,
    its sampler started and read twice: requests have figures from the first."""
    app = build_app()
    inst = instrument(app, otel, **settings)
    wait_ready(inst)
    return app, inst
