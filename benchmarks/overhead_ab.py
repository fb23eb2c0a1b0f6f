"""The in-process A/B comparison of `overhead.py`: requests/s and latency of
FastAPI apps with and without carbonspan, side by side, in one process.

Each variant is the same FastAPI app (`bench_app.build_app`, `GET /ping` and
the CPU-heavy `GET /cpu`):

  a  FastAPIInstrumentor alone (real SDK TracerProvider with a
     SimpleSpanProcessor to an in-memory exporter, real SDK MeterProvider with an
     InMemoryMetricReader);
  b  a + carbonspan, with the real default source (`CodeCarbonPowerSource`,
     sample_interval 0.1 s) and the same MeterProvider;
  c  a + "the obvious design": a pure-ASGI middleware that starts and stops a
     CodeCarbon `OfflineEmissionsTracker` around every request;
  d  a + the synchronous floor: a bare layer that sets 7 attributes and records
     one histogram point, as any synchronous instrumentation must;
  e  b with a plain Resource (all the attributes on each span);
  z  a second copy of a: the run's noise floor.

Method: the VM is noisy (other processes and the host take its CPU at random
moments), so requests are driven straight through the ASGI interface (no
sockets, no HTTP client), one at a time, alternating between the variants (a b,
b a, ...; c every k-th round because it is slow), and the variants are compared
by their MEDIAN per-request latency. requests/s = 1 / median. Wall time
(`perf_counter_ns`) and the request thread's CPU time (`thread_time_ns`, which
leaves out time stolen by the host) are both recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind

import netguard  # noqa: F401  (installs the loopback-only guard on import)
from bench_app import (
    PerRequestTrackerMiddleware,
    build_app,
    tracker_kwargs,
)
from carbonspan import CodeCarbonInstrumentor
from carbonspan.otel.instrumentor import instrumentation_of
from harness import (
    ab_ratios,
    find_thread,
    latency_stats,
    median_us,
    print_variants,
    rotation,
    thread_cpu_s,
    timed_request,
    verdict,
)

if TYPE_CHECKING:
    from carbonspan.otel.instrumentation import Instrumentation
    from carbonspan.types import ASGIApp, Message, Receive, Scope, Send

COUNTRY = "FRA"


@dataclass
class Otel:
    exporter: InMemorySpanExporter = field(default_factory=InMemorySpanExporter)
    reader: InMemoryMetricReader = field(default_factory=InMemoryMetricReader)
    resource: Resource | None = None
    others: list[Otel] = field(default_factory=list)

    def __post_init__(self) -> None:
        resource = self.resource if self.resource is not None else Resource.create()
        self.tracer_provider = TracerProvider(resource=resource)
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def clear(self) -> None:
        """Drop the finished spans, this one's and the others'."""
        self.exporter.clear()
        for extra in self.others:
            extra.exporter.clear()


def detected_resource() -> Resource | None:
    """The Resource with carbonspan's constant attributes, where the detector
    exists (this carbonspan has it); None otherwise."""
    try:
        from carbonspan.resource import CodeCarbonResourceDetector
    except ImportError:
        return None
    detected = CodeCarbonResourceDetector(country_iso_code=COUNTRY).detect()
    return Resource.create().merge(detected)


class SyncFloor:
    """Variant d, the synchronous floor: a bare pure-ASGI layer that sets 7
    float attributes on the server span and records one histogram point with 3
    attributes while the span is current, before the final body, as any
    synchronous instrumentation with this contract must."""

    def __init__(self, app: ASGIApp, meter_provider: MeterProvider) -> None:
        self.app = app
        meter = meter_provider.get_meter("bench.floor")
        self.histogram = meter.create_histogram("bench.floor.energy", unit="J")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        span = trace.get_current_span()
        status = 500

        async def wrapped(message: Message) -> None:
            nonlocal status
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
            elif kind == "http.response.body" and not message.get("more_body"):
                if span.is_recording():
                    span.set_attributes(FLOOR_ATTRIBUTES)
                route = getattr(scope.get("route"), "path", "")
                self.histogram.record(
                    0.001,
                    {
                        "http.route": route,
                        "http.request.method": scope["method"],
                        "http.response.status_code": status,
                    },
                )
            await send(message)

        await self.app(scope, receive, wrapped)


FLOOR_ATTRIBUTES = {
    "codecarbon.energy.total": 0.0012,
    "codecarbon.energy.cpu": 0.0002,
    "codecarbon.energy.ram": 0.001,
    "codecarbon.power.cpu": 2.0,
    "codecarbon.power.ram": 10.0,
    "codecarbon.emissions": 1.9e-8,
    "codecarbon.concurrency": 1.0,
}


def insert_below_span_creator(
    app: FastAPI, layer: Callable[[ASGIApp], ASGIApp]
) -> None:
    """Put `layer` where carbonspan goes: just inside contrib's middleware."""
    original = app.build_middleware_stack

    def build() -> Any:
        stack = original()
        node: Any = stack
        while node is not None:
            if type(node).__name__ == "OpenTelemetryMiddleware":
                node.app = layer(node.app)
                return stack
            node = getattr(node, "app", None)
        raise SystemExit("no OpenTelemetryMiddleware in the stack")

    app.build_middleware_stack = build  # type: ignore[method-assign]


