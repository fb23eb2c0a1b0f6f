"""The cpu_time policy: each request is charged for the CPU it really used."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

import pytest
from fastapi import FastAPI
from hypothesis import given, settings
from hypothesis import strategies as st

from carbonspan.attribution.cpu_clock import CpuClock
from carbonspan.attribution.ledger import Ledger
from carbonspan.attribution.policies import CpuTime
from carbonspan.otel import attributes as a
from carbonspan.testing import (
    ConstantPowerSource,
    ProcessCpuPowerSource,
    ScriptedPowerSource,
)
from support.apps import burn
from support.asgi import fetch
from support.checks import conserved
from support.fakes import Recorded
from support.otel import Instrumented, Otel, attrs, wait_ready

CPU_W = 20.0


def cpu_app() -> FastAPI:
    app = FastAPI()

    async def busy(seconds: float) -> int:
        # Busy for `seconds`, in 5 ms slices that let the loop serve others.
        start, loops = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            loops += burn(0.005)
            await asyncio.sleep(0)
        return loops

    @app.get("/burn-sync")
    def burn_sync() -> dict[str, int]:
        return {"loops": burn(0.25)}

    @app.get("/burn-async")
    async def burn_async() -> dict[str, int]:
        return {"loops": await busy(0.25)}

    @app.get("/wait")
    async def wait(seconds: float = 0.2) -> dict[str, str]:
        await asyncio.sleep(seconds)
        return {"waited": "yes"}

    @app.get("/gather")
    async def gather() -> dict[str, int]:
        return {"loops": sum(await asyncio.gather(*(busy(0.2) for _ in range(4))))}

    return app


def collect_garbage_now() -> None:
    """A full collection before the traffic: otherwise a pass owed to the heap
    that earlier tests left (40-60 ms under Python 3.10 with the whole suite
    loaded) can start in a request's step, and that request is charged for it
    (see docs/attribution.md, "A garbage collection inside a request's step")."""
    gc.collect()


def burners_share(otel: Otel) -> tuple[float, float]:
    spans = otel.server_spans()
    energy = {s.name: 0.0 for s in spans}
    for s in spans:
        energy[s.name] += attrs(s)[a.ENERGY["cpu"]]
    burners = energy.get("GET /burn-sync", 0.0) + energy.get("GET /burn-async", 0.0)
    return burners / sum(energy.values()), sum(energy.values())


MIX = ["/burn-sync"] * 5 + ["/burn-async"] * 5 + ["/wait"] * 10


@pytest.mark.parametrize(
    ("policy", "low", "high"), [("cpu_time", 0.9, 1.0), ("time_share", 0.3, 0.8)]
)
def test_burners_get_the_energy_under_cpu_time_only(
    policy: str, low: float, high: float, otel: Otel, instrument: Instrumented
) -> None:
    app = cpu_app()
    # Power that follows the process's CPU: once the burners are done, the
    # waiters left in flight draw next to nothing, as on real hardware.
    source = Recorded(ProcessCpuPowerSource(base_watts=0.0, watts_per_cpu=CPU_W))
    inst = instrument(
        app, otel, power_source=source, attribution=policy, sample_interval=0.05,
    )  # fmt: skip
    wait_ready(inst)
    collect_garbage_now()
    assert fetch(app, MIX, concurrently=True) == [200] * 20
    inst.sampler.sample()  # a last tick, after all have closed
    share, total = burners_share(otel)
    print(f"{policy}: burners' share {share:.3f} of {total:.3f} J")
    assert low <= share <= high
    assert {attrs(s)[a.ATTRIBUTION] for s in otel.server_spans()} == {policy}
    # The books still balance, against the source's own readings.
    conserved(inst, {"cpu": total})


def test_child_tasks_are_charged_to_their_request(
    otel: Otel, instrument: Instrumented
) -> None:
    app = cpu_app()
    inst = instrument(
        app, otel, power_source=ConstantPowerSource(cpu=CPU_W), attribution="cpu_time",
        sample_interval=0.05,
    )  # fmt: skip
    wait_ready(inst)
    collect_garbage_now()
    waits = ["/wait?seconds=0.1"] * 3
    assert fetch(app, ["/gather", *waits], concurrently=True) == [200] * 4
    spans = {s.name: attrs(s) for s in otel.server_spans()}
    energy = [attrs(s)[a.ENERGY["cpu"]] for s in otel.server_spans()]
    assert spans["GET /gather"][a.ENERGY["cpu"]] >= 0.9 * sum(energy)


def test_cpu_time_is_accepted_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from carbonspan.config import Settings

    monkeypatch.setenv("CARBONSPAN_ATTRIBUTION", "cpu_time")
    assert Settings.load({}).attribution == "cpu_time"


def test_ram_stays_time_share_under_cpu_time() -> None:
    now = [0.0]
    source = ConstantPowerSource(cpu=10.0, ram=4.0, clock=lambda: now[0])
    ledger = Ledger(CpuTime())
    ledger.tick(source.read())
    now[0] = 1.0
    ledger.tick(source.read())
    busy, idle = CpuClock(), CpuClock()
    wb, wi = ledger.open(1.0, busy), ledger.open(1.0, idle)
    busy.add_thread(0.3)
    now[0] = 2.0
    ledger.tick(source.read())
    mb, mi = ledger.close(wb, 2.0), ledger.close(wi, 2.0)
    assert (mb.cpu, mi.cpu) == (pytest.approx(10.0), pytest.approx(0.0))
    assert mb.ram == pytest.approx(2.0) and mi.ram == pytest.approx(2.0)
    assert mb.attribution == "cpu_time"
    # Power stays the process's power, whichever request used the CPU.
    assert mb.power("cpu") == pytest.approx(10.0) and mi.power("cpu") == pytest.approx(
        10.0
    )


def test_no_cpu_used_falls_back_to_time_share() -> None:
    now = [0.0]
    source = ConstantPowerSource(cpu=10.0, clock=lambda: now[0])
    ledger = Ledger(CpuTime())
    ledger.tick(source.read())
    now[0] = 1.0
    ledger.tick(source.read())
    w1, w2 = ledger.open(1.0, CpuClock()), ledger.open(1.0, CpuClock())
    now[0] = 2.0
    ledger.tick(source.read())
    m1, m2 = ledger.close(w1, 2.0), ledger.close(w2, 2.0)
    assert m1.cpu == pytest.approx(5.0) and m2.cpu == pytest.approx(5.0)


# --- the conservation invariant under cpu_time, property-based ----------------

events = st.lists(
    st.tuples(
        st.sampled_from(["open", "close", "tick", "wait", "work"]),
        st.floats(min_value=0.0, max_value=0.2),
        st.integers(min_value=0, max_value=7),
    ),
    min_size=1,
    max_size=120,
)
powers = st.lists(st.floats(min_value=0.0, max_value=500.0), min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(events=events, cpu=powers)
def test_cpu_time_attributed_plus_unattributed_equals_measured(
    events: list[tuple[str, float, int]], cpu: list[float]
) -> None:
    now = [1000.0]
    source = Recorded(
        ScriptedPowerSource(
            cpu=lambda t: cpu[min(int(t / 0.25), len(cpu) - 1)],
            resolution=0.005,
            clock=lambda: now[0],
        )
    )
    ledger = Ledger(CpuTime())
    ledger.tick(source.read())
    open_windows: list[tuple[Any, CpuClock]] = []
    charged = 0.0
    for kind, dt, pick in events:
        now[0] += dt
        if kind == "open":
            clock = CpuClock()
            open_windows.append((ledger.open(now[0], clock), clock))
        elif kind == "close" and open_windows:
            window, _ = open_windows.pop(pick % len(open_windows))
            m = ledger.close(window, now[0])
            assert m.cpu is None or m.cpu >= -1e-9
            charged += m.cpu or 0.0
        elif kind == "work" and open_windows:
            open_windows[pick % len(open_windows)][1].add_thread(dt)
        elif kind == "tick":
            ledger.tick(source.read())
    for window, _ in open_windows:
        now[0] += 0.01
        charged += ledger.close(window, now[0]).cpu or 0.0
    now[0] += 0.01
    ledger.tick(source.read())
    totals = ledger.totals()
    truth = source.joules("cpu", ledger.first_time, ledger.last_time)
    assert totals.attributed[0] == pytest.approx(charged, rel=1e-9, abs=1e-9)
    assert charged + totals.unattributed[0] == pytest.approx(truth, rel=1e-9, abs=1e-9)
