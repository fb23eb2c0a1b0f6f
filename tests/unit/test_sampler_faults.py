"""Power source faults: the sampler absorbs them, requests never see them
(hardening item 1).

Every fault goes through a real sampler thread, a real ledger and a real
FastAPI app with the contrib span creator and the OTel SDK; only the power
source is fake (it is hardware).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import replace

import pytest

from carbonspan import EnergyReading, HardwareInfo
from carbonspan.attribution.ledger import Ledger
from carbonspan.otel import attributes as a
from carbonspan.power import sampler
from carbonspan.testing import ConstantPowerSource
from support.apps import build_app
from support.asgi import fetch
from support.checks import (
    assert_no_open_window,
    assert_sane,
    carbonspan_warnings,
    conserved,
    wait_for,
)
from support.fakes import BlockingSource, BrokenSource, Recorded
from support.otel import Instrumented, Otel, attrs, wait_ready

CPU_W, RAM_W = 10.0, 2.0
LOAD = (
    ["/fast"] * 6
    + ["/sleep?seconds=0.03"] * 6
    + ["/sync-sleep?seconds=0.02"] * 4
    + ["/cpu?seconds=0.005"] * 2
    + ["/stream?chunks=3&pause=0.005"] * 2
)

Fault = Callable[[int, EnergyReading], EnergyReading]


class FaultySource(ConstantPowerSource):
    """Constant watts; while `fault` is set, it rewrites (or raises on) readings.

    `true` is the last reading of the healthy meter underneath, so a test can
    compare what the ledger saw with what was really drawn.
    """

    def __init__(self) -> None:
        super().__init__(cpu=CPU_W, ram=RAM_W)
        self.fault: Fault | None = None
        self.faulty = 0  # readings the fault touched
        self.true = EnergyReading(0.0)
        self.out = EnergyReading(0.0)  # the last reading handed out
        self.offset = (0.0, 0.0)

    def read(self) -> EnergyReading:
        reading = self.true = super().read()
        fault = self.fault
        if fault is None:
            assert reading.cpu is not None and reading.ram is not None
            cpu, ram = self.offset
            reading = replace(reading, cpu=reading.cpu + cpu, ram=reading.ram + ram)
        else:
            self.faulty += 1
            reading = fault(self.faulty, reading)
        self.out = reading
        return reading

    def recover(self, from_where_it_is: bool) -> None:
        """Healthy again; a counter that was reset goes on from its new value."""
        if from_where_it_is:
            out, true = self.out, self.true
            assert out.cpu is not None and out.ram is not None
            assert true.cpu is not None and true.ram is not None
            self.offset = (out.cpu - true.cpu, out.ram - true.ram)
        self.fault = None


def raises_always(n: int, r: EnergyReading) -> EnergyReading:
    raise OSError("power meter unplugged")


def raises_one_in_three(n: int, r: EnergyReading) -> EnergyReading:
    if n % 3 == 0:
        raise OSError("flaky bus")
    return r


def nan_cpu(n: int, r: EnergyReading) -> EnergyReading:
    return replace(r, cpu=math.nan)


def inf_ram(n: int, r: EnergyReading) -> EnergyReading:
    return replace(r, ram=math.inf)


def negative_cpu(n: int, r: EnergyReading) -> EnergyReading:
    assert r.cpu is not None
    return replace(r, cpu=-r.cpu - 5.0)


def nan_time(n: int, r: EnergyReading) -> EnergyReading:
    return replace(r, time=math.nan)


class Reset:
    """The counter restarts from 0 every 4th reading: a meter power-cycling."""

    def __init__(self) -> None:
        self.base: EnergyReading | None = None

    def __call__(self, n: int, r: EnergyReading) -> EnergyReading:
        if self.base is None or n % 4 == 0:
            self.base = replace(r, cpu=(r.cpu or 0.0) - 0.01, ram=(r.ram or 0.0) - 0.01)
        assert r.cpu is not None and r.ram is not None
        assert self.base.cpu is not None and self.base.ram is not None
        return replace(r, cpu=r.cpu - self.base.cpu, ram=r.ram - self.base.ram)


def rapl_wraparound(n: int, r: EnergyReading) -> EnergyReading:
    """An energy counter with a small range, as RAPL's max_energy_range_uj."""
    assert r.cpu is not None
    return replace(r, cpu=math.fmod(r.cpu, 0.2))  # 10 W: wraps every 20 ms


