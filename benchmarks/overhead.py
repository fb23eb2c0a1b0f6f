"""Per-request overhead of carbonspan, against FastAPIInstrumentor alone and against
a CodeCarbon tracker per request.

Run from the repository root:

    .venv/bin/python benchmarks/overhead.py              # both modes, about 4-5 min
    .venv/bin/python benchmarks/overhead.py --quick      # both modes, about 35 s
    .venv/bin/python benchmarks/overhead.py --in-process # in-process mode only
    .venv/bin/python benchmarks/overhead.py --http       # HTTP mode only
    .venv/bin/python benchmarks/overhead.py --json out.json

Two modes, in-process first, then HTTP (`http_overhead.py`, which serves the
same app, `bench_app.py`, with three real uvicorn servers on 127.0.0.1 and
compares them the same way over keep-alive connections).

In-process mode: three FastAPI apps live in this one process, each with
`GET /ping` (returns a small dict) and `GET /cpu` (an `async def` that does a
fixed amount of Python work, a few ms of CPU):

  a  FastAPIInstrumentor alone (real SDK TracerProvider with a
     SimpleSpanProcessor to an in-memory exporter, real SDK MeterProvider with an
     InMemoryMetricReader);
  b  a + carbonspan, with the real default source (`CodeCarbonPowerSource`,
     sample_interval 0.1 s) and the same MeterProvider;
  c  a + "the obvious design": a pure-ASGI middleware that starts and stops a
     CodeCarbon `OfflineEmissionsTracker` around every request.

Method (the VM is noisy, see DESIGN.md "Performance budget"): requests are
driven straight through the ASGI interface (no sockets, no HTTP client), one at
a time, alternating between the variants (a b, b a, ...; c every k-th round
because it is slow), and the variants are compared by their MEDIAN per-request
latency. requests/s = 1 / median. Wall time (`perf_counter_ns`) and the request
thread's CPU time (`thread_time_ns`, which leaves out time stolen by the host)
are both recorded.

Where b's added time goes: `CodeCarbonMiddleware` around a trivial ASGI app,
inside a recording SDK server span, with the span attributes and/or the
histogram record switched off (on runtimes built for the purpose; src/ is not
touched), all rows alternating. Then each piece timed alone in a tight loop,
which understates its cost on the real request path (warm caches), so read those
as a lower bound and the alternating rows as the real figures.

The sampler thread runs during all variants (one process), so its cost does not
show up in b/a; it is measured separately (its thread's CPU clock over the run,
and timed `Sampler.sample()` calls) and folded in as a separate figure.

The script sends nothing over the network: outbound connections and name
lookups for anything but loopback are refused and counted (the count is printed;
it should be 0).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import inspect
import json
import logging
import os
import platform
import signal
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from importlib import metadata
from types import SimpleNamespace
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

COUNTRY = "FRA"


# -- no network, before CodeCarbon is imported -----------------------------------

from netguard import NETWORK  # noqa: E402

NETWORK.install()
# CodeCarbon and friends are imported only after the guard is in place.
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=FutureWarning)

from fastapi import FastAPI  # noqa: E402
from opentelemetry import trace  # noqa: E402
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor  # noqa: E402
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from opentelemetry.sdk.resources import Resource  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind  # noqa: E402

import http_overhead  # noqa: E402
import machine  # noqa: E402
from bench_app import (  # noqa: E402
    PerRequestTrackerMiddleware,
    build_app,
    calibrate_spin,
    tracker_kwargs,
)
from carbonspan import CodeCarbonInstrumentor, CodeCarbonMiddleware  # noqa: E402
from carbonspan.config import Settings  # noqa: E402
from carbonspan.ledger import Ledger  # noqa: E402
from carbonspan.runtime import Runtime  # noqa: E402
from carbonspan.sampler import Sampler  # noqa: E402
from carbonspan.source import CodeCarbonPowerSource, EnergyReading  # noqa: E402


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


@dataclass
class Variant:
    key: str
    label: str
    app: FastAPI
    wall: dict[str, list[int]] = field(default_factory=dict)
    cpu: dict[str, list[int]] = field(default_factory=dict)
    errors: int = 0


def make_scope(path: str) -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"bench")],
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
    }


async def call(app: ASGIApp, path: str) -> tuple[int, int, int]:
    """One request straight through ASGI: (wall ns, request-thread CPU ns, status)."""
    scope = make_scope(path)
    received = False
    status = 0

    async def receive() -> Message:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.disconnect"}  # never block: the run must end

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    perf, cpu = time.perf_counter_ns, time.thread_time_ns
    w0, c0 = perf(), cpu()
    await app(scope, receive, send)
    c1, w1 = cpu(), perf()
    return w1 - w0, c1 - c0, status


def stack_chain(app: FastAPI) -> str:
    names = []
    node: Any = app.middleware_stack
    while node is not None and len(names) < 12:
        names.append(type(node).__name__)
        node = getattr(node, "app", None)
    return " > ".join(names)


# -- statistics ----------------------------------------------------------------


def median_us(values: list[int]) -> float:
    return statistics.median(values) / 1000.0 if values else float("nan")


def pct_us(values: list[int], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000.0


def per_call_ns(fn: Callable[[], Any], number: int, repeat: int = 7) -> float:
    """Median over `repeat` batches of the mean ns per call in a batch."""
    results = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        for _ in range(number):
            fn()
        results.append((time.perf_counter_ns() - t0) / number)
    return statistics.median(results)


# -- the benchmark -------------------------------------------------------------


async def run_endpoint(
    path: str,
    a: Variant,
    b: Variant,
    c: Variant | None,
    rounds: int,
    every: int,
    otel: Otel,
    others: tuple[Variant, ...] = (),
) -> None:
    """Alternate single requests: a, b and the `others` in a rotating order
    (every variant goes first equally often), c first in every k-th round."""
    fast = (a, b, *others)
    for v in fast + ((c,) if c else ()):
        v.wall[path], v.cpu[path] = [], []
    n = len(fast)
    for r in range(rounds):
        k = r % n
        order: tuple[Variant, ...] = fast[k:] + fast[:k]
        if r % 2:
            order = order[::-1]
        if c is not None and r % every == 0:
            order = (c, *order)
        for v in order:
            wall, cpu, status = await call(v.app, path)
            if status != 200:
                v.errors += 1
            v.wall[path].append(wall)
            v.cpu[path].append(cpu)
        if r % 256 == 0:
            otel.exporter.clear()
            for extra in otel.others:
                extra.exporter.clear()


def summarize(
    path: str,
    a: Variant,
    b: Variant,
    c: Variant | None,
    others: tuple[Variant, ...] = (),
) -> dict[str, Any]:
    out: dict[str, Any] = {"path": path, "variants": {}}
    for v in (a, b, *others) + ((c,) if c else ()):
        wall, cpu = v.wall[path], v.cpu[path]
        med = median_us(wall)
        out["variants"][v.key] = {
            "label": v.label,
            "n": len(wall),
            "median_us": med,
            "cpu_median_us": median_us(cpu),
            "p10_us": pct_us(wall, 0.10),
            "p90_us": pct_us(wall, 0.90),
            "requests_per_s": 1e6 / med,
        }
    va, vb = out["variants"]["a"], out["variants"]["b"]
    aw, bw = a.wall[path], b.wall[path]
    half = len(aw) // 2
    paired = [x / y for x, y in zip(aw, bw, strict=True)]  # per-round rps ratio
    out["b_over_a"] = va["median_us"] / vb["median_us"]
    out["b_over_a_cpu"] = va["cpu_median_us"] / vb["cpu_median_us"]
    out["b_over_a_halves"] = [
        statistics.median(aw[:half]) / statistics.median(bw[:half]),
        statistics.median(aw[half:]) / statistics.median(bw[half:]),
    ]
    out["b_over_a_paired_median"] = statistics.median(paired)
    out["added_us"] = vb["median_us"] - va["median_us"]
    out["added_cpu_us"] = vb["cpu_median_us"] - va["cpu_median_us"]
    out["added_us_paired_median"] = (
        statistics.median([y - x for x, y in zip(aw, bw, strict=True)]) / 1000.0
    )
    out["over_a"] = {}
    for v in others:
        vv = out["variants"][v.key]
        out["over_a"][v.key] = {
            "req_s": va["median_us"] / vv["median_us"],
            "cpu": va["cpu_median_us"] / vv["cpu_median_us"],
            "added_us": vv["median_us"] - va["median_us"],
            "added_cpu_us": vv["cpu_median_us"] - va["cpu_median_us"],
            "b_over_this": vv["median_us"] / vb["median_us"],
        }
    if c is not None:
        out["b_over_c"] = out["variants"]["c"]["median_us"] / vb["median_us"]
    return out


def print_endpoint(s: dict[str, Any]) -> None:
    print()
    print(f"== GET {s['path']}")
    header = (
        f"  {'variant':<34}{'n':>7}{'median µs':>11}{'cpu µs':>9}"
        f"{'p10 µs':>9}{'p90 µs':>9}{'req/s':>9}"
    )
    print(header)
    for key, v in s["variants"].items():
        print(
            f"  {key + '  ' + v['label']:<34}{v['n']:>7}{v['median_us']:>11.1f}"
            f"{v['cpu_median_us']:>9.1f}{v['p10_us']:>9.1f}{v['p90_us']:>9.1f}"
            f"{v['requests_per_s']:>9.0f}"
        )
    h1, h2 = s["b_over_a_halves"]
    verdict = "meets" if s["b_over_a"] >= 0.97 else "MISSES"
    print(
        f"  b/a req/s: {s['b_over_a']:.4f}  ({verdict} goal >= 0.97; "
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


def thread_cpu_s(thread: threading.Thread) -> float | None:
    try:
        assert thread.ident is not None
        clock = time.pthread_getcpuclockid(thread.ident)
        return time.clock_gettime(clock)
    except (AttributeError, AssertionError, OSError):
        return None


def sampler_thread() -> threading.Thread | None:
    for t in threading.enumerate():
        if t.name == "carbonspan-sampler":
            return t
    return None


class PassThrough:
    """An ASGI layer with a send wrapper and nothing else: the floor for any
    middleware of this shape."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def wrapped(message: Message) -> None:
            await send(message)

        await self.app(scope, receive, wrapped)


