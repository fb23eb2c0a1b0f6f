"""Per-request accuracy against a known physical truth.

The conservation invariant says the books balance; it says nothing about
whether one request's figure is close to what that request physically cost.
This benchmark runs a real uvicorn server (a subprocess, ``--loop asyncio
--http h11``, on 127.0.0.1) whose power source follows physics the server
itself can account for exactly, request by request:

cpu   P = 2 W + 30 W x the process's CPU utilisation: cumulative joules are
      2 x elapsed seconds + 30 x the process's CPU seconds (``process_time``).
ram   scripted steps, 5 W and 40 W alternating every 0.5 s.
gpu   250 W per "kernel" in flight: a handler opens a kernel, awaits (or
      sleeps) while it runs, and closes it; 0 W when no kernel runs.

The truth per request, per component (see ``Truth``):

cpu   30 W x the CPU seconds of the request's own work (each burst of work
      is timed with its thread's CPU clock), plus, shared equally between the
      requests in flight, 30 W x the rest of the process's CPU (event loop,
      HTTP parsing, tracing, the sampler) and the 2 W baseline. For requests
      served one at a time this is 30 W x the process's CPU seconds during the
      request + 2 W x its duration.
ram   the integral of the step power over the request, divided by the number
      of requests in flight at each instant.
gpu   250 W x the seconds of the request's own kernels.

A request's interval is timed by a middleware just inside carbonspan's (from
its first line to the final body), so it is the interval carbonspan charges,
to a few microseconds. Energy drawn while no request is in flight belongs to
nobody, in the truth as in carbonspan.

Workloads (each bounded in count and time; ``--quick`` shortens them):

sporadic   one request at a time, 2-20 ms of CPU, 30-120 ms apart
steady     8 clients back to back, 2-15 ms of CPU, a third with a 5-20 ms kernel
mixed      8 clients: sleepers, async and sync (thread pool) CPU burners,
           kernel waiters
streaming  4 clients, 4-12 chunks of 0.5-3 ms of CPU, 5-25 ms apart
burst      50 concurrent requests sent the moment the server accepts
           connections, 1-8 ms of CPU, half with a 5-30 ms kernel

Each workload x policy runs in a fresh server, which reports its truth and the
spans' ``codecarbon.energy.*`` attributes at the end. For each component:

sum        sum of reported J / sum of true J, over the requests with a figure
p10 ...    per-request reported / true (requests with a figure, true J > 0)
0 J        requests whose span says 0 J where the true J > 0
none       requests whose span has no figure for the component

Usage (the carbonspan the servers import is the one on PYTHONPATH, or given
per label with --src, so two versions can run interleaved):

    python benchmarks/accuracy.py [--quick]
    python benchmarks/accuracy.py --src after=src --src before=../old/src \\
        --json results.json --plot docs/img/accuracy.png
    python benchmarks/accuracy.py --load results.json --plot out.png

The machine is shared and the host steals CPU: the figures move from run to
run by a few percent, and the load left by other processes is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import math
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import machine
from harness import exit_with_parent, free_port, terminate, wait_accepting, wait_or_kill

if TYPE_CHECKING:
    from carbonspan.types import ASGIApp, Message, Receive, Scope, Send

HERE = Path(__file__).resolve().parent
COMPONENTS = ("cpu", "ram", "gpu")
POLICIES = ("time_share", "cpu_time")
WORKLOADS = ("sporadic", "steady", "mixed", "streaming", "burst")
SAMPLE_INTERVAL = 0.1  # carbonspan's default

# The physics.
BASE_W = 2.0  # cpu: drawn whatever the process does
CPU_W = 30.0  # cpu: per CPU second per second of the process
RAM_LOW_W, RAM_HIGH_W, RAM_PERIOD = 5.0, 40.0, 0.5  # ram: steps
GPU_W = 250.0  # gpu: per kernel in flight


# -- the server: physics and truth ---------------------------------------------


def step_energy(t0: float, t1: float) -> float:
    """Joules of the step power between two elapsed times (closed form)."""

    def cumulative(t: float) -> float:
        whole, part = divmod(t, 2 * RAM_PERIOD)
        low = min(part, RAM_PERIOD)
        high = max(part - RAM_PERIOD, 0.0)
        return (
            whole * RAM_PERIOD * (RAM_LOW_W + RAM_HIGH_W)
            + low * RAM_LOW_W
            + high * RAM_HIGH_W
        )

    return cumulative(t1) - cumulative(t0) if t1 > t0 else 0.0


@dataclass
class Record:
    """One request as the truth sees it."""

    id: int
    kind: str
    span_id: int
    start: float
    end: float | None = None
    cpu: float = 0.0  # true J
    ram: float = 0.0
    gpu: float = 0.0
    own_cpu: float = 0.0  # CPU seconds of its own work


@dataclass
class _Burst:
    record: Record
    clock: int  # the working thread's CPU clock id
    seen: float  # that clock when last read


class Truth:
    """The power source, and an exact per-request account of what it drew.

    Every event (a request opens or closes, a burst of work or a kernel begins
    or ends) closes a segment of time. Over a segment, the CPU seconds of the
    bursts running are read from their threads' CPU clocks and charged to their
    requests at 30 W; the rest of the process's CPU seconds, the 2 W baseline
    and the step power are split equally between the requests in flight.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.t0 = time.monotonic()
        self.x0 = time.process_time()
        self._t, self._x = self.t0, self.x0
        self._open: dict[int, Record] = {}
        self._bursts: dict[int, _Burst] = {}
        self._kernels = 0
        self._kernel_seconds = 0.0  # kernel-seconds of kernels ended or up to _kt
        self._kt = self.t0
        self.records: list[Record] = []
        self._ids = 0
        # What no request is charged: drawn while none is in flight.
        self.idle = {"cpu": 0.0, "ram": 0.0, "seconds": 0.0, "cpu_seconds": 0.0}
        self.startup = dict(self.idle)
        self.busy_seconds = 0.0

    # PowerSource
    def read(self) -> Any:
        from carbonspan.power.source import EnergyReading

        with self._lock:
            now = time.monotonic()
            cpu = BASE_W * (now - self.t0) + CPU_W * (time.process_time() - self.x0)
            gpu = GPU_W * (self._kernel_seconds + self._kernels * (now - self._kt))
            ram = step_energy(0.0, now - self.t0)
        return EnergyReading(time=now, cpu=cpu, gpu=gpu, ram=ram)

    def describe(self) -> Any:
        from carbonspan.power.source import HardwareInfo

        return HardwareInfo(
            cpu_model="physics",
            gpu_model="physics",
            gpu_count=1,
            measurement={"cpu": "fake", "gpu": "fake", "ram": "fake"},
        )

    # events, all under the lock
    def _advance(self) -> float:
        now = time.monotonic()
        own = 0.0
        for burst in self._bursts.values():
            seen = time.clock_gettime(burst.clock)
            used = seen - burst.seen
            burst.seen = seen
            burst.record.own_cpu += used
            burst.record.cpu += CPU_W * used
            own += used
        x = time.process_time()
        n = len(self._open)
        if now > self._t:
            rest = (x - self._x) - own
            cpu = BASE_W * (now - self._t) + CPU_W * rest
            ram = step_energy(self._t - self.t0, now - self.t0)
            if n:
                self.busy_seconds += now - self._t
                for record in self._open.values():
                    record.cpu += cpu / n
                    record.ram += ram / n
            else:
                # Before the first request: the server starting, apart.
                idle = self.idle if self.records else self.startup
                idle["cpu"] += cpu
                idle["ram"] += ram
                idle["seconds"] += now - self._t
                idle["cpu_seconds"] += rest
        self._t, self._x = now, x
        return now

    def books(self) -> dict[str, float]:
        """Source's joules - (sum of the truth + idle joules), per component:
        0 up to rounding if the truth accounts for every joule."""
        with self._lock:
            self._advance()
            now, x = self._t, self._x
            drawn = {
                "cpu": BASE_W * (now - self.t0) + CPU_W * (x - self.x0),
                "ram": step_energy(0.0, now - self.t0),
                "gpu": GPU_W
                * (self._kernel_seconds + self._kernels * (now - self._kt)),
            }
            out = {}
            for name, joules in drawn.items():
                true = sum(getattr(r, name) for r in self.records)
                idle = self.idle.get(name, 0.0) + self.startup.get(name, 0.0)
                out[name] = joules - true - idle
            return out

    def open(self, kind: str, span_id: int) -> Record:
        with self._lock:
            now = self._advance()
            self._ids += 1
            record = Record(self._ids, kind, span_id, now)
            self._open[record.id] = record
            self.records.append(record)
            return record

    def close(self, record: Record) -> None:
        with self._lock:
            record.end = self._advance()
            del self._open[record.id]

    def work(self, record: Record, seconds: float) -> None:
        """Burn `seconds` of this thread's CPU on behalf of `record`."""
        clock = time.pthread_getcpuclockid(threading.get_ident())
        key = threading.get_ident()
        with self._lock:
            self._advance()
            self._bursts[key] = _Burst(record, clock, time.clock_gettime(clock))
        spin(seconds)
        with self._lock:
            self._advance()
            del self._bursts[key]

    def kernel_begin(self) -> float:
        with self._lock:
            now = self._advance()
            self._kernel_seconds += self._kernels * (now - self._kt)
            self._kt = now
            self._kernels += 1
            return now

    def kernel_end(self, record: Record, began: float) -> None:
        with self._lock:
            now = self._advance()
            self._kernel_seconds += self._kernels * (now - self._kt)
            self._kt = now
            self._kernels -= 1
            record.gpu += GPU_W * (now - began)