def stack_chain(app: FastAPI) -> str:
    names = []
    node: Any = app.middleware_stack
    while node is not None and len(names) < 12:
        names.append(type(node).__name__)
        node = getattr(node, "app", None)
    return " > ".join(names)


# -- the variants --------------------------------------------------------------


@dataclass
class Variant:
    key: str
    label: str
    app: FastAPI
    wall: dict[str, list[int]] = field(default_factory=dict)
    cpu: dict[str, list[int]] = field(default_factory=dict)
    errors: int = 0


@dataclass
class Bench:
    """The variants in this process, and what they share."""

    loops: int  # the /cpu endpoint's work
    otel: Otel  # a, b, c, d, z; its Resource has carbonspan's constant attributes
    plain: Otel  # e's tracer provider: a plain Resource
    a: Variant
    b: Variant
    c: Variant | None  # the tracker per request, unless left out
    others: list[Variant]  # d, e, z, those asked for
    instrumentation: Instrumentation  # b's
    instrumented_at: float  # perf_counter() when b's instrument_app began
    instrument_s: float  # how long it took
    first_c_s: float | None  # c's first request: CodeCarbon's cold start

    @property
    def fast(self) -> tuple[Variant, ...]:
        """The variants alternated every round: a, b, then d, e, z."""
        return (self.a, self.b, *self.others)

    @property
    def every(self) -> tuple[Variant, ...]:
        return self.fast + ((self.c,) if self.c else ())


def instrumented(loops: int, otel: Otel, tracer: Otel | None = None) -> FastAPI:
    """A fresh app under FastAPIInstrumentor, with `tracer`'s tracer provider
    (default: `otel`'s) and `otel`'s meter provider."""
    app = build_app(loops)
    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=(tracer or otel).tracer_provider,
        meter_provider=otel.meter_provider,
    )
    return app


def with_carbonspan(app: FastAPI, otel: Otel) -> FastAPI:
    CodeCarbonInstrumentor().instrument_app(
        app, country_iso_code=COUNTRY, meter_provider=otel.meter_provider
    )
    return app


async def build(args: argparse.Namespace, loops: int) -> Bench:
    """Every variant asked for. c comes before b: its first request pays
    CodeCarbon's cold hardware detection, before carbonspan's sampler warms
    the same caches. The tracer provider's Resource carries carbonspan's
    constant attributes (the resource detector), so b's spans get only the
    per-request figures; e has a plain Resource, so its spans get all of them."""
    resource = detected_resource()
    otel = Otel(resource=resource)
    plain = Otel(resource=Resource.create())  # its meter provider is not used
    otel.others.append(plain)
    a = Variant("a", "FastAPIInstrumentor", instrumented(loops, otel))
    c, first_c_s = None, None
    if args.obvious_every > 0:
        c, first_c_s = await tracker_per_request(loops, otel)
    app_b = instrumented(loops, otel)
    t0 = time.perf_counter()
    with_carbonspan(app_b, otel)
    instrument_s = time.perf_counter() - t0
    instrumentation = instrumentation_of(app_b)
    assert instrumentation is not None
    label = "+ carbonspan" + (" (resource det.)" if resource is not None else "")
    b = Variant("b", label, app_b)
    others = other_variants(args, loops, otel, plain, resource is not None)
    return Bench(
        loops,
        otel,
        plain,
        a,
        b,
        c,
        others,
        instrumentation,
        t0,
        instrument_s,
        first_c_s,
    )


