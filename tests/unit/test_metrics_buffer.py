"""The request path queues its metric point; the sampler or a collection records it.

Every check here uses the real SDK with in-memory readers. Timings are never
asserted: the tests hold the sampler's draining off (or wait for it) and
check what a reader sees.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    InMemoryMetricReader,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View

from carbonspan import CodeCarbonInstrumentor
from carbonspan.carbon.intensity import resolve
from carbonspan.otel import attributes as a
from carbonspan.otel.instrumentation import Instrumentation
from carbonspan.testing import ConstantPowerSource
from support.asgi import client, fetch
from support.checks import wait_for
from support.otel import Instrumented, Otel, attrs, ready_app

ENERGY = "codecarbon.request.energy"


class KeepingExporter(MetricExporter):
    """Keeps what a periodic reader exports."""

    def __init__(self) -> None:
        super().__init__()
        self.exported: list[MetricsData] = []

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kw: Any
    ) -> MetricExportResult:
        self.exported.append(metrics_data)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kw: Any) -> None:
        return None

    def counts(self, name: str) -> list[int]:
        return [
            p.count
            for data in self.exported
            for rm in data.resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
            if m.name == name
            for p in m.data.data_points
        ]


def exporting() -> tuple[Otel, KeepingExporter]:
    """The SDK with a periodic reader that exports (to a KeepingExporter) only
    when collected: at shutdown or a flush, not in the test's lifetime."""
    exporter = KeepingExporter()
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    return Otel(reader=reader), exporter  # type: ignore[arg-type]


def hold_draining(inst: Instrumentation) -> None:
    """Only collections, flushes and closes drain from now on, not the sampler."""
    inst.sampler.after_tick.clear()


class Recording:
    """The request energy histogram, noting the thread of each point recorded
    (`threads`, one entry a point) before it passes the point on."""

    def __init__(self, inst: Instrumentation) -> None:
        queue = inst.metrics.queue
        self.histogram = queue.histogram
        self.threads: list[str] = []
        queue.histogram = self  # type: ignore[assignment]

    def record(self, *args: Any, **kwargs: Any) -> None:
        self.threads.append(threading.current_thread().name)
        self.histogram.record(*args, **kwargs)


@pytest.fixture
def source() -> ConstantPowerSource:
    return ConstantPowerSource(cpu=10.0, ram=2.0)


def ready(
    instrument: Instrumented,
    otel: Otel,
    source: ConstantPowerSource,
    *,
    sampler_drains: bool = False,
    **kw: Any,
) -> tuple[Any, Instrumentation, Recording]:
    """The test app, ready; unless `sampler_drains`, only collections, flushes
    and closes record what requests queue. Its histogram's records are noted."""
    app, inst = ready_app(
        instrument, otel, power_source=source, sample_interval=0.02, **kw
    )
    if not sampler_drains:
        hold_draining(inst)
    return app, inst, Recording(inst)


def test_the_request_path_only_queues_and_a_collection_records(
    otel: Otel, instrument: Instrumented, source: ConstantPowerSource
) -> None:
    app, _, recording = ready(instrument, otel, source)
    assert fetch(app, ["/fast", "/items/3", "/fast"]) == [200] * 3
    assert recording.threads == []  # nothing recorded yet
    points = otel.points(ENERGY)  # a collection right after the requests
    assert sum(p.count for p in points) == 3
    assert recording.threads == [threading.current_thread().name] * 3
    spans = otel.server_spans()
    assert sum(p.sum for p in points) == pytest.approx(
        sum(attrs(s)[a.ENERGY_TOTAL] for s in spans), rel=1e-12
    )


def test_the_emissions_counter_sees_the_same_collection(
    otel: Otel, instrument: Instrumented, source: ConstantPowerSource
) -> None:
    app, _, _ = ready(instrument, otel, source, country_iso_code="FRA")
    assert fetch(app, ["/fast"] * 4, concurrently=True) == [200] * 4
    data = otel.reader.get_metrics_data()
    assert data is not None
    found = {
        m.name: m.data.data_points
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    }
    (energy,) = found[ENERGY]
    (grams,) = found["codecarbon.request.emissions"]
    # What a request drew after its response (a loaded machine can have
    # some) is in the counter's grams too, at the same intensity.
    after = sum(p.value for p in found.get("codecarbon.request.background.energy", ()))
    assert energy.count == 4
    assert grams.value == pytest.approx(
        resolve(country_iso_code="FRA").grams(energy.sum + after), rel=1e-9
    )
    assert grams.attributes == energy.attributes