def spin(seconds: float) -> None:
    """Busy the calling thread for `seconds` of its own CPU time."""
    start = time.thread_time()
    x = 0
    while time.thread_time() - start < seconds:
        for i in range(100):
            x = (x + i * i) % 1_000_003


_record: ContextVar[Record | None] = ContextVar("accuracy_record", default=None)


class TruthMiddleware:
    """Opens the request's truth record; closes it at the final body.

    Added with `add_middleware`, it sits inside carbonspan's middleware, which
    wraps the span creator's app, so its interval is nested in carbonspan's
    window and the server span is current.
    """

    def __init__(self, app: ASGIApp, truth: Truth) -> None:
        self.app = app
        self.truth = truth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_"):
            await self.app(scope, receive, send)
            return
        from opentelemetry import trace

        span_id = trace.get_current_span().get_span_context().span_id
        record = self.truth.open(scope["path"].strip("/"), span_id)
        token = _record.set(record)
        closed = False

        async def send_and_close(message: Message) -> None:
            nonlocal closed
            final = message["type"] == "http.response.body" and not message.get(
                "more_body", False
            )
            if final and not closed:
                closed = True
                self.truth.close(record)
            await send(message)

        try:
            await self.app(scope, receive, send_and_close)
        finally:
            if not closed:
                closed = True
                self.truth.close(record)
            _record.reset(token)