async def tracker_per_request(loops: int, otel: Otel) -> tuple[Variant, float]:
    """Variant c, and how long its first request took."""
    app_c = build_app(loops)
    app_c.add_middleware(PerRequestTrackerMiddleware, **tracker_kwargs(COUNTRY))
    FastAPIInstrumentor.instrument_app(
        app_c,
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
    )
    wall, _, status = await timed_request(app_c, "/ping")
    if status != 200:
        raise SystemExit(f"c /ping: status {status}")
    return Variant("c", "+ tracker per request", app_c), wall / 1e9


def other_variants(
    args: argparse.Namespace, loops: int, otel: Otel, plain: Otel, detected: bool
) -> list[Variant]:
    """d (the synchronous floor), e (b with a plain Resource), z (a again)."""
    others = []
    if args.floor:
        app_d = instrumented(loops, otel)
        insert_below_span_creator(
            app_d, lambda inner: SyncFloor(inner, otel.meter_provider)
        )
        others.append(Variant("d", "+ synchronous floor", app_d))
    if detected and args.plain_resource:
        app_e = with_carbonspan(instrumented(loops, otel, plain), otel)
        others.append(Variant("e", "+ carbonspan, plain Resource", app_e))
    if args.control:
        others.append(Variant("z", "a again (control)", instrumented(loops, otel)))
    return others


async def wait_for_sampler(bench: Bench) -> None:
    """The sampler may start at the first request (or lifespan startup) rather
    than at instrument time: send one, make sure it runs, then wait for the
    hardware detection and a few readings."""
    instrumentation, t0 = bench.instrumentation, bench.instrumented_at
    await timed_request(bench.b.app, "/ping")
    if not instrumentation.sampler.running:
        instrumentation.sampler.start()
    while not instrumentation.sampler.info.measurement or not any(
        instrumentation.ledger.totals().known
    ):
        if time.perf_counter() - t0 > 60:
            raise SystemExit("the carbonspan sampler produced no reading in 60 s")
        await asyncio.sleep(0.05)
    ready_s = time.perf_counter() - t0
    await asyncio.sleep(3 * instrumentation.sampler.interval)
    info = instrumentation.sampler.info
    print(
        f"  carbonspan: instrument_app {bench.instrument_s * 1000:.1f} ms, sampler "
        f"ready after {ready_s:.2f} s; measurement {info.measurement}, "
        f"cpu model {info.cpu_model!r}"
    )
    if bench.first_c_s is not None:
        print(
            f"  c: first request (first tracker in the process) {bench.first_c_s:.2f} s"
        )


