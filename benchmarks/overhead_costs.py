"""The cost breakdown of `overhead.py`: where carbonspan's added time goes,
in CPU µs per request by part.

1. `CodeCarbonMiddleware` around a trivial ASGI app, inside a recording SDK
   server span, with the span attributes and/or the histogram record switched
   off (on instrumentations built for the purpose; src/ is not touched), all rows
   alternating, medians compared. These are the real figures.
2. Each piece of the request path timed alone in a tight loop. That
   understates its cost on the real request path (warm caches): read those as
   a lower bound.
3. The sampler thread: it runs during all variants (one process), so its cost
   does not show up in b/a. `PowerSampler.sample()` on a fresh sampler is timed
   here; the caller folds its share of a core in as a separate figure.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import psutil
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.trace import SpanKind, Tracer, set_span_in_context

import netguard  # noqa: F401  (installs the loopback-only guard on import)
from carbonspan import (
    CodeCarbonMiddleware,
    CodeCarbonPowerSource,
    EnergyReading,
    set_tenant,
)
from carbonspan.attribution.ledger import Ledger
from carbonspan.config import Settings
from carbonspan.otel.instrumentation import Instrumentation
from carbonspan.otel.metric_queue import route_key
from carbonspan.otel.metrics import ENERGY_BUCKETS
from carbonspan.otel.reporter import Valuation
from carbonspan.power.proc_stat import MachineCpuTimes
from carbonspan.power.sampler import PowerSampler
from harness import http_scope, median_us
from overhead_ab import COUNTRY, Otel, SyncFloor

if TYPE_CHECKING:
    from carbonspan.types import ASGIApp, Message, Receive, Scope, Send

ALL = "+ carbonspan (all)"
TENANT = ALL + ", tenant set"
DOWNSTREAM = ALL + ", downstream_energy on"
KEY = route_key("/ping", "GET", 200)  # a request's series, for valuing by hand


# -- around a trivial app, parts switched off ----------------------------------


class PassThrough:
    """An ASGI layer with a send wrapper and nothing else: the floor for any
    middleware of this shape."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def wrapped(message: Message) -> None:
            await send(message)

        await self.app(scope, receive, wrapped)