def add_work_routes(app: Any, truth: Truth) -> None:
    """/work (async: CPU, kernel, sleep), /sync (the thread pool) and /stream,
    each charging its own work to the request's truth record."""
    from fastapi.responses import StreamingResponse

    def current() -> Record:
        record = _record.get()
        assert record is not None
        return record

    async def work_async(record: Record, cpu: float) -> None:
        # In slices of at most 2 ms, yielding to the loop between them.
        while cpu > 1e-9:
            piece = min(cpu, 0.002)
            truth.work(record, piece)
            cpu -= piece
            await asyncio.sleep(0)

    @app.get("/work")
    async def work(cpu: float = 0.0, gpu: float = 0.0, sleep: float = 0.0) -> Any:
        record = current()
        await work_async(record, cpu)
        if gpu > 0:
            began = truth.kernel_begin()
            await asyncio.sleep(gpu)
            truth.kernel_end(record, began)
        if sleep > 0:
            await asyncio.sleep(sleep)
        return {"ok": True}

    @app.get("/sync")
    def work_sync(cpu: float = 0.0, gpu: float = 0.0) -> Any:
        # A sync handler: Starlette runs it in its thread pool.
        record = current()
        truth.work(record, cpu)
        if gpu > 0:
            began = truth.kernel_begin()
            time.sleep(gpu)
            truth.kernel_end(record, began)
        return {"ok": True}

    @app.get("/stream")
    async def stream(chunks: int = 4, cpu: float = 0.001, gap: float = 0.01) -> Any:
        record = current()

        async def body() -> Any:
            for k in range(chunks):
                await work_async(record, cpu)
                yield b"x" * 256 + b"\n"
                if k + 1 < chunks:
                    await asyncio.sleep(gap)

        return StreamingResponse(body(), media_type="text/plain")


