"""Power source faults and failed hardware detection (hardening items 1 and 2).

Every fault goes through a real sampler thread, a real ledger and a real
FastAPI app with the contrib span creator and the OTel SDK; only the power
source is fake (it is hardware), or CodeCarbon's and psutil's hardware probes
are made to fail.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from apps import build_app
from carbonspan import CodeCarbonPowerSource, sampler
from carbonspan import attributes as a
from carbonspan.runtime import Runtime
from carbonspan.source import EnergyReading
from carbonspan.testing import ConstantPowerSource
from conftest import Instrumented, Otel, attrs, client, wait_ready
from test_reliability_support import (
    assert_no_open_window,
    assert_sane,
    carbonspan_warnings,
    wait_for,
)

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


def fetch(app: Any, paths: list[str]) -> list[int]:
    async def go() -> list[int]:
        async with client(app) as c:
            responses = await asyncio.gather(*(c.get(p) for p in paths))
        return [r.status_code for r in responses]

    return asyncio.run(go())


def conserved(runtime: Runtime, spans_j: dict[str, float], rel: float = 0.01) -> None:
    """Span joules + unattributed == the source's own last - first reading."""
    ledger = runtime.ledger
    first, last = ledger.first_reading, ledger.last_reading
    assert first is not None and last is not None
    totals = ledger.totals()
    for i, component in enumerate(("cpu", "gpu", "ram")):
        if component not in spans_j:
            continue
        measured = getattr(last, component) - getattr(first, component)
        after = totals.after_response[i]
        assert spans_j[component] + after == pytest.approx(
            totals.attributed[i], rel=1e-9
        )
        got = spans_j[component] + after + totals.unattributed[i]
        assert got == pytest.approx(measured, rel=rel), component


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
    runtime = instrument(app, otel, power_source=source, sample_interval=0.01)
    wait_ready(runtime, readings=3)
    with caplog.at_level(logging.WARNING, logger="carbonspan"):
        source.fault = fault  # type: ignore[assignment]
        # Three rounds of traffic while the meter misbehaves, over many reads.
        for _ in range(3):
            assert fetch(app, LOAD) == [200] * len(LOAD)
        wait_for(lambda: source.faulty >= 24)
        during = len(otel.server_spans())
        # The meter recovers: the sampler's next readings are used again.
        source.recover(from_where_it_is=not lossless)
        wait_ready(runtime, readings=3)
        assert fetch(app, ["/sleep?seconds=0.05"]) == [200]
        runtime.sampler.sample()  # a last reading, after every request closed
    spans = otel.server_spans()
    assert during == 3 * len(LOAD) and len(spans) == during + 1
    for span in spans:
        assert_sane(attrs(span))
    # One line for the fault, however many readings and requests it touched.
    logged = carbonspan_warnings(caplog)
    assert len(logged) == 1, [r.getMessage() for r in logged]
    assert logged[0].name == "carbonspan.sampler"
    # Readings resumed: the ledger took the meter's last reading, and the last
    # request was charged the meter's real power (within a tick's jitter).
    with runtime.sampler._read_lock:  # no read in progress
        assert runtime.ledger.last_reading is source.out
    after = attrs(spans[-1])
    assert after[a.POWER["cpu"]] == pytest.approx(CPU_W, rel=0.1)
    assert after[a.POWER["ram"]] == pytest.approx(RAM_W, rel=0.1)
    assert_no_open_window(runtime, otel)
    on_spans = {
        c: sum(attrs(s).get(a.ENERGY[c], 0.0) for s in spans) for c in ("cpu", "ram")
    }
    if lossless:
        # Nothing was lost: the next valid reading covered the gap.
        conserved(runtime, on_spans)
    else:
        # The interval of each backwards step is not counted, never invented.
        totals = runtime.ledger.totals()
        drawn = source.true.cpu
        assert drawn is not None
        counted = totals.attributed[0] + totals.unattributed[0]
        assert 0 < counted < drawn
    assert runtime.sampler.faults[kind] >= 4  # counted, though logged once


def test_fault_kinds_are_logged_once_each(caplog: pytest.LogCaptureFixture) -> None:
    """Several kinds of fault at once: one line per kind, counts kept for all."""
    source = FaultySource()
    s = sampler.Sampler(source, 0.01)
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