async def trivial(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def trivial_for_a_tenant(scope: Scope, receive: Receive, send: Send) -> None:
    set_tenant("tenant-42")  # as an authenticating dependency would
    await trivial(scope, receive, send)


class _NoAttributes:
    def for_span(self, *args: Any) -> dict[str, Any]:
        return {}


class _NoPoints:
    def record(self, *args: Any) -> None:
        pass

    def background(self, *args: Any) -> None:
        pass


def ablated_instrumentation(
    *, attributes: bool, metrics: bool, downstream: bool = False
) -> tuple[Instrumentation, MeterProvider]:
    """An instrumentation on the shared default sampler, with its own
    MeterProvider, and the span attributes (all but an empty set_attributes
    call) and/or the metric point switched off."""
    provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    settings = {"country_iso_code": COUNTRY, "meter_provider": provider}
    if downstream:
        settings["downstream_energy"] = True
    instrumentation = Instrumentation(Settings.load(settings))
    reporter = instrumentation.reporter
    if not attributes:
        reporter.spans = _NoAttributes()  # type: ignore[assignment]
    if not metrics:
        reporter.queue = _NoPoints()  # type: ignore[assignment]
    return instrumentation, provider


class Rows:
    """The breakdown's rows: an app each, the tracer of its server span, and
    what to shut down after."""

    def __init__(self, otel: Otel) -> None:
        tracer = otel.tracer_provider.get_tracer("bench")
        self.apps: dict[str, ASGIApp] = {
            "bare trivial app": trivial,
            "+ pass-through ASGI layer": PassThrough(trivial),
        }
        self.owned: list[tuple[Instrumentation, MeterProvider]] = []
        for label, attributes, metrics in (
            ("+ carbonspan, no attrs, no metrics", False, False),
            ("+ carbonspan, no span attributes", False, True),
            ("+ carbonspan, no histogram record", True, False),
            (ALL, True, True),
        ):
            made = ablated_instrumentation(attributes=attributes, metrics=metrics)
            self.owned.append(made)
            self.apps[label] = CodeCarbonMiddleware(trivial, instrumentation=made[0])
        self.apps[TENANT] = CodeCarbonMiddleware(
            trivial_for_a_tenant, instrumentation=self.owned[-1][0]
        )
        made = ablated_instrumentation(attributes=True, metrics=True, downstream=True)
        self.owned.append(made)
        self.apps[DOWNSTREAM] = CodeCarbonMiddleware(trivial, instrumentation=made[0])
        self.tracers: dict[str, Tracer] = dict.fromkeys(self.apps, tracer)
        if otel.others and ALL in self.apps:
            label = ALL + ", plain Resource"
            self.apps[label] = self.apps[ALL]
            self.tracers[label] = otel.others[0].tracer_provider.get_tracer("bench")
        self.floor_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
        self.apps["+ synchronous floor (d)"] = SyncFloor(trivial, self.floor_provider)
        self.tracers["+ synchronous floor (d)"] = tracer

    def close(self) -> None:
        self.floor_provider.shutdown()
        for instrumentation, provider in self.owned:
            instrumentation.close()
            provider.shutdown()


async def alternate(
    rows: Rows, n: int, otel: Otel
) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """`n` rounds, every row once a round in a rotating order, each request
    inside its own server span with `scope["route"]` set: (wall, CPU) ns."""
    route = SimpleNamespace(path="/ping")

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        return None

    names = list(rows.apps)
    walls: dict[str, list[int]] = {name: [] for name in names}
    cpus: dict[str, list[int]] = {name: [] for name in names}
    perf, cpu = time.perf_counter_ns, time.thread_time_ns
    for i in range(n):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            app = rows.apps[name]
            scope = http_scope("/ping")
            scope["route"] = route
            span = rows.tracers[name].start_span("GET /ping", kind=SpanKind.SERVER)
            with trace.use_span(span, end_on_exit=False):
                w0, c0 = perf(), cpu()
                await app(scope, receive, send)
                c1, w1 = cpu(), perf()
            span.end()
            walls[name].append(w1 - w0)
            cpus[name].append(c1 - c0)
        if i % 256 == 0:
            otel.clear()
    return walls, cpus


async def middleware_breakdown(otel: Otel, n: int) -> dict[str, dict[str, float]]:
    """CodeCarbonMiddleware around a trivial ASGI app, inside a recording SDK
    server span, against the app alone, with parts of the request path
    switched off; all variants alternate, medians compared."""
    rows = Rows(otel)
    try:
        walls, cpus = await alternate(rows, n, otel)
    finally:
        rows.close()
    base = next(iter(walls))
    base_wall, base_cpu = median_us(walls[base]), median_us(cpus[base])
    return {
        name: {
            "median_us": median_us(walls[name]),
            "cpu_median_us": median_us(cpus[name]),
            "added_us": median_us(walls[name]) - base_wall,
            "added_cpu_us": median_us(cpus[name]) - base_cpu,
        }
        for name in walls
    }


def split_breakdown(mw: dict[str, dict[str, float]]) -> dict[str, float] | None:
    """Where carbonspan's added CPU goes, from the alternating ablation rows:
    span attributes = all - (no span attributes); histogram = all - (no
    histogram record); the rest = (no attrs, no metrics) over the bare app."""
    try:
        full = mw[ALL]["added_cpu_us"]
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


def print_breakdown(mw: dict[str, dict[str, float]]) -> None:
    print(f"  {'variant':<40}{'median µs':>10}{'cpu µs':>9}{'added µs':>10}{'cpu':>8}")
    for name, row in mw.items():
        print(
            f"  {name:<40}{row['median_us']:>10.1f}{row['cpu_median_us']:>9.1f}"
            f"{row['added_us']:>+10.1f}{row['added_cpu_us']:>+8.1f}"
        )


def print_split(mw: dict[str, dict[str, float]]) -> dict[str, float] | None:
    """carbonspan's added CPU, and its split by part; returns the split."""
    full = mw.get(ALL)
    if full is None:
        return None
    print(
        f"  carbonspan adds {full['added_cpu_us']:.1f} µs CPU per request "
        "(budget 20 µs, metrics included)"
    )
    tenant = mw.get(TENANT)
    if tenant is not None:
        print(
            "  a tenant set (set_tenant, the span attribute, the label) adds "
            f"{tenant['cpu_median_us'] - full['cpu_median_us']:+.2f} µs CPU"
        )
    downstream = mw.get(DOWNSTREAM)
    if downstream is not None:
        print(
            "  downstream_energy on, no outgoing call, adds "
            f"{downstream['cpu_median_us'] - full['cpu_median_us']:+.2f} µs CPU"
        )
    split = split_breakdown(mw)
    if split is not None:
        print(
            f"  split (CPU): span attributes {split['span_attributes_us']:+.1f} µs,"
            f" histogram record {split['histogram_record_us']:+.1f} µs,"
            f" the rest {split['rest_us']:+.1f} µs"
            f" (sum {split['sum_us']:+.1f} µs)"
        )
    return split


# -- each piece alone ----------------------------------------------------------


def per_call_ns(fn: Callable[[], Any], number: int, repeat: int = 7) -> float:
    """Median over `repeat` batches of the mean ns per call in a batch."""
    results = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        for _ in range(number):
            fn()
        results.append((time.perf_counter_ns() - t0) / number)
    return statistics.median(results)


def ledger_costs(out: dict[str, float], number: int) -> Any:
    """The ledger's open and close, the clock, the current span; returns a
    closed window's measurement for the pieces after."""
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
    return measurement


def attribute_costs(
    out: dict[str, float],
    instrumentation: Instrumentation,
    otel: Otel,
    measurement: Any,
    number: int,
) -> None:
    """Valuing a request and making its span attributes, with the resource
    detected and with a plain Resource, setting them, and what each constant
    attribute adds."""
    for_span = instrumentation.reporter.spans.for_span
    factors = instrumentation.accounts.factors
    tracer = otel.tracer_provider.get_tracer("bench")
    plain = (otel.others[0] if otel.others else otel).tracer_provider
    span = tracer.start_span("x")
    plain_span = plain.get_tracer("bench").start_span("x")

    def attributes(target: Any) -> dict[str, Any]:
        valuation = Valuation(measurement, measurement.total, factors, 0.0, KEY)
        return for_span(valuation, target)

    out["Valuation + SpanAttributes.for_span(), resource detected"] = per_call_ns(
        lambda: attributes(span), number
    )
    out["Valuation + SpanAttributes.for_span(), plain Resource"] = per_call_ns(
        lambda: attributes(plain_span), number
    )
    attrs, full = attributes(span), attributes(plain_span)
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


def metrics_costs(
    out: dict[str, float],
    instrumentation: Instrumentation,
    tracer: Tracer,
    measurement: Any,
    number: int,
) -> None:
    """The request path only queues the metric point: time the queue, and the
    drain per point (with the live sampler kept from draining meanwhile)."""
    queue = instrumentation.metrics.queue
    live = tracer.start_span("x")
    factors = instrumentation.accounts.factors
    valuation = Valuation(measurement, measurement.total, factors, 0.0, KEY)
    args = (valuation, live)
    after_tick = instrumentation.sampler.after_tick
    held = list(after_tick)
    after_tick.clear()
    try:
        queue.drain()
        out["PointQueue.record() (queue only)"] = per_call_ns(
            lambda: queue.record(*args), number // 4, repeat=1
        )
        queue.drain()
        batch = 200
        drains: list[float] = []
        for _ in range(15):
            for _ in range(batch):
                queue.record(*args)
            c0 = time.thread_time_ns()
            queue.drain()
            drains.append((time.thread_time_ns() - c0) / batch)
        out["PointQueue.drain(), per point (batches of 200)"] = statistics.median(
            drains
        )
    finally:
        after_tick.extend(held)
    live.end()


def histogram_cost(
    out: dict[str, float], otel: Otel, tracer: Tracer, number: int
) -> None:
    """The SDK call itself, as the synchronous floor makes it on the request
    path, and what the options for a cheaper point give: fewer attributes,
    the attribute dict built afresh or reused, the span in an explicit context
    (as the drain passes it) or none (no exemplar). The OpenTelemetry Python
    API has no bound instruments: a record always looks its series up."""
    histogram = otel.meter_provider.get_meter("bench.floor").create_histogram(
        "bench.floor.energy", unit="J"
    )
    point_attrs = {
        "http.route": "/ping",
        "http.request.method": "GET",
        "http.response.status_code": 200,
    }
    one = {"http.route": "/ping"}
    n = number // 4
    current = tracer.start_span("x")
    with trace.use_span(current, end_on_exit=True):
        out["Histogram.record(), recording span current"] = per_call_ns(
            lambda: histogram.record(0.001, point_attrs), n
        )
    # The options, on a histogram with carbonspan's buckets.
    record = (
        otel.meter_provider.get_meter("bench.options")
        .create_histogram(
            "bench.options.energy",
            unit="J",
            explicit_bucket_boundaries_advisory=ENERGY_BUCKETS,
        )
        .record
    )
    current = tracer.start_span("x")
    explicit = set_span_in_context(current, Context())
    empty = Context()
    with trace.use_span(current, end_on_exit=True):
        out["  carbonspan's buckets, 3 attributes, span current"] = per_call_ns(
            lambda: record(0.001, point_attrs), n
        )
        out["  3 attributes, a new dict each call"] = per_call_ns(
            lambda: record(0.001, dict(point_attrs)), n
        )
        out["  3 attributes, the span in an explicit context"] = per_call_ns(
            lambda: record(0.001, point_attrs, context=explicit), n
        )
        out["  3 attributes, no span (no exemplar)"] = per_call_ns(
            lambda: record(0.001, point_attrs, context=empty), n
        )
        out["  1 attribute, span current"] = per_call_ns(lambda: record(0.001, one), n)
        out["  no attribute, span current"] = per_call_ns(lambda: record(0.001), n)


def component_costs(
    instrumentation: Instrumentation, otel: Otel, number: int
) -> dict[str, float]:
    """Pieces of the request path, each timed alone (ns per call)."""
    out: dict[str, float] = {}
    measurement = ledger_costs(out, number)
    attribute_costs(out, instrumentation, otel, measurement, number)
    tracer = otel.tracer_provider.get_tracer("bench")
    metrics_costs(out, instrumentation, tracer, measurement, number)
    histogram_cost(out, otel, tracer, number)
    return out


def print_pieces(comp: dict[str, float]) -> None:
    for name, ns in comp.items():
        if name.startswith("attribute count"):
            print(f"  {name:<52}{ns:>10.0f}")
        else:
            print(f"  {name:<52}{ns:>10.0f} ns  ({ns / 1000:.2f} µs)")


# -- the sampler thread --------------------------------------------------------


def sampler_cost(samples: int, interval: float) -> dict[str, float]:
    """CPU time of `PowerSampler.sample()` (source.read() + ledger.tick()) on a fresh
    sampler over a fresh CodeCarbonPowerSource, called every `interval`
    seconds, as the sampler thread calls it: after a shorter sleep the caches
    are warmer and a call is cheaper than the thread's."""
    sampler = PowerSampler(CodeCarbonPowerSource(), interval, Ledger())
    t0 = time.perf_counter()
    sampler.sample()  # hardware detection
    detect_s = time.perf_counter() - t0
    sampler.sample()
    cpu_ns: list[int] = []
    wall_ns: list[int] = []
    for _ in range(samples):
        time.sleep(interval)
        c0, w0 = time.thread_time_ns(), time.perf_counter_ns()
        sampler.sample()
        cpu_ns.append(time.thread_time_ns() - c0)
        wall_ns.append(time.perf_counter_ns() - w0)
    mean_cpu = statistics.fmean(cpu_ns) / 1000.0
    # The machine's CPU times, read each way a tick could, in turn, a tick apart.
    machine = MachineCpuTimes()
    reads: dict[str, list[int]] = {"psutil": [], "proc_stat": []}
    for _ in range(max(samples // 5, 5)):
        for key, read in (("psutil", psutil.cpu_times), ("proc_stat", machine.read)):
            time.sleep(interval)
            c0 = time.thread_time_ns()
            read()
            reads[key].append(time.thread_time_ns() - c0)
    machine.close()
    return {
        "detect_s": detect_s,
        "psutil_cpu_times_us": median_us(reads["psutil"]),
        "proc_stat_read_us": median_us(reads["proc_stat"]),
        "sample_cpu_median_us": median_us(cpu_ns),
        "sample_cpu_mean_us": mean_cpu,
        "sample_wall_median_us": median_us(wall_ns),
        "core_percent_at_interval": mean_cpu / 1e6 / interval * 100.0,
    }


def print_sampler(sc: dict[str, Any], live_wall_s: float) -> None:
    print(
        "  one PowerSampler.sample() (read + tick): "
        f"{sc['sample_cpu_median_us']:.0f} µs "
        f"CPU median, {sc['sample_cpu_mean_us']:.0f} µs mean, "
        f"{sc['sample_wall_median_us']:.0f} µs wall median"
    )
    print(
        f"  => {sc['core_percent_at_interval']:.3f}% of one core at the default "
        "interval (budget 0.5%)"
    )
    live = sc["live_thread_core_percent"]
    if live is not None:
        print(
            f"  live sampler thread during the timed run: {live:.3f}% of one core "
            f"({live_wall_s:.0f} s)"
        )
    print(f"  (fresh source's hardware detection took {sc['detect_s']:.2f} s)")
    print(
        "  the machine's CPU times, one read a tick: psutil.cpu_times() "
        f"{sc['psutil_cpu_times_us']:.0f} µs CPU, MachineCpuTimes.read() "
        f"{sc['proc_stat_read_us']:.0f} µs (medians)"
    )