def results(truth: Truth, spans: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The truth per request beside its span's figures (by span id)."""
    import carbonspan
    from netguard import NETWORK

    return {
        "carbonspan": carbonspan.__file__,
        "blocked": list(NETWORK.blocked),
        "books": truth.books(),
        "idle": truth.idle,
        "busy_seconds": truth.busy_seconds,
        "requests": [
            {
                "id": r.id,
                "kind": r.kind,
                "start": r.start - truth.t0,
                "duration": (r.end or r.start) - r.start,
                "closed": r.end is not None,
                "own_cpu": r.own_cpu,
                "true": {"cpu": r.cpu, "ram": r.ram, "gpu": r.gpu},
                "span": spans.get(r.span_id),
            }
            for r in truth.records
        ],
    }


def build_app(policy: str, interval: float) -> Any:
    from fastapi import FastAPI
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
        InMemorySpanExporter,
    )
    from opentelemetry.trace import SpanKind

    from carbonspan import CodeCarbonInstrumentor

    truth = Truth()
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    meter_provider = MeterProvider()
    app = FastAPI()
    add_work_routes(app, truth)

    @app.get("/_results")
    def results_route() -> Any:
        spans = {}
        for span in exporter.get_finished_spans():
            if span.kind != SpanKind.SERVER or span.context is None:
                continue
            attrs = span.attributes or {}
            spans[span.context.span_id] = {
                k: v for k, v in attrs.items() if k.startswith("codecarbon.")
            }
        return results(truth, spans)

    app.add_middleware(TruthMiddleware, truth=truth)
    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=tracer_provider, meter_provider=meter_provider
    )
    CodeCarbonInstrumentor().instrument_app(
        app,
        power_source=truth,
        attribution=policy,
        sample_interval=interval,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
    )
    return app


def serve(port: int, policy: str, limit: float) -> None:
    from netguard import NETWORK

    NETWORK.install()
    import uvicorn

    app = build_app(policy, SAMPLE_INTERVAL)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        loop="asyncio",
        http="h11",
        lifespan="on",
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)
    # Stop when the benchmark is gone, or after `limit` seconds whatever.
    exit_with_parent(os.getppid(), lambda: os._exit(3), limit=limit)
    server.run()


# -- the client ----------------------------------------------------------------