FAULTS: dict[str, tuple[Fault | Callable[[], Fault], str, bool]] = {
    # name: (fault, the kind the sampler logs, whether energy is conserved)
    "raises-always": (raises_always, "error OSError", True),
    "raises-one-in-three": (raises_one_in_three, "error OSError", True),
    "nan": (nan_cpu, "invalid", True),
    "infinite": (inf_ram, "invalid", True),
    "negative": (negative_cpu, "negative", True),
    "nan-time": (nan_time, "bad_time", True),
    "reset": (Reset, "backwards", False),
    "wraparound": (rapl_wraparound, "backwards", False),
}


@pytest.mark.parametrize("name", list(FAULTS))
def test_power_source_fault_is_absorbed_by_the_sampler(
    name: str,
    otel: Otel,
    instrument: Instrumented,
    caplog: pytest.LogCaptureFixture,
) -> None:
    make, kind, lossless = FAULTS[name]
    fault = make() if isinstance(make, type) else make
    source = FaultySource()
    app = build_app()
    inst = instrument(app, otel, power_source=Recorded(source), sample_interval=0.01)
    wait_ready(inst, readings=3)
    with caplog.at_level(logging.WARNING, logger="carbonspan"):
        source.fault = fault  # type: ignore[assignment]
        # Three rounds of traffic while the meter misbehaves, over many reads.
        for _ in range(3):
            assert fetch(app, LOAD, concurrently=True) == [200] * len(LOAD)
        wait_for(lambda: source.faulty >= 24)
        during = len(otel.server_spans())
        # The meter recovers: the sampler's next readings are used again.
        source.recover(from_where_it_is=not lossless)
        wait_ready(inst, readings=3)
        assert fetch(app, ["/sleep?seconds=0.05"]) == [200]
        inst.sampler.stop()  # no read in progress from here on
        inst.sampler.sample()  # a last reading, after every request closed
    spans = otel.server_spans()
    assert during == 3 * len(LOAD) and len(spans) == during + 1
    for span in spans:
        assert_sane(attrs(span))
    # One line for the fault, however many readings and requests it touched.
    logged = carbonspan_warnings(caplog)
    assert len(logged) == 1, [r.getMessage() for r in logged]
    assert logged[0].name == "carbonspan.power.sampler"
    # Readings resumed: the ledger took the meter's last reading, and the last
    # request was charged the meter's real power (within a tick's jitter).
    assert inst.ledger.last_time == source.out.time
    after = attrs(spans[-1])
    assert after[a.POWER["cpu"]] == pytest.approx(CPU_W, rel=0.1)
    assert after[a.POWER["ram"]] == pytest.approx(RAM_W, rel=0.1)
    assert_no_open_window(inst, otel)
    on_spans = {
        c: sum(attrs(s).get(a.ENERGY[c], 0.0) for s in spans) for c in ("cpu", "ram")
    }
    if lossless:
        # Nothing was lost: the next valid reading covered the gap.
        conserved(inst, on_spans)
    else:
        # The interval of each backwards step is not counted, never invented.
        totals = inst.ledger.totals()
        drawn = source.true.cpu
        assert drawn is not None
        counted = totals.attributed[0] + totals.unattributed[0]
        assert 0 < counted < drawn
    assert inst.sampler.faults[kind] >= 4  # counted, though logged once


def test_fault_kinds_are_logged_once_each(caplog: pytest.LogCaptureFixture) -> None:
    """Several kinds of fault at once: one line per kind, counts kept for all."""
    source = FaultySource()
    s = sampler.PowerSampler(source, 0.01, Ledger())
    kinds = [nan_cpu, negative_cpu, raises_always, nan_time]
    with caplog.at_level(logging.WARNING, logger="carbonspan"):
        assert s.sample()
        for _ in range(5):
            for fault in kinds:
                source.fault = fault
                s.sample()
    assert s.faults == {"invalid": 5, "negative": 5, "error OSError": 5, "bad_time": 5}
    assert s.errors == 5
    lines = [r.getMessage() for r in carbonspan_warnings(caplog)]
    assert len(lines) == 4
    assert any("cpu=nan" in line for line in lines)
    assert any("negative" in line for line in lines)
    assert any("power meter unplugged" in line for line in lines)
    assert any("time=nan" in line for line in lines)