def ablated_runtime(
    *, attributes: bool, metrics: bool
) -> tuple[Runtime, MeterProvider] | None:
    """A runtime on the shared default sampler, with its own MeterProvider, and
    the span attributes and/or the histogram record switched off."""
    provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    runtime = Runtime(
        Settings.load({"country_iso_code": COUNTRY, "meter_provider": provider})
    )
    try:
        if not attributes:
            runtime.span_attributes = lambda *args: None  # type: ignore[method-assign]
        if not metrics:
            runtime.metrics.record = lambda *args, **kwargs: None  # type: ignore[method-assign]
    except AttributeError:  # the internals moved: skip the breakdown
        runtime.close()
        return None
    return runtime, provider


async def middleware_breakdown(otel: Otel, n: int) -> dict[str, dict[str, float]]:
    """CodeCarbonMiddleware around a trivial ASGI app, inside a recording SDK
    server span with `scope["route"]` set, against the app alone, with parts of
    the request path switched off; all variants alternate, medians compared."""

    async def trivial(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    apps: dict[str, ASGIApp] = {
        "bare trivial app": trivial,
        "+ pass-through ASGI layer": PassThrough(trivial),
    }
    owned: list[tuple[Runtime, MeterProvider]] = []
    for label, attributes, metrics in (
        ("+ carbonspan, no attrs, no metrics", False, False),
        ("+ carbonspan, no span attributes", False, True),
        ("+ carbonspan, no histogram record", True, False),
        ("+ carbonspan (all)", True, True),
    ):
        made = ablated_runtime(attributes=attributes, metrics=metrics)
        if made is None:
            continue
        owned.append(made)
        apps[label] = CodeCarbonMiddleware(trivial, runtime=made[0])
    tracer = otel.tracer_provider.get_tracer("bench")
    tracers = dict.fromkeys(apps, tracer)
    if otel.others and "+ carbonspan (all)" in apps:
        label = "+ carbonspan (all), plain Resource"
        apps[label] = apps["+ carbonspan (all)"]
        tracers[label] = otel.others[0].tracer_provider.get_tracer("bench")
    floor_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    apps["+ synchronous floor (d)"] = SyncFloor(trivial, floor_provider)
    tracers["+ synchronous floor (d)"] = tracer

    route = SimpleNamespace(path="/ping")

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        return None

    names = list(apps)
    walls: dict[str, list[int]] = {name: [] for name in names}
    cpus: dict[str, list[int]] = {name: [] for name in names}
    perf, cpu = time.perf_counter_ns, time.thread_time_ns
    for i in range(n):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            app = apps[name]
            scope = make_scope("/ping")
            scope["route"] = route
            span = tracers[name].start_span("GET /ping", kind=SpanKind.SERVER)
            with trace.use_span(span, end_on_exit=False):
                w0, c0 = perf(), cpu()
                await app(scope, receive, send)
                c1, w1 = cpu(), perf()
            span.end()
            walls[name].append(w1 - w0)
            cpus[name].append(c1 - c0)
        if i % 256 == 0:
            otel.exporter.clear()
            for extra in otel.others:
                extra.exporter.clear()
    floor_provider.shutdown()
    for runtime, provider in owned:
        runtime.close()
        provider.shutdown()
    base_wall = median_us(walls[names[0]])
    base_cpu = median_us(cpus[names[0]])
    return {
        name: {
            "median_us": median_us(walls[name]),
            "cpu_median_us": median_us(cpus[name]),
            "added_us": median_us(walls[name]) - base_wall,
            "added_cpu_us": median_us(cpus[name]) - base_cpu,
        }
        for name in names
    }


def split_breakdown(mw: dict[str, dict[str, float]]) -> dict[str, float] | None:
    """Where carbonspan's added CPU goes, from the alternating ablation rows:
    span attributes = all - (no span attributes); histogram = all - (no
    histogram record); the rest = (no attrs, no metrics) over the bare app."""
    try:
        full = mw["+ carbonspan (all)"]["added_cpu_us"]
        no_attrs = mw["+ carbonspan, no span attributes"]["added_cpu_us"]
        no_hist = mw["+ carbonspan, no histogram record"]["added_cpu_us"]
        rest = mw["+ carbonspan, no attrs, no metrics"]["added_cpu_us"]
    except KeyError:
        return None
    split = {
        "span_attributes_us": full - no_attrs,
        "histogram_record_us": full - no_hist,
        "rest_us": rest,
    }
    split["sum_us"] = sum(split.values())
    return split


def component_costs(runtime: Runtime, otel: Otel, number: int) -> dict[str, float]:
    """Pieces of the request path, each timed alone (ns per call)."""
    out: dict[str, float] = {}
    ledger = Ledger()
    t = time.monotonic()
    ledger.tick(EnergyReading(t - 0.2, cpu=0.0, ram=0.0))
    ledger.tick(EnergyReading(t - 0.1, cpu=0.8, ram=2.0))

    def open_close() -> None:
        now = time.monotonic()
        ledger.close(ledger.open(now), now + 1e-4)

    out["Ledger.open+close"] = per_call_ns(open_close, number)
    out["time.monotonic()"] = per_call_ns(time.monotonic, number)
    window = ledger.open(time.monotonic())
    measurement = ledger.close(window, time.monotonic() + 1e-3)
    out["trace.get_current_span()"] = per_call_ns(trace.get_current_span, number)
    span_attributes = runtime.span_attributes
    takes_span = "span" in inspect.signature(span_attributes).parameters
    tracer = otel.tracer_provider.get_tracer("bench")
    plain_tracer = (otel.others[0] if otel.others else otel).tracer_provider.get_tracer(
        "bench"
    )
    span = tracer.start_span("x")
    plain_span = plain_tracer.start_span("x")
    if takes_span:
        out["Runtime.span_attributes(), resource detected"] = per_call_ns(
            lambda: span_attributes(measurement, span), number
        )
        out["Runtime.span_attributes(), plain Resource"] = per_call_ns(
            lambda: span_attributes(measurement, plain_span), number
        )
        attrs = span_attributes(measurement, span) or {}
        full = span_attributes(measurement, plain_span) or {}
    else:
        out["Runtime.span_attributes()"] = per_call_ns(
            lambda: span_attributes(measurement), number
        )
        attrs = full = span_attributes(measurement) or {}
    out["attribute count, resource detected"] = float(len(attrs))
    out["attribute count, plain Resource"] = float(len(full))
    out["span.set_attributes(those), resource detected"] = per_call_ns(
        lambda: span.set_attributes(attrs), number // 4
    )
    out["span.set_attributes(those), plain Resource"] = per_call_ns(
        lambda: plain_span.set_attributes(full), number // 4
    )
    # What each constant attribute adds to the call, one at a time.
    if len(full) > len(attrs):
        base = per_call_ns(lambda: plain_span.set_attributes(attrs), number // 8)
        for key in sorted(set(full) - set(attrs)):
            more = {**attrs, key: full[key]}
            out[f"  + {key}"] = (
                per_call_ns(
                    lambda more=more: plain_span.set_attributes(more), number // 8
                )
                - base
            )
    span.end()
    plain_span.end()
    metrics = runtime.metrics
    record = metrics.record
    params = list(inspect.signature(record).parameters)
    live = tracer.start_span("x")
    if "span" in params:  # the request path only queues: time queue + drain
        # The first argument and the factors follow the installed signature.
        factors = getattr(getattr(runtime, "books", None), "factors", None)
        record_args: tuple[Any, ...] = (
            measurement if "measurement" in params else measurement.total,
            "/ping",
            "GET",
            200,
            factors if "factors" in params else runtime.intensity,
            live,
        )
        after_tick = runtime.sampler.after_tick
        held = list(after_tick)
        after_tick.clear()  # the live sampler must not drain meanwhile
        try:
            metrics.drain()
            out["Metrics.record() (queue only)"] = per_call_ns(
                lambda: record(*record_args), number // 4, repeat=1
            )
            metrics.drain()
            batch = 200
            drains: list[float] = []
            for _ in range(15):
                for _ in range(batch):
                    record(*record_args)
                c0 = time.thread_time_ns()
                metrics.drain()
                drains.append((time.thread_time_ns() - c0) / batch)
            out["Metrics.drain(), per point (batches of 200)"] = statistics.median(
                drains
            )
        finally:
            after_tick.extend(held)
    else:
        legacy: tuple[Any, ...] = (measurement, "/ping", "GET", 200)
        if "intensity" in params:
            legacy += (runtime.intensity,)
        out["Metrics.record() (1 histogram)"] = per_call_ns(
            lambda: record(*legacy), number // 4
        )
        with trace.use_span(live, end_on_exit=False):
            out["Metrics.record(), recording span current"] = per_call_ns(
                lambda: record(*legacy), number // 4
            )
    live.end()
    # The SDK call itself, as the synchronous floor makes it on the request path.
    histogram = otel.meter_provider.get_meter("bench.floor").create_histogram(
        "bench.floor.energy", unit="J"
    )
    point_attrs = {
        "http.route": "/ping",
        "http.request.method": "GET",
        "http.response.status_code": 200,
    }
    current = tracer.start_span("x")
    with trace.use_span(current, end_on_exit=True):
        out["Histogram.record(), recording span current"] = per_call_ns(
            lambda: histogram.record(0.001, point_attrs), number // 4
        )
    return out


def sampler_cost(samples: int, interval: float) -> dict[str, float]:
    """CPU time of `Sampler.sample()` (source.read() + ledger.tick()) on a fresh
    sampler over a fresh CodeCarbonPowerSource, called every 10 ms."""
    sampler = Sampler(CodeCarbonPowerSource(), interval)
    t0 = time.perf_counter()
    sampler.sample()  # hardware detection
    detect_s = time.perf_counter() - t0
    sampler.sample()
    cpu_ns: list[int] = []
    wall_ns: list[int] = []
    for _ in range(samples):
        time.sleep(0.01)
        c0, w0 = time.thread_time_ns(), time.perf_counter_ns()
        sampler.sample()
        cpu_ns.append(time.thread_time_ns() - c0)
        wall_ns.append(time.perf_counter_ns() - w0)
    mean_cpu = statistics.fmean(cpu_ns) / 1000.0
    return {
        "detect_s": detect_s,
        "sample_cpu_median_us": median_us(cpu_ns),
        "sample_cpu_mean_us": mean_cpu,
        "sample_wall_median_us": median_us(wall_ns),
        "core_percent_at_interval": mean_cpu / 1e6 / interval * 100.0,
    }


def source_revision() -> str:
    """The git commit of the carbonspan being measured, `+dirty` if edited."""
    import subprocess

    import carbonspan

    where = os.path.dirname(os.path.abspath(carbonspan.__file__))
    try:
        rev = subprocess.run(
            ["git", "-C", where, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", where, "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"? ({where})"
    return f"{rev}{'+dirty' if dirty else ''} ({where})"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in (
        "carbonspan",
        "codecarbon",
        "fastapi",
        "starlette",
        "opentelemetry-sdk",
        "opentelemetry-instrumentation-fastapi",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "?"
    return out


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    began = time.perf_counter()
    print()
    print("carbonspan overhead in process (direct ASGI calls)")
    loops = calibrate_spin(args.cpu_ms)
    # The tracer provider's Resource carries carbonspan's constant attributes
    # (the resource detector), so b's spans get only the per-request figures;
    # e has a plain Resource, so its spans get all of them.
    resource = detected_resource()
    otel = Otel(resource=resource)
    plain = Otel(resource=Resource.create())  # its meter provider is not used
    otel.others.append(plain)

    app_a = build_app(loops)
    FastAPIInstrumentor.instrument_app(
        app_a,
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
    )
    c: Variant | None = None
    first_c_s: float | None = None
    if args.obvious_every > 0:
        app_c = build_app(loops)
        app_c.add_middleware(PerRequestTrackerMiddleware, **tracker_kwargs(COUNTRY))
        FastAPIInstrumentor.instrument_app(
            app_c,
            tracer_provider=otel.tracer_provider,
            meter_provider=otel.meter_provider,
        )
        c = Variant("c", "+ tracker per request", app_c)
        # Its first request pays CodeCarbon's cold hardware detection; do it
        # before carbonspan's sampler warms the same caches.
        wall, _, status = await call(app_c, "/ping")
        first_c_s = wall / 1e9
        if status != 200:
            raise SystemExit(f"c /ping: status {status}")

    app_b = build_app(loops)
    FastAPIInstrumentor.instrument_app(
        app_b,
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
    )
    t0 = time.perf_counter()
    CodeCarbonInstrumentor().instrument_app(
        app_b, country_iso_code=COUNTRY, meter_provider=otel.meter_provider
    )
    instrument_s = time.perf_counter() - t0
    runtime: Runtime = app_b._carbonspan_runtime  # type: ignore[attr-defined]
    a = Variant("a", "FastAPIInstrumentor", app_a)
    b = Variant(
        "b",
        "+ carbonspan" + (" (resource det.)" if resource is not None else ""),
        app_b,
    )
    others: list[Variant] = []
    if args.floor:
        app_d = build_app(loops)
        FastAPIInstrumentor.instrument_app(
            app_d,
            tracer_provider=otel.tracer_provider,
            meter_provider=otel.meter_provider,
        )
        insert_below_span_creator(
            app_d, lambda inner: SyncFloor(inner, otel.meter_provider)
        )
        others.append(Variant("d", "+ synchronous floor", app_d))
    if resource is not None and args.plain_resource:
        app_e = build_app(loops)
        FastAPIInstrumentor.instrument_app(
            app_e,
            tracer_provider=plain.tracer_provider,
            meter_provider=otel.meter_provider,
        )
        CodeCarbonInstrumentor().instrument_app(
            app_e, country_iso_code=COUNTRY, meter_provider=otel.meter_provider
        )
        others.append(Variant("e", "+ carbonspan, plain Resource", app_e))
    if args.control:
        app_z = build_app(loops)
        FastAPIInstrumentor.instrument_app(
            app_z,
            tracer_provider=otel.tracer_provider,
            meter_provider=otel.meter_provider,
        )
        others.append(Variant("z", "a again (control)", app_z))

    # The sampler may start at the first request (or lifespan startup) rather
    # than at instrument time: send one, make sure it runs, then wait for the
    # hardware detection and a few readings.
    await call(app_b, "/ping")
    if not runtime.sampler.running:
        runtime.sampler.start()
    while not runtime.sampler.info.measurement or not any(
        runtime.ledger.totals().known
    ):
        if time.perf_counter() - t0 > 60:
            raise SystemExit("the carbonspan sampler produced no reading in 60 s")
        await asyncio.sleep(0.05)
    ready_s = time.perf_counter() - t0
    await asyncio.sleep(3 * runtime.sampler.interval)
    info = runtime.sampler.info
    print(
        f"  carbonspan: instrument_app {instrument_s * 1000:.1f} ms, sampler ready "
        f"after {ready_s:.2f} s; measurement {info.measurement}, "
        f"cpu model {info.cpu_model!r}"
    )
    if first_c_s is not None:
        print(f"  c: first request (first tracker in the process) {first_c_s:.2f} s")

    # Warm-up (also builds the middleware stacks).
    for path in ("/ping", "/cpu"):
        for v in (a, b, *others) + ((c,) if c else ()):
            n = args.warmup if v is not c else max(3, args.warmup // 20)
            for _ in range(n):
                _, _, status = await call(v.app, path)
                if status != 200:
                    raise SystemExit(f"{v.key} {path}: status {status}")
    print(f"  /cpu endpoint: {loops} loops (target {args.cpu_ms} ms of CPU)")
    print(f"  b stack: {stack_chain(app_b)}")

    # Sanity: spans carry what each variant sets.
    otel.exporter.clear()
    await call(app_b, "/ping")
    if c is not None:
        await call(c.app, "/ping")
    plain.exporter.clear()
    for v in others:
        await call(v.app, "/ping")
    servers = [
        s
        for o in (otel, *otel.others)
        for s in o.exporter.get_finished_spans()
        if s.kind == SpanKind.SERVER
    ]
    energy = [dict(s.attributes or {}).get("codecarbon.energy.total") for s in servers]
    counts = [len(s.attributes or {}) for s in servers]
    print(
        f"  sanity: server spans' codecarbon.energy.total (b, c, others): {energy};"
        f" attributes per span {counts}"
    )
    otel.exporter.clear()
    plain.exporter.clear()

    gc.collect()
    gc.freeze()
    thread = sampler_thread()
    thread_cpu0 = thread_cpu_s(thread) if thread else None
    wall0 = time.perf_counter()

    results: dict[str, Any] = {"endpoints": []}
    for path, rounds in (("/ping", args.requests), ("/cpu", args.cpu_requests)):
        t = time.perf_counter()
        await run_endpoint(
            path, a, b, c, rounds, args.obvious_every, otel, tuple(others)
        )
        s = summarize(path, a, b, c, tuple(others))
        s["seconds"] = time.perf_counter() - t
        results["endpoints"].append(s)

    thread_cpu1 = thread_cpu_s(thread) if thread else None
    wall1 = time.perf_counter()
    live = None
    if thread_cpu0 is not None and thread_cpu1 is not None:
        live = (thread_cpu1 - thread_cpu0) / (wall1 - wall0) * 100.0

    for s in results["endpoints"]:
        print_endpoint(s)
    errors = {v.key: v.errors for v in (a, b, *others) + ((c,) if c else ())}
    if any(errors.values()):
        print(f"  non-200 responses: {errors}")

    print()
    print("== where b's time goes: CodeCarbonMiddleware around a trivial ASGI app")
    print("   (inside a recording SDK server span; all rows alternate; medians)")
    mw = await middleware_breakdown(otel, args.middleware_requests)
    print(f"  {'variant':<40}{'median µs':>10}{'cpu µs':>9}{'added µs':>10}{'cpu':>8}")
    for name, row in mw.items():
        print(
            f"  {name:<40}{row['median_us']:>10.1f}{row['cpu_median_us']:>9.1f}"
            f"{row['added_us']:>+10.1f}{row['added_cpu_us']:>+8.1f}"
        )
    full = mw.get("+ carbonspan (all)")
    if full is not None:
        print(
            f"  carbonspan adds {full['added_cpu_us']:.1f} µs CPU per request "
            "(budget 20 µs, metrics included)"
        )
        split = split_breakdown(mw)
        if split is not None:
            print(
                f"  split (CPU): span attributes {split['span_attributes_us']:+.1f} µs,"
                f" histogram record {split['histogram_record_us']:+.1f} µs,"
                f" the rest {split['rest_us']:+.1f} µs"
                f" (sum {split['sum_us']:+.1f} µs)"
            )
            mw["split"] = split
    results["middleware"] = mw

    print()
    print("== request-path pieces (ns per call, median of batches)")
    comp = component_costs(runtime, otel, args.micro_number)
    for name, ns in comp.items():
        if name.startswith("attribute count"):
            print(f"  {name:<52}{ns:>10.0f}")
        else:
            print(f"  {name:<52}{ns:>10.0f} ns  ({ns / 1000:.2f} µs)")
    results["components_ns"] = comp

    gc.unfreeze()
    # The live sampler reads psutil too; stop it before timing a fresh one.
    CodeCarbonInstrumentor.uninstrument_app(app_b)
    for v in others:
        if getattr(v.app, "_carbonspan_runtime", None) is not None:
            CodeCarbonInstrumentor.uninstrument_app(v.app)
    print()
    print(f"== sampler (CodeCarbonPowerSource, interval {runtime.sampler.interval} s)")
    sc = sampler_cost(args.sampler_samples, runtime.sampler.interval)
    sc["live_thread_core_percent"] = live
    print(
        f"  one Sampler.sample() (read + tick): {sc['sample_cpu_median_us']:.0f} µs "
        f"CPU median, {sc['sample_cpu_mean_us']:.0f} µs mean, "
        f"{sc['sample_wall_median_us']:.0f} µs wall median"
    )
    print(
        f"  => {sc['core_percent_at_interval']:.3f}% of one core at the default "
        "interval (budget 0.5%)"
    )
    if live is not None:
        print(
            f"  live sampler thread during the timed run: {live:.3f}% of one core "
            f"({wall1 - wall0:.0f} s)"
        )
    print(f"  (fresh source's hardware detection took {sc['detect_s']:.2f} s)")
    results["sampler"] = sc
    share = (live if live is not None else sc["core_percent_at_interval"]) / 100.0
    for s in results["endpoints"]:
        s["b_over_a_with_sampler"] = s["b_over_a"] * (1.0 - share)
    print(
        "  b/a with the sampler's share of the core taken off: "
        + ", ".join(
            f"{s['path']} {s['b_over_a_with_sampler']:.4f}"
            for s in results["endpoints"]
        )
    )

    print()
    if NETWORK.blocked:
        print(f"network: {len(NETWORK.blocked)} outbound attempt(s) BLOCKED:")
        for what in NETWORK.blocked[:10]:
            print(f"  {what}")
    else:
        print("network: no outbound connection or lookup attempted")
    elapsed = time.perf_counter() - began
    print(f"in-process mode took {elapsed:.0f} s")

    results.update(
        {
            "versions": versions(),
            "source_revision": source_revision(),
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "settings": {k: v for k, v in vars(args).items() if k != "json"},
            "cpu_loops": loops,
            "first_tracker_s": first_c_s,
            "network_blocked": NETWORK.blocked,
            "elapsed_s": elapsed,
        }
    )
    otel.tracer_provider.shutdown()
    plain.tracer_provider.shutdown()
    plain.meter_provider.shutdown()
    otel.meter_provider.shutdown()
    return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=20_000, help="rounds on /ping")
    p.add_argument("--cpu-requests", type=int, default=5_000, help="rounds on /cpu")
    p.add_argument(
        "--obvious-every",
        type=int,
        default=10,
        help="run variant c (tracker per request) every k-th round; 0 skips it",
    )
    p.add_argument("--cpu-ms", type=float, default=3.0, help="work in /cpu")
    p.add_argument(
        "--no-floor",
        dest="floor",
        action="store_false",
        help="leave out variant d (the synchronous floor)",
    )
    p.add_argument(
        "--no-control",
        dest="control",
        action="store_false",
        help="leave out variant z, a second copy of a: the run's noise floor",
    )
    p.add_argument(
        "--no-plain-resource",
        dest="plain_resource",
        action="store_false",
        help="leave out variant e (carbonspan with a plain Resource)",
    )
    p.add_argument("--warmup", type=int, default=300, help="warm-up requests")
    p.add_argument("--middleware-requests", type=int, default=20_000)
    p.add_argument("--micro-number", type=int, default=40_000)
    p.add_argument("--sampler-samples", type=int, default=300)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--http",
        action="store_true",
        help="only the HTTP mode (real uvicorn servers); default: both modes",
    )
    mode.add_argument(
        "--in-process",
        action="store_true",
        help="only the in-process mode (direct ASGI calls); default: both modes",
    )
    p.add_argument(
        "--http-requests", type=int, default=12_000, help="HTTP rounds on /ping"
    )
    p.add_argument(
        "--http-cpu-requests", type=int, default=3_000, help="HTTP rounds on /cpu"
    )
    p.add_argument(
        "--http-max-seconds",
        type=float,
        default=240.0,
        help="stop an HTTP endpoint's rounds after this long",
    )
    p.add_argument(
        "--http-clients",
        type=int,
        default=4,
        help="connections in the HTTP throughput check",
    )
    p.add_argument(
        "--http-throughput-rounds",
        type=int,
        default=24,
        help="interleaved rounds of the HTTP throughput check; 0 skips it",
    )
    p.add_argument("--http-throughput-seconds", type=float, default=0.5)
    p.add_argument(
        "--http-stacks",
        default="uvloop/httptools,asyncio/h11",
        help="uvicorn loop/http pairs, comma-separated; the first one also runs "
        "variant c and the throughput check",
    )
    p.add_argument(
        "--http-idle-seconds",
        type=float,
        default=10.0,
        help="measure b's sampler thread with no traffic for this long; 0 skips",
    )
    p.add_argument("--quick", action="store_true", help="a ~30 s run (both modes)")
    p.add_argument(
        "--attribution",
        choices=("time_share", "cpu_time"),
        default="time_share",
        help="carbonspan's policy in variant b (set as CARBONSPAN_ATTRIBUTION, so "
        "the HTTP servers use it too)",
    )
    p.add_argument("--json", metavar="PATH", help="also write the figures here")
    args = p.parse_args(argv)
    if args.quick:
        args.requests = min(args.requests, 2_500)
        args.cpu_requests = min(args.cpu_requests, 600)
        args.warmup = min(args.warmup, 100)
        args.middleware_requests = min(args.middleware_requests, 3_000)
        args.micro_number = min(args.micro_number, 8_000)
        args.sampler_samples = min(args.sampler_samples, 50)
        args.http_requests = min(args.http_requests, 800)
        args.http_cpu_requests = min(args.http_cpu_requests, 200)
        args.http_throughput_rounds = min(args.http_throughput_rounds, 4)
        args.http_throughput_seconds = min(args.http_throughput_seconds, 0.25)
        args.http_idle_seconds = min(args.http_idle_seconds, 2.0)
    return args


def print_header() -> None:
    print("carbonspan overhead benchmark")
    print(
        "  "
        + ", ".join(f"{k} {v}" for k, v in versions().items())
        + f"; {os.cpu_count()} CPUs ({platform.machine()}, {cpu_brand()})"
    )
    print(f"  carbonspan source: {source_revision()}")


def cpu_brand() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or "?"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("codecarbon").setLevel(logging.ERROR)
    # SIGTERM unwinds like Ctrl-C, so the HTTP mode's servers are stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    began = time.perf_counter()
    os.environ["CARBONSPAN_ATTRIBUTION"] = args.attribution
    print_header()
    print(f"  variant b's attribution policy: {args.attribution}")
    results: dict[str, Any] = {
        "versions": versions(),
        "source_revision": source_revision(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "cpu": cpu_brand(),
        "attribution": args.attribution,
    }
    loops: int | None = None
    if not args.http:
        load0 = machine.snapshot()
        results["in_process"] = asyncio.run(amain(args))
        load = machine.others(load0, machine.snapshot())
        results["in_process"]["machine_load"] = load
        print(machine.describe(load))
        loops = results["in_process"]["cpu_loops"]
    blocked = bool(NETWORK.blocked)
    if not args.in_process:
        if loops is None:
            loops = calibrate_spin(args.cpu_ms)
        wanted = [tuple(x.split("/", 1)) for x in args.http_stacks.split(",") if x]
        stacks = http_overhead.available_stacks(wanted)  # type: ignore[arg-type]
        results["http_stacks"] = []
        for i, (loop, http) in enumerate(stacks):
            # The tracker per request and the throughput check: first stack only.
            one = http_overhead.run(
                args,
                loops,
                COUNTRY,
                loop,
                http,
                obvious=i == 0,
                throughput_check=i == 0,
            )
            results["http_stacks"].append(one)
            blocked = blocked or any(one["server_network_blocked"].values())
        if results["http_stacks"]:
            results["http"] = results["http_stacks"][0]
    print()
    print(f"total {time.perf_counter() - began:.0f} s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2, default=str)
        print(f"wrote {args.json}")
    return 1 if blocked or NETWORK.blocked else 0


if __name__ == "__main__":
    sys.exit(main())