class Server:
    """One server process for one workload x policy x carbonspan version."""

    def __init__(self, policy: str, src: str | None, limit: float) -> None:
        self.port = free_port()
        env = dict(os.environ)
        if src is not None:
            env["PYTHONPATH"] = src
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "accuracy.py"),
                "--serve",
                str(self.port),
                "--policy",
                policy,
                "--limit",
                str(limit),
            ],
            env=env,
            cwd=str(HERE),
        )

    def wait_accepting(self, timeout: float = 60.0) -> None:
        wait_accepting(self.proc, self.port, timeout)

    def results(self) -> dict[str, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("GET", "/_results")
        data: dict[str, Any] = json.loads(conn.getresponse().read())
        conn.close()
        return data

    def stop(self) -> None:
        terminate(self.proc)
        wait_or_kill(self.proc, 10)


def get(conn: http.client.HTTPConnection, path: str) -> None:
    conn.request("GET", path)
    response = conn.getresponse()
    response.read()
    if response.status != 200:
        raise RuntimeError(f"GET {path}: {response.status}")


def ms(rng: random.Random, low: float, high: float) -> float:
    return round(rng.uniform(low, high) / 1000, 6)


def clients(port: int, n: int, seconds: float, draw: Callable[..., str]) -> None:
    """`n` threads, each with its own connection, back to back for `seconds`."""
    deadline = time.monotonic() + seconds
    errors: list[BaseException] = []

    def run(k: int) -> None:
        rng = random.Random(1000 + k)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            while time.monotonic() < deadline:
                get(conn, draw(rng))
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def run_sporadic(server: Server, quick: bool) -> None:
    server.wait_accepting()
    time.sleep(0.5)  # an idle server
    rng = random.Random(1)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    for _ in range(40 if quick else 120):
        get(conn, f"/work?cpu={ms(rng, 2, 20)}")
        time.sleep(rng.uniform(0.030, 0.120))
    conn.close()


def draw_steady(rng: random.Random) -> str:
    gpu = ms(rng, 5, 20) if rng.random() < 1 / 3 else 0.0
    return f"/work?cpu={ms(rng, 2, 15)}&gpu={gpu}"


def draw_mixed(rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        return f"/work?sleep={ms(rng, 20, 200)}"
    if kind == 1:
        return f"/work?cpu={ms(rng, 20, 80)}"
    if kind == 2:
        return f"/sync?cpu={ms(rng, 20, 80)}"
    return f"/work?gpu={ms(rng, 20, 100)}"


def draw_streaming(rng: random.Random) -> str:
    chunks = rng.randint(4, 12)
    return f"/stream?chunks={chunks}&cpu={ms(rng, 0.5, 3)}&gap={ms(rng, 5, 25)}"


def back_to_back(
    n: int, draw: Callable[[random.Random], str]
) -> Callable[[Server, bool], None]:
    """A workload: `n` clients back to back, each request drawn by `draw`,
    for 6 s (2 s with --quick) once the server is up."""

    def run(server: Server, quick: bool) -> None:
        server.wait_accepting()
        time.sleep(0.3)
        clients(server.port, n, 2.0 if quick else 6.0, draw)

    return run


def run_burst(server: Server, quick: bool) -> None:
    """50 requests, connected and sent the moment the server accepts."""
    rng = random.Random(5)
    paths = []
    for _ in range(50):
        gpu = ms(rng, 5, 30) if rng.random() < 0.5 else 0.0
        paths.append(f"/work?cpu={ms(rng, 1, 8)}&gpu={gpu}")
    go = threading.Event()
    errors: list[BaseException] = []

    def run(path: str) -> None:
        go.wait()
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            get(conn, path)
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=run, args=(p,)) for p in paths]
    for t in threads:
        t.start()
    server.wait_accepting()
    go.set()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


RUNNERS: dict[str, Callable[[Server, bool], None]] = {
    "sporadic": run_sporadic,
    "steady": back_to_back(8, draw_steady),
    "mixed": back_to_back(8, draw_mixed),
    "streaming": back_to_back(4, draw_streaming),
    "burst": run_burst,
}