class BlockingSource(ConstantPowerSource):
    """Blocks inside read() for up to 5 s once `block` is set."""

    def __init__(self) -> None:
        super().__init__(cpu=CPU_W, ram=RAM_W)
        self.block = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def read(self) -> EnergyReading:
        if self.block:
            self.block = False
            self.entered.set()
            self.release.wait(5.0)
        return super().read()


def test_a_source_blocked_for_seconds_holds_up_no_request(
    otel: Otel,
    instrument: Instrumented,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sampler, "SLOW_READ", 0.3)  # the test need not wait 1 s
    source = BlockingSource()
    app = build_app()
    runtime = instrument(app, otel, power_source=source, sample_interval=0.01)
    wait_ready(runtime, readings=3)
    reads = source.reads
    with caplog.at_level(logging.WARNING, logger="carbonspan"):
        source.block = True
        assert source.entered.wait(5)
        blocked_at = time.monotonic()
        try:
            # The sampler thread is stuck in read(); requests finish anyway.
            for _ in range(2):
                assert fetch(app, LOAD) == [200] * len(LOAD)
            assert not source.release.is_set() and source.reads == reads
            # Long enough to count as a slow read (not a check of time).
            wait_for(lambda: time.monotonic() - blocked_at > 0.35)
        finally:
            source.release.set()
        # Readings resume after the block.
        wait_ready(runtime, readings=3)
        assert fetch(app, ["/sleep?seconds=0.05"]) == [200]
        runtime.sampler.sample()
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
    conserved(runtime, on_spans)
    assert_no_open_window(runtime, otel)


# -- hardware detection ----------------------------------------------------


