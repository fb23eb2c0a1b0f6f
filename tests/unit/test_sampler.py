"""The shared sampler: one per power source, started with the server, and no
thread left behind. (Its power source's faults: test_sampler_faults.py.)"""

from __future__ import annotations

import threading

from carbonspan import CodeCarbonInstrumentor
from carbonspan.attribution.ledger import Ledger
from carbonspan.otel.instrumentor import instrumentation_of
from carbonspan.power.sampler import PowerSampler
from carbonspan.testing import ConstantPowerSource
from support.apps import build_app
from support.asgi import fetch
from support.otel import Otel


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
        first, second = (instrumentation_of(app) for app in apps)
        assert first is not None and second is not None
        samplers = {id(first.sampler), id(second.sampler)}
        assert len(samplers) == 1
        assert fetch(apps[0], ["/fast"]) == [200]
        CodeCarbonInstrumentor.uninstrument_app(apps[0])
        still = instrumentation_of(apps[1])
        assert still is not None and still.sampler.running
    finally:
        CodeCarbonInstrumentor.uninstrument_app(apps[1])
    assert not any(t.name == "carbonspan-sampler" for t in threading.enumerate())


def test_stop_joins_the_thread() -> None:
    before = set(threading.enumerate())
    sampler = PowerSampler(ConstantPowerSource(cpu=1.0), 0.01, Ledger())
    sampler.start()
    assert sampler.running
    (thread,) = [
        t
        for t in threading.enumerate()
        if t not in before and t.name == "carbonspan-sampler"
    ]
    assert thread.daemon
    sampler.stop()
    assert not thread.is_alive() and not sampler.running


def test_the_sampler_starts_with_the_server_not_at_import(otel: Otel) -> None:
    source = ConstantPowerSource(cpu=1.0)
    app = build_app()
    CodeCarbonInstrumentor().instrument_app(
        app, power_source=source, meter_provider=otel.meter_provider
    )
    try:
        inst = instrumentation_of(app)
        assert inst is not None
        assert not inst.sampler.started and source.reads == 0
        assert fetch(app, ["/fast"]) == [200]
        assert inst.sampler.running
    finally:
        CodeCarbonInstrumentor.uninstrument_app(app)