@dataclass
class Run:
    label: str
    workload: str
    policy: str
    carbonspan: str
    blocked: list[str]
    books: dict[str, float]  # the truth's own check: source - truth - idle (J)
    idle: dict[str, float]  # the truth's idle joules and seconds (from the
    # first request on)
    busy_seconds: float
    requests: list[dict[str, Any]] = field(default_factory=list)

    def true_watts(self, component: str) -> tuple[float, float]:
        """The true mean power while no request was in flight, and while any
        was."""
        idle = self.idle[component] / max(self.idle["seconds"], 1e-9)
        busy = sum(r["true"][component] for r in self.requests)
        return idle, busy / max(self.busy_seconds, 1e-9)


def run_one(
    label: str, src: str | None, workload: str, policy: str, quick: bool
) -> Run:
    server = Server(policy, src, limit=120.0)
    try:
        RUNNERS[workload](server, quick)
        time.sleep(0.3)  # the last spans end just after their final body
        data = server.results()
    finally:
        server.stop()
    return Run(
        label,
        workload,
        policy,
        data["carbonspan"],
        data["blocked"],
        data["books"],
        data["idle"],
        data["busy_seconds"],
        data["requests"],
    )


# -- analysis ------------------------------------------------------------------


@dataclass
class Stats:
    requests: int
    sum_ratio: float | None
    p10: float | None
    median: float | None
    p90: float | None
    zeros: int
    none: int


def reported(request: dict[str, Any], component: str) -> float | None:
    span = request["span"]
    if not span:
        return None
    value = span.get(f"codecarbon.energy.{component}")
    return None if value is None else float(value)


Select = Callable[[dict[str, Any]], bool]
#: Rows of the table: (workload, component, name, which requests).
SUBSETS: dict[str, list[tuple[str, Select]]] = {
    "mixed": [
        ("burners", lambda r: r["own_cpu"] > 0),
        ("waiters", lambda r: r["own_cpu"] == 0),
    ],
}


def stats(run: Run, component: str, select: Select | None = None) -> Stats | None:
    requests = [
        r for r in run.requests if r["closed"] and (select is None or select(r))
    ]
    if not any(r["true"][component] > 0 for r in requests):
        return None
    ratios: list[float] = []
    got = true = 0.0
    zeros = none = 0
    for r in requests:
        truth = r["true"][component]
        value = reported(r, component)
        if value is None:
            none += 1
            continue
        got += value
        true += truth
        if truth > 0:
            ratios.append(value / truth)
            if value == 0:
                zeros += 1
    p10 = median = p90 = None
    if ratios:
        ratios.sort()
        median = statistics.median(ratios)
        p10, p90 = quantile(ratios, 0.1), quantile(ratios, 0.9)
    return Stats(
        len(requests),
        got / true if true > 0 else None,
        p10,
        median,
        p90,
        zeros,
        none,
    )


