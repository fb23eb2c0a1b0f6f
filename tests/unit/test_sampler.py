"""The shared sampler: failures stay in its thread, and it leaves no thread behind."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import pytest

from apps import build_app
from carbonspan import CodeCarbonInstrumentor
from carbonspan import attributes as a
from carbonspan.sampler import Sampler
from carbonspan.source import EnergyReading, HardwareInfo
from carbonspan.testing import ConstantPowerSource
from conftest import Instrumented, Otel, attrs, client, wait_ready


class BrokenSource(ConstantPowerSource):
    """Raises while `broken` is set, else behaves as a constant source."""

    def __init__(self) -> None:
        super().__init__(cpu=5.0)
        self.broken = True
        self.failures = 0

    def read(self) -> EnergyReading:
        if self.broken:
            self.failures += 1
            raise OSError("power meter unplugged")
        return super().read()


class BlockingSource(ConstantPowerSource):
    """Blocks inside read() until released."""

    def __init__(self) -> None:
        super().__init__(cpu=5.0)
        self.entered = threading.Event()
        self.release = threading.Event()

    def read(self) -> EnergyReading:
        self.entered.set()
        self.release.wait(30)
        return super().read()


def fetch(app: Any, paths: list[str]) -> list[int]:
    async def go() -> list[int]:
        async with client(app) as c:
            return [(await c.get(p)).status_code for p in paths]

    return asyncio.run(go())


def test_a_raising_source_is_logged_once_and_requests_go_on(
    otel: Otel, instrument: Instrumented, caplog: pytest.LogCaptureFixture
) -> None:
    source = BrokenSource()
    app = build_app()
    with caplog.at_level(logging.WARNING, logger="carbonspan.sampler"):
        runtime = instrument(app, otel, power_source=source, sample_interval=0.01)
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
    wait_ready(runtime)
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


def test_instrument_uninstrument_cycles_leave_no_thread(otel: Otel) -> None:
    before = threading.active_count()
    source = ConstantPowerSource(cpu=1.0)
    for _ in range(20):
        app = build_app()
        CodeCarbonInstrumentor().instrument_app(
            app, power_source=source, meter_provider=otel.meter_provider
        )
        assert fetch(app, ["/fast"]) == [200]
        CodeCarbonInstrumentor.uninstrument_app(app)
    names = [t.name for t in threading.enumerate()]
    assert "carbonspan-sampler" not in names
    assert threading.active_count() == before


def test_apps_with_the_same_source_share_one_sampler(otel: Otel) -> None:
    source = ConstantPowerSource(cpu=1.0)
    apps = [build_app(), build_app()]
    for app in apps:
        CodeCarbonInstrumentor().instrument_app(
            app, power_source=source, meter_provider=otel.meter_provider
        )
    try:
        samplers = {id(app._carbonspan_runtime.sampler) for app in apps}
        assert len(samplers) == 1
        assert fetch(apps[0], ["/fast"]) == [200]
        CodeCarbonInstrumentor.uninstrument_app(apps[0])
        assert apps[1]._carbonspan_runtime.sampler.running
    finally:
        CodeCarbonInstrumentor.uninstrument_app(apps[1])
    assert not any(t.name == "carbonspan-sampler" for t in threading.enumerate())


def test_stop_joins_the_thread() -> None:
    sampler = Sampler(ConstantPowerSource(cpu=1.0), 0.01)
    sampler.start()
    assert sampler.running
    thread = sampler._thread
    sampler.stop()
    assert thread is not None and not thread.is_alive()


def test_describe_failure_counts_as_a_failed_read() -> None:
    class NoDescribe(ConstantPowerSource):
        def describe(self) -> HardwareInfo:
            raise RuntimeError("no info")

    sampler = Sampler(NoDescribe(cpu=1.0), 0.01)
    assert sampler.sample() is False
    assert sampler.errors == 1


def test_the_sampler_starts_with_the_server_not_at_import(otel: Otel) -> None:
    source = ConstantPowerSource(cpu=1.0)
    app = build_app()
    CodeCarbonInstrumentor().instrument_app(
        app, power_source=source, meter_provider=otel.meter_provider
    )
    try:
        runtime = app._carbonspan_runtime
        assert not runtime.sampler.started and source.reads == 0
        assert fetch(app, ["/fast"]) == [200]
        assert runtime.sampler.running
    finally:
        CodeCarbonInstrumentor.uninstrument_app(app)
