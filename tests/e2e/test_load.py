"""Races and a long run (hardening items 5 and 6): 500 concurrent requests
while other apps come and go, and the benchmark's soak, shortened. In process:
not marked e2e, so the fast runs (scripts/test-pythons) include them."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

import soak
from carbonspan import CodeCarbonInstrumentor
from carbonspan.attribution.ledger import RING
from carbonspan.otel import attributes as a
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
from support.fakes import Recorded
from support.otel import Instrumented, Otel, attrs, ready_app

# 500 requests: async and sync handlers, streams, failures, unknown routes.
MIX = (
    ["/fast"] * 100
    + [f"/items/{i}" for i in range(100)]
    + ["/sleep?seconds=0.02"] * 80
    + ["/sync-sleep?seconds=0.01"] * 80
    + ["/cpu?seconds=0.001"] * 60
    + ["/stream?chunks=2&pause=0.005"] * 50
    + ["/boom"] * 10
    + ["/teapot"] * 10
    + ["/nope"] * 10
)
EXPECTED = {200: 470, 500: 10, 418: 10, 404: 10}


class Churn(threading.Thread):
    """Instruments, uses and uninstruments other apps until told to stop."""

    def __init__(self, n: int, otel: Otel, other_otel: Otel, shared: Any) -> None:
        super().__init__(name=f"churn-{n}", daemon=True)
        self.n, self.otel, self.other_otel, self.shared = n, otel, other_otel, shared
        self.stop = threading.Event()
        self.cycles = 0
        self.errors: list[BaseException] = []

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.cycle(self.cycles % 4)
                self.cycles += 1
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)

    def cycle(self, variant: int) -> None:
        app = build_app()
        settings: dict[str, Any] = {
            # Our own MeterProvider: instruments shared with the app under load.
            "meter_provider": self.otel.meter_provider,
            "power_source": ConstantPowerSource(cpu=1.0),
            "sample_interval": 0.01,
        }
        if variant == 1:
            settings["attribution"] = "cpu_time"  # patches anyio.to_thread
        if variant == 2:
            settings["power_source"] = self.shared  # leases a shared sampler
        if variant == 3:
            FastAPIInstrumentor.instrument_app(
                app,
                tracer_provider=self.other_otel.tracer_provider,
                meter_provider=self.otel.meter_provider,
            )
        CodeCarbonInstrumentor().instrument_app(app, **settings)
        try:
            statuses = fetch(app, ["/fast", "/sync-sleep?seconds=0.001"])
            assert statuses == [200, 200]
        finally:
            CodeCarbonInstrumentor.uninstrument_app(app)
            if variant == 3:
                FastAPIInstrumentor.uninstrument_app(app)


def test_500_concurrent_requests_while_other_apps_are_instrumented(
    otel: Otel, instrument: Instrumented, caplog: pytest.LogCaptureFixture
) -> None:
    assert len(MIX) == 500
    source = Recorded(ConstantPowerSource(cpu=10.0, ram=2.0))
    app, inst = ready_app(instrument, otel, power_source=source, sample_interval=0.01)
    other_otel = Otel()
    churners = [
        Churn(n, otel, other_otel, ConstantPowerSource(ram=1.0)) for n in range(3)
    ]
    collecting = threading.Event()
    collections = 0

    def collect() -> None:  # observable callbacks, concurrently with all else
        nonlocal collections
        while not collecting.is_set():
            otel.reader.get_metrics_data()
            collections += 1

    collector = threading.Thread(target=collect, daemon=True)
    thread_errors: list[Any] = []
    hook, threading.excepthook = threading.excepthook, thread_errors.append
    try:
        with caplog.at_level(logging.WARNING, logger="carbonspan"):
            for churn in churners:
                churn.start()
            collector.start()
            wait_for(lambda: all(c.cycles >= 1 for c in churners), timeout=30)
            before = [c.cycles for c in churners]
            statuses = fetch(app, MIX, concurrently=True)
            during = [c.cycles - b for c, b in zip(churners, before, strict=True)]
            for churn in churners:
                churn.stop.set()
            collecting.set()
            for t in (*churners, collector):
                t.join(30)
            inst.sampler.sample()  # a last reading, every request closed
    finally:
        threading.excepthook = hook
        other_otel.tracer_provider.shutdown()
        other_otel.meter_provider.shutdown()
    assert [e for c in churners for e in c.errors] == [] and thread_errors == []
    assert all(n >= 1 for n in during), during  # instrumenting went on meanwhile
    assert collections > 0
    assert {s: statuses.count(s) for s in set(statuses)} == EXPECTED
    assert carbonspan_warnings(caplog) == []
    # No sampler thread was left behind by the apps that came and went.
    names = [t.name for t in threading.enumerate()]
    assert names.count("carbonspan-sampler") == 1
    spans = otel.server_spans()
    assert len(spans) == 500
    for span in spans:
        assert_sane(attrs(span))
    # Conservation, against the source's own first and last readings.
    on_spans = {c: sum(attrs(s)[a.ENERGY[c]] for s in spans) for c in ("cpu", "ram")}
    conserved(inst, on_spans)
    since, until = inst.ledger.first_time, inst.ledger.last_time
    for component, joules in on_spans.items():
        # Shared, not each given the whole power.
        assert joules < source.joules(component, since, until)
    assert_no_open_window(inst, otel)


def test_soak_memory_threads_and_ledger_stay_flat() -> None:
    """The benchmark's soak (benchmarks/soak.py), shortened to 20,000 requests."""
    result = soak.run(
        20_000,
        2_000,
        source="constant",
        span_creator="minimal",
        framework="starlette",
        interval=0.01,
    )
    assert result["statuses"] == {200: 17_600, 500: 2_200, 404: 2_200}
    assert result["server_spans"] == 22_000
    assert result["spans_with_energy"] == 22_000 and result["bad_figures"] == 0
    assert result["rss_mb"]["growth_after_warmup"] < 5.0, result["rss_mb"]
    threads = result["threads"]
    assert threads["end"] == threads["after_warmup"]
    assert threads["end"]["carbonspan-sampler"] == 1
    warm, end = result["sizes"]["after_warmup"], result["sizes"]["end"]
    assert end["ticks"] > warm["ticks"]  # the sampler kept ticking
    assert end["ring_slots"] == RING and end["ring_filled"] <= RING
    assert end["in_flight"] == 0 and end["open_windows_cpu_time"] == 0
    # One label set per (route, method, status): 10,000 item ids make one.
    assert end["metric_label_sets"] == warm["metric_label_sets"] == 6
    assert end["metric_route_sums"] == warm["metric_route_sums"] == 6
    for ratio in result["conservation"].values():
        assert ratio == pytest.approx(1.0, rel=0.01)
