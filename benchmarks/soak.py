"""Soak: a long run of requests through the instrumented ASGI stack.

Run from the repository root:

    .venv/bin/python benchmarks/soak.py                    # 200,000 requests
    .venv/bin/python benchmarks/soak.py --requests 20000   # a quick look
    .venv/bin/python benchmarks/soak.py --json soak.json

A FastAPI app (async, sync, streaming, templated, failing and unknown routes)
under `FastAPIInstrumentor` (a real SDK TracerProvider, a SimpleSpanProcessor to
an exporter that checks and counts server spans, then drops them; a real SDK
MeterProvider whose InMemoryMetricReader is collected every 5,000 requests)
and carbonspan with the real `CodeCarbonPowerSource` sampled every 10 ms, so
that the ledger's ring of 8192 ticks wraps around several times.

Requests go straight through the ASGI interface (no sockets), in batches of 8
concurrent ones. After a warm-up, the process's RSS, its threads and the sizes
of every carbonspan structure are taken, and again at the end. Memory should be
flat: RSS grows by less than 5 MB after warm-up, the threads are the same, and
the ledger and metrics hold a fixed number of entries whatever the count of
requests. tests/e2e/test_load.py runs a shorter soak through `run()`.

Nothing here touches the network.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

import psutil
from fastapi import FastAPI, HTTPException
from fastapi.responses import StreamingResponse
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import SpanKind

from carbonspan import (
    CodeCarbonInstrumentor,
    CodeCarbonPowerSource,
    EnergyReading,
    HardwareInfo,
    PowerSource,
)
from carbonspan.attribution.ledger import RING
from carbonspan.otel import attributes as a
from carbonspan.otel.instrumentation import Instrumentation
from carbonspan.otel.instrumentor import instrumentation_of
from carbonspan.power import sampler as carbonspan_sampler
from carbonspan.testing import ConstantPowerSource
from harness import timed_request

if TYPE_CHECKING:
    pass
MB = 1024 * 1024
PATHS = (
    "/fast", "/items/{i}", "/sync", "/stream", "/items/{i}", "/fast",
    "/boom", "/missing/{i}", "/fast", "/items/{i}?q=secret{i}",
)  # fmt: skip


def build_starlette_app() -> Any:
    """The same routes on a plain Starlette app (lighter, for the test suite)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def fast(request: Request) -> JSONResponse:
        return JSONResponse({"ok": "yes"})

    async def item(request: Request) -> JSONResponse:
        return JSONResponse({"item": int(request.path_params["item_id"])})

    def sync(request: Request) -> JSONResponse:
        return JSONResponse({"sum": sum(range(100))})

    async def stream(request: Request) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            for i in range(2):
                yield f"chunk {i}\n".encode()

        return StreamingResponse(body(), media_type="text/plain")

    async def boom(request: Request) -> JSONResponse:
        return JSONResponse({"detail": "failed"}, status_code=500)

    return Starlette(
        routes=[
            Route("/fast", fast),
            Route("/items/{item_id:int}", item),
            Route("/sync", sync),
            Route("/stream", stream),
            Route("/boom", boom),
        ]
    )


def build_app() -> FastAPI:
    app = FastAPI()

    @app.get("/fast")
    async def fast() -> dict[str, str]:
        return {"ok": "yes"}

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item": item_id}

    @app.get("/sync")
    def sync() -> dict[str, int]:
        return {"sum": sum(range(100))}

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            for i in range(2):
                yield f"chunk {i}\n".encode()

        return StreamingResponse(body(), media_type="text/plain")

    @app.get("/boom")
    async def boom() -> None:
        raise HTTPException(status_code=500, detail="failed")

    return app


