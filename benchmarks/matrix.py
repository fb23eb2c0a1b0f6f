"""The accuracy matrix: every handler shape, through every driver, under both
policies and both kinds of source, each cell run three times.

Shapes and truths are those of `shapes` (see its docstring). Drivers:

uvicorn-h11     real uvicorn, ``--loop asyncio --http h11`` (a subprocess)
uvicorn-uvloop  real uvicorn, ``--loop uvloop --http httptools``
hypercorn       real hypercorn (asyncio)
httpx-asgi      in process, httpx's ``ASGITransport``
testclient      in process, Starlette's ``TestClient``

Sources: ``physics`` (`ProcessCpuPowerSource`, the truths bound each request)
and ``codecarbon`` (CodeCarbon's real hardware source, the default; its own
model's truth is a busy core's power, `HardwareInfo.busy_watts`).

For each cell: median reported/lower and reported/upper (physics), or median
``codecarbon.power.cpu`` over the source's busy-core power (codecarbon); the
median reported J; requests at 0 J; and the spread of the per-run medians
over the repeats, (max - min) / median. Then, on an idle server with the
CodeCarbon source, the CPU power of 5 ms requests against 300 ms ones.

    python benchmarks/accuracy.py --matrix [--quick] [--json out.json]

Every server listens on 127.0.0.1 only; each run is bounded (``--quick``:
3 rounds and 2 repeats instead of 6 and 3).
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

import machine
import shapes
from harness import (
    env_with_path,
    free_port,
    terminate,
    uvicorn_command,
    wait_accepting,
    wait_or_kill,
)

HERE = Path(__file__).resolve().parent
DRIVERS = ("uvicorn-h11", "uvicorn-uvloop", "hypercorn", "httpx-asgi", "testclient")
SOURCES = ("physics", "codecarbon")
POLICIES = ("time_share", "cpu_time")
NAN = float("nan")

#: (path, ms, pause): one sent request.
Plan = Iterator[tuple[str, float, float]]


@contextmanager
def server(driver: str, policy: str, source: str) -> Iterator[str]:
    """A real server of `shapes.served` on 127.0.0.1; yields its URL."""
    port = free_port()
    if driver == "hypercorn":
        command = [sys.executable, "-m", "hypercorn", "shapes:served()",
                   "--bind", f"127.0.0.1:{port}", "--log-level", "warning"]  # fmt: skip
    else:
        loop, http = ("uvloop", "httptools") if driver == "uvicorn-uvloop" else (
            "asyncio", "h11")  # fmt: skip
        command = uvicorn_command(
            "shapes:served", port, "--factory", loop=loop, http=http
        )
    env = env_with_path(str(HERE))
    env.update(SHAPES_POLICY=policy, SHAPES_SOURCE=source)
    proc = subprocess.Popen(command, env=env, cwd=HERE)
    try:
        wait_accepting(proc, port, 60.0)
        yield f"http://127.0.0.1:{port}"
    finally:
        terminate(proc)
        wait_or_kill(proc, 10.0)


def warm(get: Callable[[str, float], Any]) -> None:
    """Requests until the sampler has read the source (hardware detection
    takes about 2 s for CodeCarbon's), then a few ticks more."""
    for _ in range(3):
        get("/sync", 1.0)
        time.sleep(0.1)


def run_served(driver: str, policy: str, source: str, plan: Plan) -> dict[str, Any]:
    with (
        server(driver, policy, source) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        return _run(client, plan)


def run_in_process(driver: str, policy: str, source: str, plan: Plan) -> dict[str, Any]:
    from starlette.testclient import TestClient

    from carbonspan import CodeCarbonInstrumentor

    app = shapes.build(policy, source)
    try:
        if driver == "testclient":
            with TestClient(app) as client:
                return _run(client, plan, app.state.records)
        return asyncio.run(_run_httpx(app, plan))
    finally:
        CodeCarbonInstrumentor.uninstrument_app(app)


async def _run_httpx(app: Any, plan: Plan) -> dict[str, Any]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:

        async def get(path: str, ms: float) -> None:
            assert (await c.get(path, params={"ms": ms})).status_code == 200

        for _ in range(3):
            await get("/sync", 1.0)
            await asyncio.sleep(0.1)
        await _until_read(app)
        start = len(app.state.records)
        for path, ms, pause in plan:
            x0 = time.process_time()
            await get(path, ms)
            app.state.records[-1].served = time.process_time() - x0
            await asyncio.sleep(pause)
        busy = (await c.get("/hardware")).json()["busy_watts"]
        return {
            "records": [_row(r) for r in app.state.records[start:]],
            "busy_watts": busy,
        }


async def _until_read(app: Any) -> None:
    from carbonspan.otel.instrumentor import instrumentation_of

    instrumentation = instrumentation_of(app)
    deadline = time.monotonic() + 30.0
    while instrumentation is not None and instrumentation.ledger.last_time is None:
        if time.monotonic() > deadline:
            raise RuntimeError("the sampler took no reading")
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.25)


def _row(r: shapes.Record) -> dict[str, Any]:
    return {**r.__dict__, "lower": r.lower, "upper": r.upper}


def _run(
    client: Any, plan: Plan, records: list[shapes.Record] | None = None
) -> dict[str, Any]:
    """`plan` through a blocking client (httpx's, or Starlette's TestClient);
    with the app's `records` (in process), each one's `served` is timed."""

    def get(path: str, ms: float) -> None:
        assert client.get(path, params={"ms": ms}).status_code == 200

    def hardware() -> dict[str, Any]:
        answer: dict[str, Any] = client.get("/hardware").json()
        return answer

    warm(get)
    deadline = time.monotonic() + 30.0
    while not hardware()["ready"] and time.monotonic() < deadline:  # detected
        time.sleep(0.1)
    time.sleep(0.25)
    start = len(client.get("/results").json())
    for path, ms, pause in plan:
        x0 = time.process_time()
        get(path, ms)
        if records:
            records[-1].served = time.process_time() - x0
        time.sleep(pause)
    rows = client.get("/results").json()[start:]
    return {"records": rows, "busy_watts": hardware()["busy_watts"]}


def run(driver: str, policy: str, source: str, plan: Plan) -> dict[str, Any]:
    if driver in ("httpx-asgi", "testclient"):
        return run_in_process(driver, policy, source, plan)
    return run_served(driver, policy, source, plan)


def spread(values: list[float]) -> float:
    """(max - min) / median; 0 for equal values, even at 0."""
    if not values or max(values) == min(values):
        return 0.0
    middle = statistics.median(values)
    return (max(values) - min(values)) / middle if middle else math.inf


def _median_ratio(got: list[float], rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(g / x[key] for g, x in zip(got, rows, strict=True))


def cells(runs: list[dict[str, Any]], source: str) -> dict[str, dict[str, float]]:
    """Per shape, over the repeated runs of one (driver, source, policy)."""
    out: dict[str, dict[str, float]] = {}
    for shape in shapes.SHAPES:
        per_run = []
        for r in runs:
            rows = [x for x in r["records"] if x["shape"] == shape]
            if not rows:
                continue
            busy = r["busy_watts"].get("cpu")
            got = [x["reported"] or 0.0 for x in rows]
            power = [x["power"] for x in rows if x["power"] is not None]
            per_run.append({
                "n": len(rows),
                "lower": _median_ratio(got, rows, "lower"),
                "upper": _median_ratio(got, rows, "upper"),
                "busy": statistics.median(power) / busy if power and busy else NAN,
                "median_j": statistics.median(got),
                "zeros": sum(1 for g in got if g <= 0.0),
            })  # fmt: skip
        if not per_run:
            continue
        key = "lower" if source == "physics" else "busy"
        out[shape] = {
            name: statistics.median(p[name] for p in per_run)
            for name in ("lower", "upper", "busy", "median_j")
        } | {
            "zeros": sum(p["zeros"] for p in per_run),
            "n": sum(p["n"] for p in per_run),
            "spread": spread([p[key] for p in per_run]),
        }
    return out


def lengths(driver: str, policy: str) -> dict[str, float]:
    """CodeCarbon's source, idle server: CPU W of 5 ms requests, then 300 ms,
    then 5 ms again; over the source's busy-core power."""

    def plan() -> Plan:
        for ms, n in ((5.0, 20), (300.0, 6), (5.0, 20)):
            for _ in range(n):
                yield "/sync", ms, 0.08

    result = run(driver, policy, "codecarbon", plan())
    rows, busy = result["records"], result["busy_watts"].get("cpu")
    watts = [x["power"] or 0.0 for x in rows]
    return {
        "busy_watts": busy or float("nan"),
        "short": statistics.median(watts[:20]),
        "long": statistics.median(watts[20:26]),
        "short_after": statistics.median(watts[26:]),
    }


def main(quick: bool = False, json_path: str | None = None) -> None:
    rounds, repeats = (3, 2) if quick else (6, 3)
    before = machine.snapshot()
    started = time.monotonic()
    matrix: dict[str, Any] = {}
    print(f"{'driver':>15} {'source':>10} {'policy':>10} {'shape':>13} "
          f"{'rep/low':>7} {'rep/up':>7} {'W/busy':>7} {'med J':>7} "
          f"{'zeros':>6} {'spread':>6}")  # fmt: skip
    for driver in DRIVERS:
        for source in SOURCES:
            for policy in POLICIES:
                # The same traffic each time: a figure must repeat.
                runs = [run(driver, policy, source, shapes.plan(rounds))
                        for _ in range(repeats)]  # fmt: skip
                table = cells(runs, source)
                matrix[f"{driver}/{source}/{policy}"] = table
                for shape, c in table.items():
                    low = f"{c['lower']:7.2f}" if source == "physics" else f"{'-':>7}"
                    up = f"{c['upper']:7.2f}" if source == "physics" else f"{'-':>7}"
                    busy = f"{c['busy']:7.2f}" if source != "physics" else f"{'-':>7}"
                    print(f"{driver:>15} {source:>10} {policy:>10} {shape:>13} "
                          f"{low} {up} {busy} {c['median_j']:7.3f} "
                          f"{int(c['zeros']):3d}/{int(c['n']):<2d} {c['spread']:6.1%}",
                          flush=True)  # fmt: skip
    print("\nCodeCarbon source, idle server, sync handler: CPU W by request length")
    print(f"{'driver':>15} {'policy':>10} {'busy core':>9} {'5 ms':>6} {'300 ms':>6} "
          f"{'5 ms again':>10}")  # fmt: skip
    for driver in ("uvicorn-h11", "httpx-asgi"):
        for policy in POLICIES:
            w = lengths(driver, policy)
            matrix[f"lengths/{driver}/{policy}"] = w
            print(f"{driver:>15} {policy:>10} {w['busy_watts']:9.2f} {w['short']:6.2f} "
                  f"{w['long']:6.2f} {w['short_after']:10.2f}", flush=True)  # fmt: skip
    after = machine.snapshot()
    print(f"\n{time.monotonic() - started:.0f} s in all")
    print(machine.describe(machine.others(before, after)))
    if json_path:
        Path(json_path).write_text(json.dumps(matrix, indent=1))
