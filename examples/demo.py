"""carbonspan demo: each HTTP request's energy and CO2eq, read back from its span.

It serves a small FastAPI app with a real uvicorn server on 127.0.0.1, traced
by opentelemetry-instrumentation-fastapi and measured by carbonspan with the
default power source (CodeCarbon's hardware readings). It sends the app a
bounded mix of requests, some of them concurrently, then prints one row per
request from the server spans, and the process's energy totals from the
`codecarbon.energy` metric.

    bash scripts/demo                       # or: python examples/demo.py
    bash scripts/demo --country DEU --requests 3
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import random
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

try:  # the imports take about 1 s: a Ctrl-C meanwhile leaves quietly too
    import httpx
    import uvicorn
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import StreamingResponse
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
        InMemorySpanExporter,
    )
    from opentelemetry.trace import SpanKind

    from carbonspan import CodeCarbonInstrumentor
    from carbonspan.otel.instrumentation import Instrumentation
    from carbonspan.otel.instrumentor import instrumentation_of
except KeyboardInterrupt:
    print("\ninterrupted", file=sys.stderr)
    raise SystemExit(130) from None

HOST = "127.0.0.1"
COMPONENTS = ("cpu", "gpu", "ram")
READY_TIMEOUT = 15.0  # seconds to wait for hardware detection (about 2 s)

log = logging.getLogger("demo")


class DemoError(Exception):
    """The demo cannot go on; its message says why."""


# -- the app -----------------------------------------------------------------


class DemoFailure(RuntimeError):
    """Raised on purpose by `/fail`; the server answers 500."""


def burn_cpu(seconds: float) -> int:
    """Spin on this thread's CPU time (not wall time) for `seconds`."""
    deadline = time.thread_time() + seconds
    rounds = 0
    while time.thread_time() < deadline:
        total = 0
        for i in range(2_000):
            total += i * i
        rounds += 1
    return rounds


def make_app() -> FastAPI:
    app = FastAPI(title="carbonspan demo")

    @app.get("/fast")
    async def fast() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/cpu")
    def cpu() -> dict[str, int]:  # sync: runs in Starlette's thread pool
        return {"rounds": burn_cpu(0.2)}

    @app.get("/sleep")
    async def sleep() -> dict[str, float]:
        await asyncio.sleep(0.3)
        return {"slept": 0.3}

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(6):
                await asyncio.sleep(0.04)
                yield f"chunk {i}\n".encode()

        return StreamingResponse(chunks(), media_type="text/plain")

    @app.get("/fail")
    async def fail() -> None:
        raise DemoFailure("this endpoint always fails")

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        raise HTTPException(status_code=404, detail=f"no item {item_id}")

    return app


