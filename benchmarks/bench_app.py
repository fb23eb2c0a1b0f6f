"""The benchmark's app: the same code for every variant, in process and over HTTP.

`build_app(loops)` is a FastAPI app with `GET /ping` (returns a small dict) and
`GET /cpu` (an `async def` that does `loops` iterations of pure-Python work).
`overhead.py` builds it three times in its own process for the in-process mode.

For the HTTP mode, `overhead.py` serves `create_app` with uvicorn, one server
per variant:

    BENCH_VARIANT=b BENCH_LOOPS=25000 python -m uvicorn bench_app:create_app \
        --factory --host 127.0.0.1 --port 8000

BENCH_VARIANT     a: FastAPIInstrumentor alone; b: + carbonspan (the real
                  default CodeCarbonPowerSource); c: + an OfflineEmissionsTracker
                  started and stopped around every request
BENCH_LOOPS       the /cpu endpoint's work (the benchmark calibrates it)
BENCH_COUNTRY     ISO code given to carbonspan and CodeCarbon (default FRA)
BENCH_PARENT_PID  the server shuts itself down when this process is gone

Each server has a real SDK TracerProvider (BatchSpanProcessor to an exporter
that counts server spans and discards them) and a real SDK MeterProvider (a
periodic reader, every 10 s, to an exporter that discards). `GET /_bench/stats`
flushes the spans, then reports the process's CPU time, the carbonspan sampler
thread's CPU time and the span counts; variant c does not start a tracker for
it.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from harness import exit_with_parent, find_thread, thread_cpu_s
from netguard import NETWORK

NETWORK.install()  # before CodeCarbon is imported, in the servers too

from codecarbon import OfflineEmissionsTracker  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from opentelemetry import trace  # noqa: E402
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor  # noqa: E402
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import (  # noqa: E402
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import (  # noqa: E402
    BatchSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import SpanKind  # noqa: E402

if TYPE_CHECKING:
    from carbonspan.types import ASGIApp, Message, Receive, Scope, Send

STATS_PATH = "/_bench/stats"


# -- the CPU-heavy endpoint's work ---------------------------------------------


def spin(loops: int) -> int:
    """A fixed amount of pure-Python work (not a time-based busy wait, which
    would make every variant take the same time and hide the overhead)."""
    x = 0
    for i in range(loops):
        x = (x + i * i) % 1_000_003
    return x


def calibrate_spin(target_ms: float) -> int:
    loops = 10_000
    while True:
        t0 = time.perf_counter()
        spin(loops)
        elapsed = time.perf_counter() - t0
        if elapsed > 0.02:
            break
        loops *= 2
    samples = []
    for _ in range(5):
        t0 = time.perf_counter()
        spin(loops)
        samples.append(time.perf_counter() - t0)
    per_loop = min(samples) / loops
    return max(1, int(target_ms / 1000 / per_loop))


# -- variant c -------------------------------------------------------------------


def tracker_kwargs(country: str) -> dict[str, Any]:
    return {
        "country_iso_code": country,
        "save_to_file": False,
        "log_level": "error",
        "allow_multiple_runs": True,
    }


class PerRequestTrackerMiddleware:
    """The obvious design: one OfflineEmissionsTracker started/stopped per request.

    Like carbonspan, it stops the tracker and sets the span attributes before the
    final body is forwarded (the span ends right after it).
    """

    def __init__(self, app: ASGIApp, **tracker_kwargs: Any) -> None:
        self.app = app
        self.tracker_kwargs = tracker_kwargs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") == STATS_PATH:
            await self.app(scope, receive, send)
            return
        span = trace.get_current_span()
        tracker = OfflineEmissionsTracker(**self.tracker_kwargs)
        tracker.start()
        done = False

        def stop() -> None:
            nonlocal done
            done = True
            kg = tracker.stop()
            data = getattr(tracker, "final_emissions_data", None)
            if kg is not None and data is not None and span.is_recording():
                span.set_attributes(
                    {
                        "codecarbon.energy.total": float(data.energy_consumed) * 3.6e6,
                        "codecarbon.emissions": float(kg) * 1000.0,
                    }
                )

        async def wrapped_send(message: Message) -> None:
            if (
                not done
                and message["type"] == "http.response.body"
                and not message.get("more_body", False)
            ):
                stop()
            await send(message)

        try:
            await self.app(scope, receive, wrapped_send)
        finally:
            if not done:
                stop()


# -- the app ---------------------------------------------------------------------


def build_app(loops: int) -> FastAPI:
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, Any]:
        return {"ok": True, "service": "bench"}

    @app.get("/cpu")
    async def cpu() -> dict[str, int]:
        return {"x": spin(loops)}

    return app


# -- served by uvicorn (HTTP mode) -------------------------------------------------


class CountingSpanExporter(SpanExporter):
    """Counts server spans, and those with carbonspan's energy; keeps nothing."""

    def __init__(self) -> None:
        self.server_spans = 0
        self.with_energy = 0
        self.last_energy: float | None = None

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for span in spans:
            if span.kind == SpanKind.SERVER:
                self.server_spans += 1
                energy = (span.attributes or {}).get("codecarbon.energy.total")
                if energy is not None:
                    self.with_energy += 1
                    self.last_energy = float(energy)  # type: ignore[arg-type]
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


