"""The handler shapes people write, on a power source whose physics is known.

One FastAPI app with a route per shape, each burning a given number of
milliseconds of its thread's CPU:

async_one     an ``async def`` that computes without awaiting (one step)
async_awaits  an ``async def`` that awaits between four slices of work
sync          a ``def``, run in the thread pool
dependency    a ``def`` dependency with ``yield`` that does the work
streaming     a ``StreamingResponse`` whose generator works between 4 chunks
background    a ``def`` that does the work, then a background task that does
              as much again after the response (not part of the span)

The app is measured with `carbonspan.testing.ProcessCpuPowerSource`
(P = 2 W + 30 W x the process's CPU utilisation). For each request a
measurement hook records what carbonspan reported and the two truths that
bound it:

lower   30 W x the CPU seconds of the request's own work + 2 W x its duration
upper   30 W x the process's CPU seconds while it was served (framework,
        instrumentation, sampler and other requests included; in process,
        from the client's send to its having the response, since the client
        is the process's work too) + 2 W x its duration

`build(policy)` gives the app for in-process drivers; served by uvicorn or
hypercorn (`served`) it reads ``SHAPES_POLICY`` and gives what it saw at
``GET /results``.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from typing import Any

from fastapi import BackgroundTasks, Depends, FastAPI
from fastapi.responses import StreamingResponse
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.trace import TracerProvider

from carbonspan import CodeCarbonInstrumentor
from carbonspan.attribution.measurement import Measurement
from carbonspan.otel.instrumentor import instrumentation_of
from carbonspan.testing import ProcessCpuPowerSource

SHAPES = ("async_one", "async_awaits", "sync", "dependency", "streaming", "background")
BASE_W, CPU_W = 2.0, 30.0


@dataclass
class Record:
    """One request: what it did, what carbonspan reported, the truths."""

    shape: str
    x0: float  # the process's CPU clock when the request entered the app
    own: float = 0.0  # CPU seconds of the request's own work
    after: float = 0.0  # CPU seconds of its background work
    reported: float | None = None  # J of CPU on its span
    power: float | None = None  # W of CPU on its span
    duration: float = 0.0
    process: float = 0.0  # the process's CPU seconds while it was served
    #: In process: the process's CPU seconds from the moment the client sent
    #: the request until it had the response (the client is the process's
    #: own work too). 0 over a real server.
    served: float = 0.0

    @property
    def lower(self) -> float:
        return CPU_W * self.own + BASE_W * self.duration

    @property
    def upper(self) -> float:
        served = self.served - self.after  # the background work is off the span
        return CPU_W * max(self.process, served) + BASE_W * self.duration


_record: ContextVar[Record | None] = ContextVar("shapes_record", default=None)


def work(ms: float, background: bool = False) -> None:
    """Burn `ms` milliseconds of this thread's CPU, counted to the request."""
    start = time.thread_time()
    end = start + ms / 1000.0
    while time.thread_time() < end:
        pass
    record = _record.get()
    if record is not None:
        used = time.thread_time() - start
        if background:
            record.after += used
        else:
            record.own += used