class QuietDemoFailure(logging.Filter):
    """Drop uvicorn's traceback for the failure `/fail` raises on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, DemoFailure)


# -- the server ----------------------------------------------------------------


class Server:
    """uvicorn in a thread of this process, so its spans land in our exporter."""

    def __init__(self, app: FastAPI, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((HOST, port))  # port 0: the OS picks a free one
        except OSError as exc:
            self.sock.close()
            raise DemoError(f"cannot listen on {HOST}:{port}: {exc.strerror}") from None
        self.port: int = self.sock.getsockname()[1]
        config = uvicorn.Config(
            app, log_config=None, log_level="warning", access_log=False
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run,
            kwargs={"sockets": [self.sock]},
            name="uvicorn",
            daemon=True,  # a stuck shutdown must not keep the demo alive
        )

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise DemoError("uvicorn did not start; see the log above")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout=5.0)
        self.sock.close()


# -- the traffic ---------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    """One request the client sent, and the trace id it propagated."""

    phase: str
    path: str
    trace_id: int
    status: int


async def send(client: httpx.AsyncClient, phase: str, path: str) -> Sent:
    # A traceparent we choose, so each row can be matched to its server span.
    trace_id = random.getrandbits(128) or 1
    parent = f"00-{trace_id:032x}-{random.getrandbits(64) or 1:016x}-01"
    headers = {"traceparent": parent}
    if path == "/fail":
        # uvicorn closes a connection after an unhandled error: a request
        # sent on it meanwhile would fail, so this one asks for a new one.
        headers["connection"] = "close"
    response = await client.get(path, headers=headers)
    await response.aread()
    return Sent(phase, path, trace_id, response.status_code)


async def traffic(url: str, multiplier: int) -> list[Sent]:
    """One of each endpoint in turn, then bursts of concurrent requests."""
    one_of_each = ["/fast", "/cpu", "/sleep", "/stream", "/fail", "/items/42"]
    burst = ["/fast"] * 4 + ["/cpu"] * 2 + ["/sleep"] * 2 + ["/stream"]
    sent: list[Sent] = []
    limits = httpx.Limits(max_connections=len(burst))
    async with httpx.AsyncClient(
        base_url=url, trust_env=False, timeout=10.0, limits=limits
    ) as client:
        for _ in range(multiplier):
            for path in one_of_each:
                sent.append(await send(client, "sequential", path))
        for _ in range(multiplier):
            sent += await asyncio.gather(
                *(send(client, "concurrent", path) for path in burst)
            )
    return sent


# -- reading the results -------------------------------------------------------


def wait_for_hardware(instrumentation: Instrumentation, timeout: float) -> None:
    """Block until the sampler has detected the hardware and ticked the ledger."""
    deadline = time.monotonic() + timeout
    sampler = instrumentation.sampler
    while not (
        sampler.info.measurement and instrumentation.ledger.last_time is not None
    ):
        if time.monotonic() > deadline:
            raise DemoError(
                f"no power reading after {timeout:.0f} s "
                f"({sampler.errors} failed reads); see the log above"
            )
        time.sleep(0.05)


def print_hardware(instrumentation: Instrumentation, elapsed: float) -> None:
    info = instrumentation.sampler.info
    intensity = instrumentation.intensity
    settings = instrumentation.settings
    where = intensity.country_iso_code or intensity.cloud_region or "world"
    print(f"Hardware detected in {elapsed:.1f} s:")
    print(f"  CPU model          {info.cpu_model or 'unknown'}")
    if info.gpu_model:
        print(f"  GPU model          {info.gpu_model} (x{info.gpu_count})")
    methods = ", ".join(f"{c}={m}" for c, m in sorted(info.measurement.items()))
    print(f"  measured by        {methods}")
    unmeasured = [c for c in COMPONENTS if c not in info.measurement]
    if unmeasured:
        print(f"  not measured       {', '.join(unmeasured)}")
    print(
        f"  scope              {settings.scope}, sampled every "
        f"{settings.sample_interval * 1000:.0f} ms, attribution {settings.attribution}"
    )
    print(
        f"  carbon intensity   {intensity.g_per_kwh:.1f} g CO2eq/kWh "
        f"({where}, source: {intensity.location_source})"
    )
    print()


def server_spans(spans: Iterable[ReadableSpan]) -> dict[int, ReadableSpan]:
    out: dict[int, ReadableSpan] = {}
    for span in spans:
        if span.kind is SpanKind.SERVER and span.context is not None:
            out[span.context.trace_id] = span
    return out


def fmt(value: float | None, scale: float, width: int, digits: int = 3) -> str:
    if value is None:
        return f"{'-':>{width}}"
    return f"{round(value * scale, digits) + 0.0:{width}.{digits}f}"  # no "-0.000"


COLUMNS = (
    ("phase", 10, "<"),
    ("route", 16, "<"),
    ("status", 6, ">"),
    ("ms", 7, ">"),
    ("cpu mJ", 9, ">"),
    ("gpu mJ", 9, ">"),
    ("ram mJ", 9, ">"),
    ("total mJ", 9, ">"),
    ("conc.", 5, ">"),
    ("CO2eq µg", 9, ">"),
)


def row(cells: Iterable[str]) -> str:
    return "  ".join(
        f"{cell:{align}{width}}"
        for cell, (_, width, align) in zip(cells, COLUMNS, strict=True)
    )


def print_requests(sent: list[Sent], spans: Mapping[int, ReadableSpan]) -> float:
    """One row per request; returns the joules the rows add up to."""
    header = row(name for name, _, _ in COLUMNS)
    print(header)
    print("-" * len(header))
    total = 0.0
    missing = 0
    for request in sent:
        span = spans.get(request.trace_id)
        attrs: Mapping[str, Any] = (span.attributes or {}) if span else {}
        route = str(attrs.get("http.route", request.path))
        status = attrs.get("http.response.status_code", attrs.get("http.status_code"))
        duration = None
        if span is not None and span.end_time and span.start_time:
            duration = (span.end_time - span.start_time) / 1e9
        energy = attrs.get("codecarbon.energy.total")
        if energy is None:
            missing += 1
        else:
            total += energy
        concurrency = attrs.get("codecarbon.concurrency")
        print(
            row(
                [
                    request.phase,
                    route,
                    str(status if status is not None else request.status),
                    fmt(duration, 1e3, 7, 1),
                    *(
                        fmt(attrs.get(f"codecarbon.energy.{c}"), 1e3, 9)
                        for c in COMPONENTS
                    ),
                    fmt(energy, 1e3, 9),
                    fmt(concurrency, 1, 5, 2),
                    fmt(attrs.get("codecarbon.emissions"), 1e6, 9),
                ]
            )
        )
    print(
        "conc. = mean number of requests sharing the process's power meanwhile; "
        "- = not measured"
    )
    print()
    if missing:
        log.warning("%d request(s) have no energy figures on their span", missing)
    return total


def print_span(sent: list[Sent], spans: Mapping[int, ReadableSpan], path: str) -> None:
    """The `codecarbon.*` attributes of the first request to `path`."""
    for request in sent:
        span = spans.get(request.trace_id)
        if request.path == path and span is not None and span.attributes:
            break
    else:
        return
    print(f"The codecarbon.* attributes on the first {path} request's server span:")
    for key, value in sorted(span.attributes.items()):
        if key.startswith("codecarbon."):
            shown = f"{value:.6g}" if isinstance(value, float) else repr(value)
            print(f"  {key:30} {shown}")
    print()


def metric_points(reader: InMemoryMetricReader, name: str) -> list[Any]:
    data = reader.get_metrics_data()
    points: list[Any] = []
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    points += metric.data.data_points
    return points


def print_totals(
    app: FastAPI,
    instrumentation: Instrumentation,
    reader: InMemoryMetricReader,
    from_spans: float,
) -> None:
    totals = CodeCarbonInstrumentor.energy_totals(app)
    if totals is None:
        raise DemoError("the power source gave no reading")
    metric: dict[bool, float] = {True: 0.0, False: 0.0}
    for point in metric_points(reader, "codecarbon.energy"):
        metric[bool(point.attributes.get("codecarbon.attributed"))] += point.value
    grams: dict[bool, float] = {}
    for point in metric_points(reader, "codecarbon.emissions"):
        grams[bool(point.attributes.get("codecarbon.attributed"))] = point.value
    grams_measured = instrumentation.intensity.grams(sum(totals.measured.values()))

    print("Totals for this process (J; `CodeCarbonInstrumentor.energy_totals(app)`):")
    print(f"  {'':26}" + "".join(f"{c:>10}" for c in (*COMPONENTS, "total")))

    def line(label: str, values: Mapping[str, float], extra: str = "") -> None:
        cells = [fmt(values.get(c), 1, 10) for c in COMPONENTS]
        cells.append(fmt(sum(values.values()), 1, 10))
        print(f"  {label:26}" + "".join(cells) + extra)

    def co2(g: float | None) -> str:
        return "" if g is None else f"   {g * 1e3:8.4f} mg CO2eq"

    line("attributed to requests", totals.attributed, co2(grams.get(True)))
    line("unattributed (idle)", totals.unattributed, co2(grams.get(False)))
    if any(abs(joules) > 1e-9 for joules in totals.open.values()):
        line("held by open requests", totals.open)
    line("measured by the source", totals.measured, co2(grams_measured))
    gap = {
        c: totals.attributed[c] + totals.unattributed[c] + totals.open[c] - joules
        for c, joules in totals.measured.items()
    }
    line("(attr. + unattr.) - meas.", gap)
    measured_j = sum(totals.measured.values())
    # What requests drew after their responses had gone: attributed, not on
    # their spans (work left running, such as background tasks).
    after_j = sum(instrumentation.ledger.totals().after_response)
    print()
    print(
        f"  The request rows add up to {from_spans:.4f} J, and the requests drew "
        f"{after_j:.4f} J after their responses\n  had gone (not on their spans): "
        f"{from_spans + after_j:.4f} J; the metric's attributed total "
        f"(codecarbon.energy) is {metric[True]:.4f} J."
    )
    if measured_j > 0:
        print(
            f"  Attributed + unattributed is {sum(gap.values()) / measured_j:+.2%} "
            "off what the source measured."
        )
    if any(joules < 0 for joules in totals.unattributed.values()):
        print(
            "  Unattributed is below 0 where short requests, charged for their\n"
            "  last milliseconds before the next reading came, were charged more\n"
            "  than that reading then measured: the difference is taken back\n"
            "  from the unattributed account (docs/attribution.md, the tick\n"
            "  correction)."
        )


# -- main ----------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--country",
        default="FRA",
        help="ISO 3166-1 alpha-3 code for the carbon intensity (default: FRA)",
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=1,
        metavar="N",
        help="send N times the request mix, 1 to 10 (default: 1)",
    )
    parser.add_argument(
        "--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.requests <= 10:
        parser.error("--requests: expected 1 to 10")
    if not 0 <= args.port <= 65535:
        parser.error("--port: expected 0 to 65535")
    return args


def run(args: argparse.Namespace) -> None:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    app = make_app()
    server: Server | None = None
    try:
        server = Server(app, args.port)  # binds now: a busy port fails early
        FastAPIInstrumentor.instrument_app(
            app, tracer_provider=tracer_provider, meter_provider=meter_provider
        )
        began = time.monotonic()
        try:
            CodeCarbonInstrumentor().instrument_app(
                app, country_iso_code=args.country, meter_provider=meter_provider
            )
        except ValueError as exc:  # a bad setting, such as an unknown country
            raise DemoError(str(exc)) from None
        instrumentation = instrumentation_of(app)
        if instrumentation is None:  # not after a successful instrument_app
            raise DemoError("carbonspan is not measuring the app")

        server.start()
        print(f"Serving on {server.url}; detecting hardware (about 2 s)...")
        wait_for_hardware(instrumentation, READY_TIMEOUT)
        print_hardware(instrumentation, time.monotonic() - began)

        sent = asyncio.run(traffic(server.url, args.requests))
        # Let the sampler take one more tick, so the last interval is counted,
        # then stop it, so the totals below stay put while we read them. (Not
        # uninstrument_app yet: that also takes the app out of the metrics.)
        time.sleep(instrumentation.settings.sample_interval * 2.5)
        instrumentation.sampler.stop()

        print(f"{len(sent)} requests, read back from their server spans:")
        spans = server_spans(exporter.get_finished_spans())
        from_spans = print_requests(sent, spans)
        print_span(sent, spans, "/cpu")
        print_totals(app, instrumentation, reader, from_spans)
    finally:
        if server is not None:
            server.stop()
        CodeCarbonInstrumentor.uninstrument_app(app)  # no-op if already done
        tracer_provider.shutdown()
        meter_provider.shutdown()


def main(argv: list[str] | None = None) -> int:
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # keep order with the log
    logging.basicConfig(
        level=logging.WARNING, format="[%(levelname)s %(name)s] %(message)s"
    )
    logging.getLogger("uvicorn.error").addFilter(QuietDemoFailure())
    args = parse_args(argv)
    try:
        run(args)
    except DemoError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; server stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