class DiscardMetricExporter(MetricExporter):
    def __init__(self) -> None:
        super().__init__()
        self.exports = 0

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        self.exports += 1
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        return None


def _children_cpu_s() -> float:
    """CPU seconds of this process's finished children (c's lscpu runs)."""
    t = os.times()
    return t.children_user + t.children_system


def sampler_state(app: FastAPI) -> tuple[bool, dict[str, Any]]:
    """Whether b's sampler has its first readings, and what it measures."""
    from carbonspan.otel.instrumentor import (
        instrumentation_of,  # b only: a and c never load it
    )

    instrumentation = instrumentation_of(app)
    if instrumentation is None:
        return True, {}
    sampler = instrumentation.sampler
    info = {
        "measurement": dict(sampler.info.measurement),
        "cpu_model": sampler.info.cpu_model,
        "interval": sampler.interval,
        "running": sampler.running,
    }
    ready = bool(sampler.info.measurement) and any(
        instrumentation.ledger.totals().known
    )
    return ready, info


def add_stats(
    app: FastAPI,
    variant: str,
    tracer_provider: TracerProvider,
    exporter: CountingSpanExporter,
) -> None:
    @app.get(STATS_PATH)
    async def stats() -> dict[str, Any]:
        tracer_provider.force_flush()  # the spans so far count as exported
        ready, info = sampler_state(app) if variant == "b" else (True, {})
        return {
            "variant": variant,
            "pid": os.getpid(),
            "cpu_s": time.process_time(),
            "children_cpu_s": _children_cpu_s(),
            "wall_s": time.perf_counter(),
            "sampler_cpu_s": thread_cpu_s(find_thread("carbonspan-sampler")),
            "ready": ready,
            "sampler": info,
            "server_spans": exporter.server_spans,
            "spans_with_energy": exporter.with_energy,
            "last_energy": exporter.last_energy,
            "network_blocked": list(NETWORK.blocked),
        }


def create_app() -> FastAPI:
    variant = os.environ.get("BENCH_VARIANT", "a")
    if variant not in ("a", "b", "c"):
        raise SystemExit(f"BENCH_VARIANT={variant!r}: use a, b or c")
    loops = int(os.environ.get("BENCH_LOOPS", "20000"))
    country = os.environ.get("BENCH_COUNTRY", "FRA")
    parent = os.environ.get("BENCH_PARENT_PID")
    if parent:  # once the benchmark is gone, stop as Ctrl-C would
        exit_with_parent(
            int(parent), lambda: os.kill(os.getpid(), signal.SIGTERM), every=1.0
        )

    exporter = CountingSpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
    meter_provider = MeterProvider(
        metric_readers=[
            PeriodicExportingMetricReader(
                DiscardMetricExporter(), export_interval_millis=10_000
            )
        ]
    )

    app = build_app(loops)
    add_stats(app, variant, tracer_provider, exporter)
    if variant == "c":
        app.add_middleware(PerRequestTrackerMiddleware, **tracker_kwargs(country))
    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=tracer_provider, meter_provider=meter_provider
    )
    if variant == "b":
        from carbonspan import CodeCarbonInstrumentor

        CodeCarbonInstrumentor().instrument_app(
            app, country_iso_code=country, meter_provider=meter_provider
        )
    return app