def test_the_sampler_thread_records_after_its_tick(
    otel: Otel, instrument: Instrumented, source: ConstantPowerSource
) -> None:
    app, _, recording = ready(instrument, otel, source, sampler_drains=True)
    assert fetch(app, ["/fast"] * 5, concurrently=True) == [200] * 5
    wait_for(lambda: len(recording.threads) == 5)
    assert set(recording.threads) == {"carbonspan-sampler"}
    assert sum(p.count for p in otel.points(ENERGY)) == 5


def test_exemplars_link_to_the_request_span_not_the_collector(
    otel: Otel, instrument: Instrumented, source: ConstantPowerSource
) -> None:
    app, _, _ = ready(instrument, otel, source)
    assert fetch(app, ["/fast"]) == [200]
    (span,) = otel.server_spans()
    # Collected (and so drained) while another span is current on this thread.
    tracer = otel.tracer_provider.get_tracer("test")
    with tracer.start_as_current_span("scrape") as other:
        (point,) = otel.points(ENERGY)
    assert point.exemplars, "the request's sampled span should give an exemplar"
    (exemplar,) = point.exemplars
    assert exemplar.trace_id == span.context.trace_id
    assert exemplar.span_id == span.context.span_id
    assert exemplar.span_id != other.get_span_context().span_id
    assert exemplar.value == pytest.approx(attrs(span)[a.ENERGY_TOTAL])


def test_exemplars_from_the_sampler_thread_link_to_each_request(
    instrument: Instrumented, source: ConstantPowerSource
) -> None:
    otel = Otel()
    otel.meter_provider.shutdown()
    # One bucket per request, so the reservoir keeps every exemplar.
    otel.reader = InMemoryMetricReader()
    otel.meter_provider = MeterProvider(
        metric_readers=[otel.reader],
        views=[
            View(
                instrument_name=ENERGY,
                aggregation=ExplicitBucketHistogramAggregation(
                    [1e-9 * 10**k for k in range(12)]
                ),
            )
        ],
    )
    app, _, recording = ready(instrument, otel, source, sampler_drains=True)
    paths = ["/sleep?seconds=0.001", "/sleep?seconds=0.03", "/sleep?seconds=0.3"]
    assert fetch(app, paths, concurrently=True) == [200] * 3
    wait_for(lambda: len(recording.threads) == 3)  # drained by the sampler
    assert set(recording.threads) == {"carbonspan-sampler"}
    spans = {s.context.span_id: s for s in otel.server_spans()}
    (point,) = otel.points(ENERGY)
    assert point.count == 3
    linked = {e.span_id: e for e in point.exemplars}
    assert set(linked) == set(spans)
    for span_id, exemplar in linked.items():
        assert exemplar.trace_id == spans[span_id].context.trace_id
        assert exemplar.value == pytest.approx(attrs(spans[span_id])[a.ENERGY_TOTAL])
    otel.tracer_provider.shutdown()
    otel.meter_provider.shutdown()