class CountingExporter(SpanExporter):
    """Counts server spans and sums their energy; keeps none of them."""

    def __init__(self) -> None:
        self.spans = 0
        self.measured = 0
        self.bad = 0  # a NaN, infinite or negative figure
        self.joules = {"cpu": 0.0, "gpu": 0.0, "ram": 0.0}

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for span in spans:
            if span.kind != SpanKind.SERVER:
                continue
            self.spans += 1
            attrs = span.attributes or {}
            if a.ENERGY_TOTAL in attrs:
                self.measured += 1
            for key, value in attrs.items():
                if (
                    key.startswith("codecarbon.")
                    and isinstance(value, float)
                    and not (math.isfinite(value) and value >= 0)
                ):
                    self.bad += 1
            for component, key in a.ENERGY.items():
                value = attrs.get(key)
                if isinstance(value, float):
                    self.joules[component] += value
        return SpanExportResult.SUCCESS


def minimal_span_creator(app: Any, tracer_provider: TracerProvider) -> Any:
    """A server span around each request: the SDK's, without contrib's cost."""
    tracer = tracer_provider.get_tracer("soak")

    async def traced(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        with tracer.start_as_current_span(
            f"{scope['method']} {scope['path']}", kind=SpanKind.SERVER
        ):
            await app(scope, receive, send)

    return traced


def rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


class Recorded:
    """A power source that keeps its first and last readings, the truth the
    books are checked against."""

    def __init__(self, source: PowerSource) -> None:
        self.source = source
        self.first: EnergyReading | None = None
        self.last: EnergyReading | None = None

    def read(self) -> EnergyReading:
        reading = self.source.read()
        if self.first is None:
            self.first = reading
        self.last = reading
        return reading

    def describe(self) -> HardwareInfo:
        return self.source.describe()


def sizes(instrumentation: Instrumentation) -> dict[str, int]:
    """Every structure carbonspan keeps, by size."""
    ledger, metrics = instrumentation.ledger, instrumentation.metrics
    return {
        "in_flight": ledger.in_flight,
        "ticks": ledger._ring.j + 1,
        "ring_slots": len(ledger._ring.ring),
        "ring_filled": sum(entry is not None for entry in ledger._ring.ring),
        "open_windows_cpu_time": len(getattr(ledger.policy, "_open", ())),
        "metric_label_sets": len(metrics.queue.attributes),
        "metric_route_sums": len(metrics.queue.route_grams),
        "live_samplers": len(carbonspan_sampler._live),
    }


def threads() -> dict[str, int]:
    by_kind: dict[str, int] = {}
    for t in threading.enumerate():
        kind = "anyio worker" if "AnyIO worker" in t.name else t.name
        by_kind[kind] = by_kind.get(kind, 0) + 1
    return by_kind


class Soak:
    """An app under test, the providers it reports to, and what it served.

    (A plain class, not a dataclass: this module must load by file path too,
    without being in sys.modules.)"""

    def __init__(
        self,
        app: Any,
        served: Any,  # the app, or the minimal span creator around it
        exporter: CountingExporter,
        reader: InMemoryMetricReader,
        tracer_provider: TracerProvider,
        meter_provider: MeterProvider,
        instrumentation: Instrumentation,
        batch: int,
        progress: Callable[[str], None] | None,
    ) -> None:
        self.app, self.served, self.instrumentation = app, served, instrumentation
        self.exporter, self.reader = exporter, reader
        self.tracer_provider, self.meter_provider = tracer_provider, meter_provider
        self.batch, self.progress = batch, progress
        self.statuses: dict[int, int] = {}
        self.marks: dict[str, Any] = {}

    async def serve(self, count: int, offset: int) -> None:
        """`count` requests from the `offset`-th on, `batch` at a time."""
        batch = self.batch
        for start in range(0, count, batch):
            paths = [
                PATHS[(offset + start + k) % len(PATHS)].format(i=offset + start + k)
                for k in range(min(batch, count - start))
            ]
            answers = (timed_request(self.served, p) for p in paths)
            for _, _, status in await asyncio.gather(*answers):
                self.statuses[status] = self.statuses.get(status, 0) + 1
            done = offset + start + len(paths)
            if done % 5000 < batch:
                self.reader.get_metrics_data()  # the observable callbacks run too
                if self.progress is not None and done % 50_000 < batch:
                    self.progress(f"{done} requests, RSS {rss() / MB:.1f} MB")

    async def serve_all(self, requests: int, warmup: int) -> None:
        """The warm-up, then the requests in tenths, marks taken between.
        One event loop throughout, as in a server: its worker threads stay."""
        marks = self.marks
        marks["start_rss"] = rss()
        await self.serve(warmup, 0)
        marks["warm"] = (rss(), threads(), sizes(self.instrumentation))
        marks["rss_points"], marks["ring_points"] = [], []
        began = time.perf_counter()
        step = max(requests // 10, self.batch)
        for offset in range(0, requests, step):
            await self.serve(min(step, requests - offset), warmup + offset)
            marks["rss_points"].append(rss() / MB)
            marks["ring_points"].append(sizes(self.instrumentation)["ring_filled"])
        marks["elapsed"] = time.perf_counter() - began
        marks["end_threads"] = threads()

    def conservation(self) -> dict[str, float]:
        """(attributed + unattributed) / measured, per component."""
        totals = self.instrumentation.ledger.totals()
        source = self.instrumentation.sampler.source
        first, last = source.first, source.last  # type: ignore[attr-defined]
        out: dict[str, float] = {}
        if first is None or last is None:
            return out
        for i, component in enumerate(("cpu", "gpu", "ram")):
            start_j, end_j = getattr(first, component), getattr(last, component)
            if start_j is None or end_j is None or end_j == start_j:
                continue
            got = totals.attributed[i] + totals.unattributed[i]
            out[component] = got / (end_j - start_j)
        return out

    def close(self) -> None:
        CodeCarbonInstrumentor.uninstrument_app(self.app)
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def instrumented(
    source: str,
    span_creator: str,
    framework: str,
    interval: float,
    attribution: str,
    batch: int,
    progress: Callable[[str], None] | None,
) -> Soak:
    """The app with its span creator and carbonspan, the sampler running and
    its first reading taken (hardware detection, in the sampler's thread)."""
    exporter = CountingExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    app = build_app() if framework == "fastapi" else build_starlette_app()
    served: Any = app
    if span_creator == "contrib":
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(
            app, tracer_provider=tracer_provider, meter_provider=meter_provider
        )
    else:
        served = minimal_span_creator(app, tracer_provider)
    # CodeCarbon's hardware, detected in the sampler's thread, or a constant.
    power_source = Recorded(
        ConstantPowerSource(cpu=10.0, ram=2.0)
        if source == "constant"
        else CodeCarbonPowerSource("process")
    )
    CodeCarbonInstrumentor().instrument_app(
        app,
        power_source=power_source,
        meter_provider=meter_provider,
        sample_interval=interval,
        attribution=attribution,
    )
    instrumentation = instrumentation_of(app)
    assert instrumentation is not None
    instrumentation.sampler.start()
    deadline = time.monotonic() + 30
    while instrumentation.ledger.last_time is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return Soak(
        app, served, exporter, reader, tracer_provider, meter_provider, instrumentation,
        batch, progress,
    )  # fmt: skip


def run(
    requests: int = 200_000,
    warmup: int = 20_000,
    *,
    source: str = "codecarbon",
    span_creator: str = "contrib",
    framework: str = "fastapi",
    interval: float = 0.01,
    attribution: str = "time_share",
    batch: int = 8,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Serve `warmup` then `requests` requests; figures before and after."""
    soak = instrumented(
        source, span_creator, framework, interval, attribution, batch, progress
    )
    try:
        asyncio.run(soak.serve_all(requests, warmup))
        soak.instrumentation.sampler.sample()  # a last reading, every request closed
        end_rss, end_sizes = rss(), sizes(soak.instrumentation)
        conservation = soak.conservation()
    finally:
        soak.close()
    marks, exporter = soak.marks, soak.exporter
    warm_rss, warm_threads, warm_sizes = marks["warm"]
    return {
        "requests": requests,
        "warmup": warmup,
        "source": source,
        "span_creator": span_creator,
        "framework": framework,
        "attribution": attribution,
        "sample_interval": interval,
        "seconds": marks["elapsed"],
        "requests_per_s": requests / marks["elapsed"],
        "statuses": soak.statuses,
        "server_spans": exporter.spans,
        "spans_with_energy": exporter.measured,
        "bad_figures": exporter.bad,
        "rss_mb": {
            "start": marks["start_rss"] / MB,
            "after_warmup": warm_rss / MB,
            "end": end_rss / MB,
            "growth_after_warmup": (end_rss - warm_rss) / MB,
            "every_tenth": marks["rss_points"],
        },
        "ring_filled_every_tenth": marks["ring_points"],
        "threads": {"after_warmup": warm_threads, "end": marks["end_threads"]},
        "sizes": {"after_warmup": warm_sizes, "end": end_sizes, "ring": RING},
        "conservation": conservation,
    }


def report(result: dict[str, Any]) -> bool:
    """Print the figures; whether memory stayed flat and every figure is sane."""
    mem, thr, size = result["rss_mb"], result["threads"], result["sizes"]
    print(
        f"requests       {result['requests']} in {result['seconds']:.1f} s "
        f"({result['requests_per_s']:.0f}/s), statuses {result['statuses']}"
    )
    print(
        f"spans          {result['server_spans']} server spans, "
        f"{result['spans_with_energy']} with energy, {result['bad_figures']} bad"
    )
    print(
        f"RSS            start {mem['start']:.1f} MB, after warm-up "
        f"{mem['after_warmup']:.1f} MB, end {mem['end']:.1f} MB: "
        f"{mem['growth_after_warmup']:+.2f} MB after warm-up"
    )
    print("RSS by tenth   " + " ".join(f"{v:.1f}" for v in mem["every_tenth"]))
    print(
        "ring by tenth  "
        + " ".join(str(v) for v in result["ring_filled_every_tenth"])
        + f" of {RING} tick slots filled (each tick adds ~0.31 kB until full)"
    )
    print(
        f"threads        after warm-up {sum(thr['after_warmup'].values())} "
        f"{thr['after_warmup']}"
    )
    print(f"               end {sum(thr['end'].values())} {thr['end']}")
    print(f"carbonspan     after warm-up {size['after_warmup']}")
    print(f"               end {size['end']}")
    print(f"conservation   (attributed + unattributed) / measured: "
          f"{result['conservation']}")  # fmt: skip
    return (
        mem["growth_after_warmup"] < 5.0
        and size["end"]["in_flight"] == 0
        and result["bad_figures"] == 0
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=200_000)
    p.add_argument("--warmup", type=int, default=20_000)
    p.add_argument("--source", choices=["codecarbon", "constant"], default="codecarbon")
    p.add_argument("--span-creator", choices=["contrib", "minimal"], default="contrib")
    p.add_argument("--framework", choices=["fastapi", "starlette"], default="fastapi")
    p.add_argument("--interval", type=float, default=0.01)
    p.add_argument(
        "--attribution", choices=["time_share", "cpu_time"], default="time_share"
    )
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)
    print(
        f"soak: {args.warmup} warm-up + {args.requests} requests, {args.source} "
        f"source, {args.framework} app, {args.span_creator} spans, {args.attribution}, "
        f"sampled every {args.interval} s",
        flush=True,
    )
    result = run(
        args.requests,
        args.warmup,
        source=args.source,
        span_creator=args.span_creator,
        framework=args.framework,
        interval=args.interval,
        attribution=args.attribution,
        progress=lambda line: print("  " + line, flush=True),
    )
    ok = report(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    print("OK" if ok else "NOT OK")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