def test_a_source_blocked_for_seconds_holds_up_no_request(
    otel: Otel,
    instrument: Instrumented,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sampler, "SLOW_READ", 0.3)  # the test need not wait 1 s
    source = BlockingSource(CPU_W, RAM_W, block=False, once=True, timeout=5.0)
    app = build_app()
    inst = instrument(app, otel, power_source=Recorded(source), sample_interval=0.01)
    wait_ready(inst, readings=3)
    reads = source.reads
    with caplog.at_level(logging.WARNING, logger="carbonspan"):
        source.block = True
        assert source.entered.wait(5)
        blocked_at = time.monotonic()
        try:
            # The sampler thread is stuck in read(); requests finish anyway.
            for _ in range(2):
                assert fetch(app, LOAD, concurrently=True) == [200] * len(LOAD)
            assert not source.release.is_set() and source.reads == reads
            # Long enough to count as a slow read (not a check of time).
            wait_for(lambda: time.monotonic() - blocked_at > 0.35)
        finally:
            source.release.set()
        # Readings resume after the block.
        wait_ready(inst, readings=3)
        assert fetch(app, ["/sleep?seconds=0.05"]) == [200]
        inst.sampler.sample()
    spans = otel.server_spans()
    assert len(spans) == 2 * len(LOAD) + 1
    for span in spans:
        got = attrs(span)
        assert_sane(got)
        # Meanwhile requests were charged at the last measured power.
        assert got[a.ENERGY_TOTAL] > 0
    assert attrs(spans[-1])[a.POWER["cpu"]] == pytest.approx(CPU_W, rel=0.1)
    (line,) = carbonspan_warnings(caplog)
    assert "slow" in line.getMessage()
    on_spans = {c: sum(attrs(s)[a.ENERGY[c]] for s in spans) for c in ("cpu", "ram")}
    conserved(inst, on_spans)
    assert_no_open_window(inst, otel)


# -- a source that raises or blocks, and its description ---------------------


def test_a_raising_source_is_logged_once_and_requests_go_on(
    otel: Otel, instrument: Instrumented, caplog: pytest.LogCaptureFixture
) -> None:
    source = BrokenSource()
    app = build_app()
    with caplog.at_level(logging.WARNING, logger="carbonspan.power.sampler"):
        inst = instrument(app, otel, power_source=source, sample_interval=0.01)
        assert (
            fetch(app, ["/fast", "/sleep?seconds=0.1", "/cpu?seconds=0.02"])
            == [200] * 3
        )
    assert source.failures >= 5
    failures = [r for r in caplog.records if "power source" in r.getMessage()]
    assert len(failures) == 1
    # No reading: spans carry no energy attributes, and no span is broken.
    assert [attrs(s) for s in otel.server_spans()] == [{}, {}, {}]
    # When the source recovers, figures return.
    source.broken = False
    wait_ready(inst)
    otel.exporter.clear()
    assert fetch(app, ["/sleep?seconds=0.05"]) == [200]
    (span,) = otel.server_spans()
    assert attrs(span)[a.ENERGY_TOTAL] > 0


def test_a_blocking_source_does_not_hold_up_requests(
    otel: Otel, instrument: Instrumented
) -> None:
    source = BlockingSource()
    app = build_app()
    instrument(app, otel, power_source=source, sample_interval=0.01)
    assert fetch(app, ["/fast"]) == [200]  # the first request starts the sampler
    assert source.entered.wait(5)
    try:
        # The sampler thread is stuck inside read(); requests finish anyway.
        assert fetch(app, ["/fast"] * 20) == [200] * 20
        assert not source.release.is_set()
        assert len(otel.server_spans()) == 21
    finally:
        source.release.set()


def test_describe_failure_counts_as_a_failed_read() -> None:
    class NoDescribe(ConstantPowerSource):
        def describe(self) -> HardwareInfo:
            raise RuntimeError("no info")

    s = sampler.PowerSampler(NoDescribe(cpu=1.0), 0.01, Ledger())
    assert s.sample() is False
    assert s.errors == 1