def test_a_full_buffer_drops_counts_and_never_blocks(
    otel: Otel,
    instrument: Instrumented,
    source: ConstantPowerSource,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, inst, _ = ready(instrument, otel, source)
    inst.metrics.queue.buffer_size = 2
    with caplog.at_level(logging.WARNING, logger="carbonspan.otel.metric_queue"):
        assert fetch(app, ["/fast"] * 5, concurrently=True) == [200] * 5
    assert len(otel.server_spans()) == 5  # the spans are complete all the same
    assert all(a.ENERGY_TOTAL in attrs(s) for s in otel.server_spans())
    assert sum(p.count for p in otel.points(ENERGY)) == 2
    (dropped,) = otel.points("codecarbon.requests.dropped")
    assert dropped.value == 3
    warnings = [r for r in caplog.records if "codecarbon.requests.dropped" in r.message]
    assert len(warnings) == 1  # then at most once a minute


def test_nothing_is_dropped_by_default_under_a_burst(
    otel: Otel, instrument: Instrumented, source: ConstantPowerSource
) -> None:
    app, _, _ = ready(instrument, otel, source, sampler_drains=True)
    assert fetch(app, ["/fast"] * 300, concurrently=True) == [200] * 300
    points = otel.points(ENERGY)
    assert sum(p.count for p in points) == 300
    spans = otel.server_spans()
    assert sum(p.sum for p in points) == pytest.approx(
        sum(attrs(s)[a.ENERGY_TOTAL] for s in spans), rel=1e-9
    )
    (dropped,) = otel.points("codecarbon.requests.dropped")
    assert dropped.value == 0


def test_drained_when_the_meter_provider_shuts_down(
    instrument: Instrumented, source: ConstantPowerSource
) -> None:
    otel, exporter = exporting()
    app, _, recording = ready(instrument, otel, source)
    assert fetch(app, ["/fast"] * 3, concurrently=True) == [200] * 3
    assert recording.threads == []
    otel.meter_provider.shutdown()  # its last export collects, and so drains
    assert exporter.counts(ENERGY) == [3]
    otel.tracer_provider.shutdown()


def test_drained_by_the_flush_at_server_shutdown(
    instrument: Instrumented, source: ConstantPowerSource
) -> None:
    otel, exporter = exporting()
    app, _, recording = ready(instrument, otel, source)

    async def serve() -> None:
        # A server's lifespan: startup, requests, then shutdown.
        messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
        sent: list[str] = []
        started = asyncio.Event()
        stop = asyncio.Event()

        async def receive() -> dict[str, Any]:
            if len(messages) == 1:
                await stop.wait()
            return messages.pop(0)

        async def send(message: dict[str, Any]) -> None:
            sent.append(message["type"])
            if message["type"] == "lifespan.startup.complete":
                started.set()

        task = asyncio.create_task(app({"type": "lifespan"}, receive, send))
        await started.wait()
        async with client(app) as c:
            for _ in range(3):
                assert (await c.get("/fast")).status_code == 200
        assert recording.threads == []  # queued, not recorded yet
        stop.set()
        await task
        assert sent[-1] == "lifespan.shutdown.complete"

    asyncio.run(serve())
    assert exporter.counts(ENERGY) == [3]
    otel.tracer_provider.shutdown()
    otel.meter_provider.shutdown()


def test_drained_at_uninstrument(
    otel: Otel, instrument: Instrumented, source: ConstantPowerSource
) -> None:
    app, inst, recording = ready(instrument, otel, source)
    assert fetch(app, ["/fast"] * 2, concurrently=True) == [200] * 2
    assert recording.threads == []
    CodeCarbonInstrumentor.uninstrument_app(app)
    instrument.carbon.remove(app)
    assert recording.threads == [threading.current_thread().name] * 2
    assert not inst.sampler.after_tick
    # Recorded on the provider although nothing was collected before.
    assert sum(p.count for p in otel.points(ENERGY)) == 2


def test_a_forked_child_starts_empty_and_the_parent_keeps_its_queue(
    otel: Otel, instrument: Instrumented, source: ConstantPowerSource
) -> None:
    app, inst, recording = ready(instrument, otel, source)
    queue = inst.metrics.queue
    queue.buffer_size = 2
    assert fetch(app, ["/fast"] * 3, concurrently=True) == [200] * 3
    assert queue.dropped == 1
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what it inherited, then leave at once
        try:
            # What draining would record there, and the drops it counts.
            os.write(write, f"{queue.drain()} {queue.dropped}".encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read()
    os.waitpid(pid, 0)
    assert child == "0 0"  # the parent's queue is the parent's to record
    assert recording.threads == []
    assert sum(p.count for p in otel.points(ENERGY)) == 2
    (dropped,) = otel.points("codecarbon.requests.dropped")
    assert dropped.value == 1


def test_nothing_recorded_for_excluded_or_unmeasured_requests(
    otel: Otel, instrument: Instrumented, source: ConstantPowerSource
) -> None:
    app, _, _ = ready(instrument, otel, source, excluded_urls="/items")
    assert fetch(app, ["/items/1", "/fast"]) == [200, 200]
    (point,) = otel.points(ENERGY)
    assert point.attributes[a.HTTP_ROUTE] == "/fast" and point.count == 1


def test_unsampled_requests_are_recorded_without_exemplars(
    instrument: Instrumented, source: ConstantPowerSource
) -> None:
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    otel = Otel(sampler=ALWAYS_OFF)
    app, _, _ = ready(instrument, otel, source)
    assert fetch(app, ["/fast"] * 2, concurrently=True) == [200] * 2
    (point,) = otel.points(ENERGY)
    assert point.count == 2
    assert point.exemplars == []
    otel.tracer_provider.shutdown()
    otel.meter_provider.shutdown()


def test_no_tracing_at_all_still_records(instrument: Instrumented) -> None:
    otel = Otel()
    app, inst = ready_app(
        instrument, None, power_source=ConstantPowerSource(cpu=5.0),
        sample_interval=0.02, meter_provider=otel.meter_provider,
    )  # fmt: skip
    hold_draining(inst)
    assert trace.get_current_span() is trace.INVALID_SPAN
    assert fetch(app, ["/fast"]) == [200]
    (point,) = otel.points(ENERGY)
    assert point.count == 1 and point.exemplars == []
    otel.meter_provider.shutdown()