def quantile(ordered: list[float], q: float) -> float:
    pos = q * (len(ordered) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(runs: list[Run], label: str) -> str:
    by = {(r.workload, r.policy): r for r in runs if r.label == label}
    head = "| workload | component | n |"
    rule = "|---|---|---|"
    for policy in POLICIES:
        head += f" {policy}: sum | p10 / median / p90 | 0 J / none |"
        rule += "---|---|---|"
    lines = [head, rule]
    rows: list[tuple[str, str, Select | None]] = []
    for workload in WORKLOADS:
        for component in COMPONENTS:
            rows.append((workload, component, None))
            if component == "cpu":
                rows += [
                    (f"{workload}: {name}", component, select)
                    for name, select in SUBSETS.get(workload, [])
                ]
    for name, component, select in rows:
        workload = name.split(":")[0]
        cells: list[Stats | None] = []
        count = 0
        for policy in POLICIES:
            run = by.get((workload, policy))
            s = stats(run, component, select) if run is not None else None
            if s is not None:
                count = max(count, s.requests)
            cells.append(s)
        if all(c is None for c in cells):
            continue
        line = f"| {name} | {component} | {count} |"
        for c in cells:
            if c is None:
                line += " | | |"
                continue
            spread = f"{fmt(c.p10)} / {fmt(c.median)} / {fmt(c.p90)}"
            line += f" {fmt(c.sum_ratio)} | {spread} | {c.zeros} / {c.none} |"
        lines.append(line)
    return "\n".join(lines)


def gpu_elsewhere(runs: list[Run], label: str) -> str:
    """GPU joules charged to requests that ran no kernel, per workload."""
    parts = []
    for run in runs:
        if run.label != label:
            continue
        total = elsewhere = 0.0
        for r in run.requests:
            value = reported(r, "gpu") or 0.0
            total += value
            if r["true"]["gpu"] == 0:
                elsewhere += value
        if total > 0:
            parts.append(f"{run.workload}/{run.policy} {elsewhere / total:.0%}")
    return ", ".join(parts)


#: The picture's columns: (title, component, workloads).
PANELS: list[tuple[str, str, tuple[str, ...]]] = [
    ("cpu, sporadic", "cpu", ("sporadic",)),
    ("cpu, concurrent workloads", "cpu", ("steady", "mixed", "streaming", "burst")),
    ("ram (steps), all workloads", "ram", WORKLOADS),
    ("gpu (bursts), all workloads", "gpu", WORKLOADS),
]


Points = tuple[list[float], list[float]]  # true J, reported J
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
MARKERS = ["o", "x", "s", "^"]


def panel_points(
    runs: list[Run], label: str, policy: str, component: str, workloads: Any
) -> Points:
    """(true, reported) J of every request with a figure and true J > 0."""
    xs: list[float] = []
    ys: list[float] = []
    for run in runs:
        if (run.label, run.policy) != (label, policy):
            continue
        if run.workload not in workloads:
            continue
        for r in run.requests:
            truth = r["true"][component]
            value = reported(r, component)
            if truth > 0 and value is not None:
                xs.append(truth)
                ys.append(value)
    return xs, ys


def scatter(ax: Any, points: dict[str, Points], floor: float) -> None:
    """One series per label; 0 J drawn as ▼ at `floor`."""
    for k, (label, (xs, ys)) in enumerate(points.items()):
        pairs = list(zip(xs, ys, strict=True))
        nonzero = [(x, y) for x, y in pairs if y > 0]
        zeros = [x for x, y in pairs if y <= 0]
        ax.scatter(
            [x for x, _ in nonzero],
            [y for _, y in nonzero],
            s=8,
            alpha=0.4,
            c=COLOURS[k],
            marker=MARKERS[k],
            linewidths=0.7,
            label=f"{label} ({len(xs)} requests)",
        )
        if zeros:
            ax.scatter(
                zeros,
                [floor] * len(zeros),
                s=26,
                c=COLOURS[k],
                marker="v",
                label=f"{label}: 0 J ({len(zeros)})",
            )


def panel(ax: Any, points: dict[str, Points], title: str) -> None:
    """Reported against true J, log-log, with the diagonal and ±20%."""
    from matplotlib.ticker import NullFormatter

    every = [x for xs, _ in points.values() for x in xs]
    positive = [y for _, ys in points.values() for y in ys if y > 0]
    if not every:
        ax.set_visible(False)
        return
    low, high = min(every), max(every)
    floor = min([*positive, low]) / 4
    scatter(ax, points, floor)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    line = [min(low, floor) / 2, high * 4]
    ax.plot(line, line, color="black", linewidth=0.8, label="reported = true")
    ax.fill_between(
        line,
        [v * 0.8 for v in line],
        [v * 1.2 for v in line],
        color="grey",
        alpha=0.2,
        label="±20%",
    )
    top = max([*positive, high])
    ax.set_xlim(low / 1.5, high * 1.5)
    ax.set_ylim(floor / 1.5, top * 1.5)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("true J per request")
    ax.set_ylabel("reported J on the span")
    ax.legend(fontsize=7, loc="upper left")


def plot(runs: list[Run], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(r.label for r in runs))
    fig, axes = plt.subplots(
        len(POLICIES), len(PANELS), figsize=(17, 8.5), squeeze=False
    )
    for i, policy in enumerate(POLICIES):
        for j, (title, component, workloads) in enumerate(PANELS):
            points = {
                label: panel_points(runs, label, policy, component, workloads)
                for label in labels
            }
            panel(axes[i][j], points, f"{title}: {policy}")
    fig.suptitle(
        "Per-request energy against known physics "
        f"(sample_interval {SAMPLE_INTERVAL} s); 0 J drawn as ▼ at the bottom"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- main ----------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter workloads")
    parser.add_argument(
        "--matrix",
        action="store_true",
        help="the handler shapes x drivers x policies x sources matrix (matrix.py)",
    )
    parser.add_argument(
        "--src",
        action="append",
        metavar="LABEL=PATH",
        help="a carbonspan src dir for the servers' PYTHONPATH, labelled "
        "(repeatable; versions run interleaved). Default: the inherited "
        "PYTHONPATH, labelled by --label",
    )
    parser.add_argument("--label", default="current")
    parser.add_argument("--workload", action="append", choices=WORKLOADS)
    parser.add_argument("--policy", action="append", choices=POLICIES)
    parser.add_argument("--json", help="write every request's figures here")
    parser.add_argument("--load", action="append", help="read runs from --json files")
    parser.add_argument("--plot", help="PNG of reported vs true J per request")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=float, default=120.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve, (args.policy or ["time_share"])[0], args.limit)
        return
    if args.matrix:
        import matrix

        matrix.main(args.quick, args.json)
        return

    runs: list[Run] = []
    if args.load:
        for name in args.load:
            runs += [Run(**r) for r in json.loads(Path(name).read_text())]
    else:
        runs = measure(args)
    labels = list(dict.fromkeys(r.label for r in runs))
    for label in labels:
        files = sorted({r.carbonspan for r in runs if r.label == label})
        print(f"\n### {label} ({', '.join(files)})\n")
        print(table(runs, label))
        print(f"\nGPU J on requests that ran no kernel: {gpu_elsewhere(runs, label)}")
        blocked = sorted({b for r in runs if r.label == label for b in r.blocked})
        if blocked:
            print(f"network calls refused: {blocked}")
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in runs]))
    if args.plot:
        plot(runs, args.plot)
        print(f"\nwrote {args.plot}")