def boom(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("detection exploded")


def codecarbon_cpu_raises(mp: pytest.MonkeyPatch) -> None:
    from codecarbon.core import cpu as cc_cpu
    from codecarbon.external import hardware

    mp.setattr(cc_cpu, "is_rapl_available", boom)
    mp.setattr(hardware.CPU, "from_utils", boom)


def psutil_cpu_count_missing(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(psutil, "cpu_count", lambda *args, **kwargs: None)


def psutil_cpu_times_missing(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(psutil, "cpu_times", boom)


def psutil_memory_missing(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(psutil, "virtual_memory", boom)


DETECTION = {
    # name: (break it, codecarbon.measurement.cpu expected, CPU constant?)
    "codecarbon-cpu-raises": (codecarbon_cpu_raises, "tdp", True),
    "psutil-no-cpu-count": (psutil_cpu_count_missing, "tdp", True),
    "psutil-no-cpu-times": (psutil_cpu_times_missing, "tdp", True),
    # The process's memory share cannot be read: RAM counts 0 J, CPU goes on.
    "psutil-no-memory": (psutil_memory_missing, "cpu_load", False),
}


def wait_reads(runtime: Runtime, n: int) -> None:
    """Start the sampler and wait for `n` new readings in the ledger."""
    runtime.sampler.start()
    seen: list[object] = [runtime.ledger.last_reading]

    def more() -> bool:
        reading = runtime.ledger.last_reading
        if reading is not None and reading is not seen[-1]:
            seen.append(reading)
        return len(seen) > n

    wait_for(more, timeout=30)


@pytest.mark.parametrize("name", list(DETECTION))
def test_failed_hardware_detection_falls_back_and_says_so(
    name: str,
    otel: Otel,
    instrument: Instrumented,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    breaks, method, constant = DETECTION[name]
    breaks(monkeypatch)
    app = build_app()
    # The default source (CodeCarbon's hardware): the whole machine, where the
    # fallback's constant power shows on every request, or this process.
    scope = "machine" if constant else "process"
    with caplog.at_level(logging.WARNING, logger="carbonspan"):
        runtime = instrument(app, otel, scope=scope, sample_interval=0.02)
        wait_reads(runtime, 3)
        assert fetch(app, ["/cpu?seconds=0.05"]) == [200]
        assert fetch(app, ["/sleep?seconds=0.05"]) == [200]
    assert runtime.sampler.errors == 0  # no reading failed
    spans = otel.server_spans()
    assert len(spans) == 2
    for span in spans:
        got = attrs(span)
        assert_sane(got)
        assert got[a.MEASUREMENT["cpu"]] == method
        assert got[a.MEASUREMENT["ram"]] == "model"
    assert attrs(spans[0])[a.ENERGY["cpu"]] > 0  # the request that used the CPU
    if constant:
        # The fallback is a constant power, whatever the requests do (a
        # request's own figure may lag a tick delayed by the busy thread).
        source = runtime.sampler.source
        assert isinstance(source, CodeCarbonPowerSource)
        watts = {attrs(s)[a.POWER["cpu"]] for s in spans}
        expected = getattr(source._cpu, "watts", None)  # carbonspan's fallback
        if expected is None:  # CodeCarbon's own constant mode
            expected = _codecarbon_constant_watts(source)
        for w in watts:
            assert w == pytest.approx(expected, rel=0.25)
        assert any("CPU" in r.getMessage() for r in carbonspan_warnings(caplog))
    assert_no_open_window(runtime, otel)


def _codecarbon_constant_watts(source: CodeCarbonPowerSource) -> float:
    from codecarbon.external.hardware import CONSUMPTION_PERCENTAGE_CONSTANT

    return float(source._cpu._tdp) * CONSUMPTION_PERCENTAGE_CONSTANT


class FakeNvml:
    """The pynvml calls carbonspan makes, one GPU, 50 mJ per read."""

    def __init__(self) -> None:
        self.broken = False
        self.mj = 0

    def nvmlInit(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetName(self, handle: int) -> str:
        return "NVIDIA Fake"

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        if self.broken:
            raise RuntimeError("NVML_ERROR_GPU_IS_LOST")
        self.mj += 50
        return self.mj

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        if self.broken:
            raise RuntimeError("NVML_ERROR_GPU_IS_LOST")
        return 10_000

    def nvmlDeviceGetProcessUtilization(self, handle: int, since: int) -> list[Any]:
        return [SimpleNamespace(pid=0, smUtil=0, timeStamp=since)]

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[Any]:
        return []


class BrokenNvml(FakeNvml):
    def nvmlInit(self) -> None:
        raise RuntimeError("Driver/library version mismatch")


@pytest.mark.parametrize("nvml", ["absent", "broken-at-init", "lost-at-runtime"])
def test_nvml_absent_or_broken_leaves_cpu_and_ram_measured(
    nvml: str,
    otel: Otel,
    instrument: Instrumented,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from codecarbon.core import gpu_nvidia

    fake = BrokenNvml() if nvml == "broken-at-init" else FakeNvml()
    monkeypatch.setattr(gpu_nvidia, "PYNVML_AVAILABLE", nvml != "absent")
    monkeypatch.setattr(gpu_nvidia, "is_nvidia_system", lambda: nvml != "absent")
    monkeypatch.setattr(gpu_nvidia, "pynvml", fake)
    app = build_app()
    with caplog.at_level(logging.WARNING, logger="carbonspan"):
        runtime = instrument(app, otel, scope="machine", sample_interval=0.02)
        wait_reads(runtime, 3)
        if nvml == "lost-at-runtime":
            assert fetch(app, ["/sleep?seconds=0.05"]) == [200]
            fake.broken = True
            wait_reads(runtime, 3)
        assert fetch(app, ["/sleep?seconds=0.05"]) == [200]
    assert runtime.sampler.errors == 0
    spans = otel.server_spans()
    last = attrs(spans[-1])
    assert_sane(last)
    assert last[a.ENERGY["cpu"]] > 0 and last[a.ENERGY["ram"]] > 0
    warnings = [r.getMessage() for r in carbonspan_warnings(caplog)]
    if nvml == "lost-at-runtime":
        first = attrs(spans[0])
        assert first[a.MEASUREMENT["gpu"]] == "nvml" and first[a.ENERGY["gpu"]] > 0
        assert last[a.ENERGY["gpu"]] == 0.0  # no more GPU joules, no failure
        assert len(warnings) == 1 and "gpu" in warnings[0]
    else:
        assert a.MEASUREMENT["gpu"] not in last and a.ENERGY["gpu"] not in last
        assert len(warnings) == (1 if nvml == "broken-at-init" else 0)
    assert_no_open_window(runtime, otel)
