"""Processes and clocks (hardening item 7): fork after instrumenting; a jump of
the time-of-day clock."""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI

from carbonspan.otel import attributes as a
from carbonspan.otel import reporter
from carbonspan.otel.instrumentor import instrumentation_of
from carbonspan.testing import ConstantPowerSource
from support.asgi import client, fetch
from support.checks import (
    assert_no_open_window,
    async_wait_for,
    conserved,
    wait_for,
)
from support.fakes import Clock, Recorded
from support.otel import Instrumented, Otel, attrs, ready_app, wait_ready

CPU_W, RAM_W = 10.0, 2.0


def child_run(app: Any, otel: Otel, forked_at: float) -> dict[str, Any]:
    """In the forked child: what it inherited, then its own measurements."""
    inst = instrumentation_of(app)
    assert inst is not None
    ledger = inst.ledger
    got: dict[str, Any] = {
        "inherited_thread": inst.sampler.started,
        "inherited_reading": ledger.first_time is not None,
        "inherited_in_flight": ledger.in_flight,
    }
    otel.exporter.clear()
    got["first"] = fetch(app, ["/sleep?seconds=0.02"])  # starts the sampler
    got["thread_after_first"] = inst.sampler.running
    wait_ready(inst, readings=3)  # a few readings of its own
    got["second"] = fetch(app, ["/sleep?seconds=0.05"])
    inst.sampler.sample()
    spans = otel.server_spans()
    got["spans"] = [attrs(s) for s in spans]
    first = ledger.first_time
    got["first_reading_after_fork"] = first is not None and first > forked_at
    totals = ledger.totals()
    got["attributed_cpu"] = totals.attributed[0] - totals.after_response[0]
    got["in_flight"] = ledger.in_flight
    return got


def test_fork_child_measures_on_its_own_and_parent_is_unaffected(
    otel: Otel, instrument: Instrumented
) -> None:
    source = Recorded(ConstantPowerSource(cpu=CPU_W, ram=RAM_W))
    app, inst = ready_app(instrument, otel, power_source=source, sample_interval=0.01)
    assert fetch(app, ["/sleep?seconds=0.02"]) == [200]
    parent_first = inst.ledger.first_time
    read_end, write_end = os.pipe()
    forked_at = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: report, and never return into pytest
        code = 0
        try:
            os.close(read_end)
            payload = json.dumps(child_run(app, otel, forked_at)).encode()
        except BaseException as exc:  # reported to the parent
            payload = json.dumps({"error": repr(exc)}).encode()
            code = 1
        with os.fdopen(write_end, "wb") as out:
            out.write(payload)
        os._exit(code)
    os.close(write_end)
    try:
        # Meanwhile the parent goes on: same thread, same ledger, more ticks.
        ticks_before = inst.ledger.last_time
        assert fetch(app, ["/sleep?seconds=0.05"]) == [200]
        wait_for(lambda: inst.ledger.last_time != ticks_before)
        raw = _read_all(read_end, timeout=30)
    finally:
        _reap(pid)
        os.close(read_end)
    child = json.loads(raw)
    assert "error" not in child, child
    # The child inherited no thread and forgot the parent's requests/readings.
    assert child["inherited_thread"] is False
    assert child["inherited_reading"] is False and child["inherited_in_flight"] == 0
    # Its first request started its own sampler.
    assert child["first"] == [200] and child["thread_after_first"] is True
    # Then it measures on its own readings, taken after the fork.
    assert child["second"] == [200] and child["first_reading_after_fork"]
    second = child["spans"][1]
    assert second[a.POWER["cpu"]] == pytest.approx(CPU_W, rel=0.1)
    on_child_spans = sum(s.get(a.ENERGY["cpu"], 0.0) for s in child["spans"])
    assert child["attributed_cpu"] == pytest.approx(on_child_spans)
    assert child["in_flight"] == 0
    # The parent is unaffected: its sampler thread, its readings, its figures.
    assert inst.sampler.running
    assert inst.ledger.first_time == parent_first
    inst.sampler.sample()
    spans = otel.server_spans()
    assert len(spans) == 2
    assert attrs(spans[1])[a.POWER["cpu"]] == pytest.approx(CPU_W, rel=0.1)
    conserved(inst, {"cpu": sum(attrs(s)[a.ENERGY["cpu"]] for s in spans)})
    assert_no_open_window(inst, otel)


def _read_all(fd: int, timeout: float) -> bytes:
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, "the child did not report in time"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def _reap(pid: int, timeout: float = 10.0) -> int | None:
    """Wait for the child `pid` to exit: its wait status; None if it had not
    after `timeout` seconds (it is killed then)."""
    ended: list[int] = []

    def exited() -> bool:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            ended.append(status)
        return bool(done)

    try:
        wait_for(exited, timeout=timeout, interval=0.01)
    except AssertionError:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return None
    return ended[0]


# -- the time-of-day clock ---------------------------------------------------------


class Jumpy:
    """time.time / time.time_ns that jump an hour forward, then a day back."""

    def __init__(self, real: Any, unit: float) -> None:
        self.real, self.unit, self.calls = real, unit, 0

    def __call__(self) -> Any:
        self.calls += 1
        jump = (3600 if self.calls % 2 else -86_400) * self.calls
        real = self.real()
        return type(real)(real + jump * self.unit)