def measure(args: argparse.Namespace) -> list[Run]:
    versions: list[tuple[str, str | None]] = []
    for item in args.src or []:
        label, _, path = item.partition("=")
        versions.append((label, str(Path(path).resolve())))
    if not versions:
        versions = [(args.label, None)]
    runs: list[Run] = []
    before = machine.snapshot()
    started = time.monotonic()
    for workload in args.workload or WORKLOADS:
        for policy in args.policy or POLICIES:
            # Versions back to back, so that the machine's load hits them alike.
            for label, src in versions:
                t0 = time.monotonic()
                run = run_one(label, src, workload, policy, args.quick)
                runs.append(run)
                idle, busy = run.true_watts("cpu")
                books = max(abs(v) for v in run.books.values())
                print(
                    f"{label:>8} {workload:>9} {policy:>10}: "
                    f"{len(run.requests):4d} requests, {time.monotonic() - t0:4.1f} s; "
                    f"true cpu W idle {idle:.1f}, in flight {busy:.1f}; "
                    f"truth books off by {books:.1e} J",
                    flush=True,
                )
    after = machine.snapshot()
    print(f"\n{time.monotonic() - started:.0f} s in all")
    # The servers are waited-for children: snapshots count them as ours.
    print(machine.describe(machine.others(before, after)))
    return runs


if __name__ == "__main__":
    main()