async def warm_up(bench: Bench, warmup: int, cpu_ms: float) -> None:
    """`warmup` requests per variant and path (c: a twentieth); this also
    builds the middleware stacks."""
    for path in ("/ping", "/cpu"):
        for v in bench.every:
            n = warmup if v is not bench.c else max(3, warmup // 20)
            for _ in range(n):
                _, _, status = await timed_request(v.app, path)
                if status != 200:
                    raise SystemExit(f"{v.key} {path}: status {status}")
    print(f"  /cpu endpoint: {bench.loops} loops (target {cpu_ms} ms of CPU)")
    print(f"  b stack: {stack_chain(bench.b.app)}")


async def sanity(bench: Bench) -> None:
    """Print what the server spans of b, c and the others carry."""
    bench.otel.exporter.clear()
    await timed_request(bench.b.app, "/ping")
    if bench.c is not None:
        await timed_request(bench.c.app, "/ping")
    bench.plain.exporter.clear()
    for v in bench.others:
        await timed_request(v.app, "/ping")
    servers = [
        s
        for o in (bench.otel, *bench.otel.others)
        for s in o.exporter.get_finished_spans()
        if s.kind == SpanKind.SERVER
    ]
    energy = [dict(s.attributes or {}).get("codecarbon.energy.total") for s in servers]
    counts = [len(s.attributes or {}) for s in servers]
    print(
        f"  sanity: server spans' codecarbon.energy.total (b, c, others): {energy};"
        f" attributes per span {counts}"
    )
    bench.otel.clear()


# -- the comparison ------------------------------------------------------------


async def run_endpoint(bench: Bench, path: str, rounds: int, every: int) -> None:
    """Alternate single requests: a, b and the others in a rotating order
    (every variant goes first equally often), c first in every k-th round."""
    for v in bench.every:
        v.wall[path], v.cpu[path] = [], []
    for r in range(rounds):
        for v in rotation(r, bench.fast, bench.c, every):
            wall, cpu, status = await timed_request(v.app, path)
            if status != 200:
                v.errors += 1
            v.wall[path].append(wall)
            v.cpu[path].append(cpu)
        if r % 256 == 0:
            bench.otel.clear()


def summarize(bench: Bench, path: str) -> dict[str, Any]:
    """Each variant's figures on `path`; b against a, the others against a and
    b, c against b."""
    a, b = bench.a, bench.b
    out: dict[str, Any] = {"path": path, "variants": {}}
    for v in bench.every:
        stats = latency_stats(v.wall[path])
        stats["cpu_median_us"] = median_us(v.cpu[path])
        out["variants"][v.key] = {"label": v.label, **stats}
    va, vb = out["variants"]["a"], out["variants"]["b"]
    out.update(ab_ratios(a.wall[path], b.wall[path]))
    out["b_over_a_cpu"] = va["cpu_median_us"] / vb["cpu_median_us"]
    out["added_cpu_us"] = vb["cpu_median_us"] - va["cpu_median_us"]
    out["over_a"] = {}
    for v in bench.others:
        vv = out["variants"][v.key]
        out["over_a"][v.key] = {
            "req_s": va["median_us"] / vv["median_us"],
            "cpu": va["cpu_median_us"] / vv["cpu_median_us"],
            "added_us": vv["median_us"] - va["median_us"],
            "added_cpu_us": vv["cpu_median_us"] - va["cpu_median_us"],
            "b_over_this": vv["median_us"] / vb["median_us"],
        }
    if bench.c is not None:
        out["b_over_c"] = out["variants"]["c"]["median_us"] / vb["median_us"]
    return out


COLUMNS = (
    ("median µs", "median_us", 11, ".1f"),
    ("cpu µs", "cpu_median_us", 9, ".1f"),
    ("p10 µs", "p10_us", 9, ".1f"),
    ("p90 µs", "p90_us", 9, ".1f"),
    ("req/s", "requests_per_s", 9, ".0f"),
)


def print_endpoint(s: dict[str, Any]) -> None:
    print()
    print(f"== GET {s['path']}")
    print_variants(s["variants"], COLUMNS)
    h1, h2 = s["b_over_a_halves"]
    print(
        f"  b/a req/s: {s['b_over_a']:.4f}  ({verdict(s['b_over_a'])} goal >= 0.97; "
        f"by CPU time {s['b_over_a_cpu']:.4f}; halves {h1:.4f} / {h2:.4f}; "
        f"paired median {s['b_over_a_paired_median']:.4f})"
    )
    for key, o in s.get("over_a", {}).items():
        print(
            f"  {key}/a req/s: {o['req_s']:.4f} (by CPU time {o['cpu']:.4f}; "
            f"added {o['added_us']:+.1f} µs wall, {o['added_cpu_us']:+.1f} µs CPU);"
            f" b/{key}: {o['b_over_this']:.4f}"
        )
    if "b_over_c" in s:
        print(f"  b/c req/s: {s['b_over_c']:.1f}x")
    paired = s["added_us_paired_median"]
    print(
        f"  added per request (b - a): {s['added_us']:+.1f} µs wall, "
        f"{s['added_cpu_us']:+.1f} µs CPU (paired median {paired:+.1f} µs)"
    )


#: Requests per block in the total-CPU phase.
BLOCK = 50


async def total_cpu(bench: Bench, path: str, blocks: int) -> dict[str, float]:
    """The process's CPU per request, every thread included, by variant (µs).

    Blocks of BLOCK requests back to back, the variants rotating block by
    block; a carbonspan variant's queued metric points are drained inside
    its own block, so the work it defers to the sampler thread is counted
    where it belongs. The sampler thread's own ticks fall in every variant's
    blocks alike (they are reported apart). Medians over the blocks.
    """
    drains = {}
    for v in bench.fast:
        instrumentation = instrumentation_of(v.app)
        if instrumentation is not None:
            drains[v.key] = instrumentation.metrics.drain
    per: dict[str, list[float]] = {v.key: [] for v in bench.fast}
    clock = time.process_time_ns
    for r in range(blocks):
        for v in rotation(r, bench.fast):
            drain = drains.get(v.key)
            if drain is not None:
                drain()  # what other blocks left queued is not this block's
            t0 = clock()
            for _ in range(BLOCK):
                await timed_request(v.app, path)
            if drain is not None:
                drain()
            per[v.key].append((clock() - t0) / BLOCK / 1000.0)
        if r % 4 == 0:
            bench.otel.clear()
    return {key: statistics.median(values) for key, values in per.items()}


def print_total_cpu(path: str, totals: dict[str, float]) -> None:
    print()
    print(f"== total CPU per request, every thread, GET {path} (µs; blocks of {BLOCK})")
    a = totals["a"]
    rows = (f"{k} {v:.1f} ({v - a:+.1f} over a)" for k, v in totals.items())
    print("  " + ", ".join(rows))
    if "d" in totals:
        d, b = totals["d"], totals["b"]
        print(
            f"  b against the floor d: {b - d:+.1f} µs; d/b by total CPU "
            f"{d / b:.4f} (goal >= 1.0: b costs no more than d)"
        )


async def compare(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    """Both endpoints, variants alternating, with the garbage collector's
    survivors frozen (the caller unfreezes); the figures are printed. Also the
    live sampler thread's share of a core over the run, apart: it runs during
    every variant, so b/a leaves it out."""
    gc.collect()
    gc.freeze()
    thread = find_thread("carbonspan-sampler")
    thread_cpu0, wall0 = thread_cpu_s(thread), time.perf_counter()
    endpoints = []
    for path, rounds in (("/ping", args.requests), ("/cpu", args.cpu_requests)):
        t = time.perf_counter()
        await run_endpoint(bench, path, rounds, args.obvious_every)
        s = summarize(bench, path)
        s["seconds"] = time.perf_counter() - t
        endpoints.append(s)
    thread_cpu1, wall1 = thread_cpu_s(thread), time.perf_counter()
    live = None
    if thread_cpu0 is not None and thread_cpu1 is not None:
        live = (thread_cpu1 - thread_cpu0) / (wall1 - wall0) * 100.0
    for s in endpoints:
        print_endpoint(s)
    if args.total_blocks > 0:
        totals = await total_cpu(bench, "/ping", args.total_blocks)
        print_total_cpu("/ping", totals)
        endpoints[0]["total_cpu_us"] = totals
    errors = {v.key: v.errors for v in bench.every}
    if any(errors.values()):
        print(f"  non-200 responses: {errors}")
    return {"endpoints": endpoints, "live": live, "live_wall_s": wall1 - wall0}


def with_sampler(endpoints: list[dict[str, Any]], core_percent: float) -> None:
    """b/a with the sampler thread's share of the core taken off b."""
    for s in endpoints:
        s["b_over_a_with_sampler"] = s["b_over_a"] * (1.0 - core_percent / 100.0)
    print(
        "  b/a with the sampler's share of the core taken off: "
        + ", ".join(f"{s['path']} {s['b_over_a_with_sampler']:.4f}" for s in endpoints)
    )


def stop_carbonspan(bench: Bench) -> None:
    """Stop the live samplers (b's, e's)."""
    for v in bench.every:
        if instrumentation_of(v.app) is not None:
            CodeCarbonInstrumentor.uninstrument_app(v.app)


def shutdown(bench: Bench) -> None:
    bench.otel.tracer_provider.shutdown()
    bench.plain.tracer_provider.shutdown()
    bench.plain.meter_provider.shutdown()
    bench.otel.meter_provider.shutdown()