def clock_app(clock: Clock) -> FastAPI:
    app = FastAPI()
    held = asyncio.Event()

    @app.get("/work")
    async def work(seconds: float) -> dict[str, float]:
        clock.now += seconds  # the request takes `seconds` of monotonic time
        return {"took": seconds}

    @app.get("/held")
    async def hold() -> dict[str, bool]:
        await held.wait()
        held.clear()
        return {"held": True}

    app.state.release = held.set
    return app


def scripted_figures(
    otel: Otel, instrument: Instrumented, monkeypatch: pytest.MonkeyPatch
) -> list[dict[str, Any]]:
    """The same requests at the same monotonic instants: their figures."""
    clock = Clock(5000.0)
    monkeypatch.setattr(reporter, "monotonic", clock)  # the request path's clock
    source = ConstantPowerSource(cpu=CPU_W, ram=RAM_W, clock=clock)
    app = clock_app(clock)
    inst = instrument(app, otel, power_source=source, sample_interval=60)
    # The test takes every reading itself, at instants it chooses.
    monkeypatch.setattr(inst.sampler, "start", lambda: None)

    async def script() -> None:
        async with client(app) as c:
            inst.sampler.sample()
            clock.now += 0.5
            inst.sampler.sample()  # power is known from here on
            assert (await c.get("/work?seconds=0.3")).status_code == 200
            clock.now += 0.2
            inst.sampler.sample()
            # Two requests overlap for 0.1 s.
            held = asyncio.create_task(c.get("/held"))
            await async_wait_for(lambda: inst.ledger.in_flight == 1)
            assert (await c.get("/work?seconds=0.1")).status_code == 200
            clock.now += 0.4
            inst.sampler.sample()
            clock.now += 0.1
            app.state.release()
            assert (await held).status_code == 200
            clock.now += 0.2
            inst.sampler.sample()

    asyncio.run(script())
    assert_no_open_window(inst, otel)
    keys = (a.ENERGY_TOTAL, a.ENERGY["cpu"], a.ENERGY["ram"], a.POWER["cpu"],
            a.CONCURRENCY, a.EMISSIONS)  # fmt: skip
    figures = [{k: attrs(s)[k] for k in keys} for s in otel.server_spans()]
    totals = inst.ledger.totals()
    figures.append({"unattributed": totals.unattributed, "measured": totals.measured})
    return figures


@pytest.fixture
def jumpy_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Jumpy]]:
    clocks = [Jumpy(time.time, 1.0), Jumpy(time.time_ns, 1e9)]
    yield clocks


def test_time_of_day_jumps_change_no_figure(
    otel: Otel,
    instrument: Instrumented,
    monkeypatch: pytest.MonkeyPatch,
    jumpy_clock: list[Jumpy],
) -> None:
    steady = scripted_figures(otel, instrument, monkeypatch)
    # The closed form, from the source's watts and the monotonic script.
    work, overlap, held = steady[0], steady[1], steady[2]
    assert work[a.ENERGY["cpu"]] == pytest.approx(0.3 * CPU_W)
    assert work[a.ENERGY["ram"]] == pytest.approx(0.3 * RAM_W)
    assert overlap[a.ENERGY["cpu"]] == pytest.approx(0.1 * CPU_W / 2)
    assert overlap[a.CONCURRENCY] == pytest.approx(2.0)
    assert held[a.ENERGY["cpu"]] == pytest.approx((0.05 + 0.5) * CPU_W)
    otel.exporter.clear()
    # Again, with the wall clock leaping an hour forward and a day back at
    # every call, in this thread and any other.
    time_jumps, ns_jumps = jumpy_clock
    monkeypatch.setattr(time, "time", time_jumps)
    monkeypatch.setattr(time, "time_ns", ns_jumps)
    jumped = scripted_figures(otel, instrument, monkeypatch)
    monkeypatch.undo()
    assert jumped == steady


def test_a_lock_another_thread_held_at_the_fork_is_free_in_the_child() -> None:
    # A forked child has one thread: a lock held by another thread of the
    # parent would stay held there for good. Every module-level lock is in
    # the fork registry; the metrics registry's, held here, was not renewed.
    from carbonspan import forks
    from carbonspan.attribution import cpu_clock
    from carbonspan.carbon import embodied
    from carbonspan.otel import metrics as carbonspan_metrics
    from carbonspan.power import sampler

    assert {"metrics.registry", "embodied.cache", "cpu_clock.patch",
            "sampler.registry"} <= set(forks.locks)  # fmt: skip
    assert cpu_clock and embodied and sampler
    holding, done = threading.Event(), threading.Event()

    def hold() -> None:
        with forks.locks["metrics.registry"]:
            holding.set()
            done.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    assert holding.wait(10)
    try:
        pid = os.fork()
        if pid == 0:  # the child: the registry answers, every lock is free
            code = 1
            try:
                free = True
                for lock in forks.locks.values():
                    if lock.acquire(timeout=2):
                        lock.release()
                    else:
                        free = False
                if free:
                    carbonspan_metrics.metrics_for(None)  # takes the registry's
                    code = 0
            finally:
                os._exit(code)
    finally:
        done.set()
        thread.join()
    status = _reap(pid, timeout=30.0)
    assert status is not None, "the child hung on a lock held at the fork"
    assert os.waitstatus_to_exitcode(status) == 0