class Mark:
    """Just inside carbonspan: opens each request's record."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        shape = path.strip("/")
        if scope["type"] != "http" or shape not in SHAPES:
            await self.app(scope, receive, send)
            return
        record = Record(shape, time.process_time())
        scope["shapes.record"] = record
        token = _record.set(record)
        try:
            await self.app(scope, receive, send)
        finally:
            _record.reset(token)


def _hook(records: list[Record]) -> Any:
    def hook(span: Any, scope: Any, measurement: Measurement) -> None:
        record = scope.get("shapes.record")
        if record is None:
            return
        record.process = time.process_time() - record.x0
        record.reported = measurement.cpu
        record.power = measurement.cpu_power
        record.duration = measurement.duration
        records.append(record)

    return hook


def _dependency(ms: float = 5.0) -> Iterator[None]:
    work(ms)
    yield


def build(policy: str, source: str = "physics", *, contrib: bool = True) -> FastAPI:
    """The app, instrumented with `policy`, measured by `source` (``physics``:
    `ProcessCpuPowerSource`; ``codecarbon``: the default, CodeCarbon's
    hardware); its records in `app.state.records`."""
    app = FastAPI()
    records: list[Record] = []
    app.state.records = records

    @app.get("/async_one")
    async def async_one(ms: float = 5.0) -> dict[str, str]:
        work(ms)
        return {"shape": "async_one"}

    @app.get("/async_awaits")
    async def async_awaits(ms: float = 5.0) -> dict[str, str]:
        for _ in range(4):
            work(ms / 4)
            await asyncio.sleep(0)
        return {"shape": "async_awaits"}

    @app.get("/sync")
    def sync(ms: float = 5.0) -> dict[str, str]:
        work(ms)
        return {"shape": "sync"}

    @app.get("/dependency", dependencies=[Depends(_dependency)])
    async def dependency() -> dict[str, str]:
        return {"shape": "dependency"}

    @app.get("/streaming")
    async def streaming(ms: float = 5.0) -> StreamingResponse:
        async def chunks() -> Any:
            for i in range(4):
                work(ms / 4)
                yield f"chunk {i}\n".encode()
                await asyncio.sleep(0)

        return StreamingResponse(chunks(), media_type="text/plain")

    @app.get("/background")
    def background(tasks: BackgroundTasks, ms: float = 5.0) -> dict[str, str]:
        work(ms)
        tasks.add_task(work, ms, True)
        return {"shape": "background"}

    @app.get("/results")
    def results() -> list[dict[str, Any]]:
        return [{**asdict(r), "lower": r.lower, "upper": r.upper} for r in records]

    @app.get("/hardware")
    def hardware() -> dict[str, Any]:
        instrumentation = instrumentation_of(app)
        if instrumentation is None:
            return {"ready": False, "busy_watts": {}}
        return {
            "ready": instrumentation.ledger.last_time is not None,
            "busy_watts": instrumentation.sampler.info.busy_watts,
        }

    app.add_middleware(Mark)
    if contrib:
        FastAPIInstrumentor.instrument_app(app, tracer_provider=TracerProvider())
    physics = ProcessCpuPowerSource(BASE_W, CPU_W) if source == "physics" else None
    CodeCarbonInstrumentor().instrument_app(
        app,
        power_source=physics,
        country_iso_code="FRA",
        attribution=policy,
        measurement_hook=_hook(records),
        excluded_urls="/results,/hardware",
    )
    return app


def served() -> FastAPI:
    """The app for a server, from ``SHAPES_POLICY`` and ``SHAPES_SOURCE``:
    ``uvicorn --factory shapes:served``, ``hypercorn "shapes:served()"``."""
    policy = os.environ.get("SHAPES_POLICY", "time_share")
    return build(policy, os.environ.get("SHAPES_SOURCE", "physics"))


def plan(rounds: int, seed: int = 7) -> Iterator[tuple[str, float, float]]:
    """Sporadic traffic: every shape once a round with the same 2-20 ms of
    CPU (drawn anew each round), 30-120 ms apart, as (path, ms of CPU,
    seconds to pause after)."""
    rng = random.Random(seed)
    for _ in range(rounds):
        ms = rng.uniform(2.0, 20.0)
        for shape in SHAPES:
            yield f"/{shape}", ms, rng.uniform(0.03, 0.12)


async def drive(
    get: Any, rounds: int, seed: int = 7, records: list[Record] | None = None
) -> None:
    """`plan`'s traffic; `get(path, ms)` sends one request and waits for it.
    With the app's `records` (in process), each one's `served` is timed."""
    for path, ms, pause in plan(rounds, seed):
        x0 = time.process_time()
        await get(path, ms)
        if records:
            records[-1].served = time.process_time() - x0
        await asyncio.sleep(pause)


@dataclass
class Cell:
    """One shape's requests, summed up against the truths."""

    n: int
    lower: float  # median of reported / lower
    upper: float  # median of reported / upper
    median_j: float  # median reported J
    zeros: int  # requests at 0 J (or with no figure) while the source drew power


def summary(records: list[Record] | list[dict[str, Any]]) -> dict[str, Cell]:
    rows = [asdict(r) | {"lower": r.lower, "upper": r.upper} if isinstance(r, Record)
            else r for r in records]  # fmt: skip
    out = {}
    for shape in SHAPES:
        mine = [r for r in rows if r["shape"] == shape]
        if not mine:
            continue
        got = [r["reported"] or 0.0 for r in mine]
        out[shape] = Cell(
            n=len(mine),
            lower=statistics.median(
                g / r["lower"] for g, r in zip(got, mine, strict=True)
            ),
            upper=statistics.median(
                g / r["upper"] for g, r in zip(got, mine, strict=True)
            ),
            median_j=statistics.median(got),
            zeros=sum(1 for g in got if g <= 0.0),
        )
    return out
