"""The span contract, in process, for both span creators and every response kind."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry import metrics, trace

from carbonspan.carbon.intensity import resolve
from carbonspan.otel import attributes as a
from carbonspan.testing import ConstantPowerSource
from support.apps import build_app
from support.asgi import client, fetch
from support.checks import async_wait_for
from support.otel import Instrumented, Otel, attrs, ready_app, wait_ready

CPU_W, RAM_W = 10.0, 2.0


@pytest.fixture
def source() -> ConstantPowerSource:
    return ConstantPowerSource(cpu=CPU_W, ram=RAM_W)


@pytest.mark.parametrize("order", ["before", "after"])
def test_contrib_span_carries_the_contract(
    order: str, otel: Otel, instrument: Instrumented, source: ConstantPowerSource
) -> None:
    app, _ = ready_app(
        instrument, otel, contrib=order, power_source=source, country_iso_code="FRA",
        sample_interval=0.02,
    )  # fmt: skip
    assert fetch(app, ["/sleep?seconds=0.05"]) == [200]
    (span,) = otel.server_spans()
    assert span.instrumentation_scope.name == "opentelemetry.instrumentation.fastapi"
    got = attrs(span)
    intensity = resolve(country_iso_code="FRA")
    assert got[a.ENERGY_TOTAL] == pytest.approx(
        got[a.ENERGY["cpu"]] + got[a.ENERGY["ram"]]
    )
    assert a.ENERGY["gpu"] not in got and a.POWER["gpu"] not in got
    # A lone request is charged the process's whole power over its life.
    duration = (span.end_time - span.start_time) / 1e9  # type: ignore[operator]
    assert 0.045 * CPU_W <= got[a.ENERGY["cpu"]] <= duration * CPU_W * 1.01
    assert got[a.ENERGY["ram"]] == pytest.approx(got[a.ENERGY["cpu"]] * RAM_W / CPU_W)
    assert got[a.POWER["cpu"]] == pytest.approx(CPU_W, rel=0.01)
    assert got[a.POWER["ram"]] == pytest.approx(RAM_W, rel=0.01)
    assert got[a.EMISSIONS] == pytest.approx(
        got[a.ENERGY_TOTAL] / 3.6e6 * intensity.g_per_kwh, rel=1e-12
    )
    assert got[a.CARBON_INTENSITY] == intensity.g_per_kwh
    assert got[a.COUNTRY] == "FRA"
    assert got[a.LOCATION_SOURCE] == "country"
    assert got[a.MEASUREMENT["cpu"]] == "fake" and got[a.MEASUREMENT["ram"]] == "fake"
    assert got[a.ATTRIBUTION] == "time_share"
    assert got[a.SCOPE] == "process"
    assert got[a.CONCURRENCY] == pytest.approx(1.0)
    assert isinstance(got[a.ENERGY_TOTAL], float)


def test_native_fastapi_span_carries_the_contract(
    otel: Otel, instrument: Instrumented, source: ConstantPowerSource,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # FastAPI's own telemetry needs the global providers to be real ones.
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", otel.tracer_provider)
    monkeypatch.setattr(metrics._internal, "_METER_PROVIDER", otel.meter_provider)
    app, _ = ready_app(
        instrument, otel, contrib=None, power_source=source, sample_interval=0.02
    )
    assert fetch(app, ["/items/7"]) == [200]
    (span,) = otel.server_spans()
    assert span.instrumentation_scope.name == "fastapi"
    got = attrs(span)
    assert got[a.ENERGY_TOTAL] > 0
    assert got[a.LOCATION_SOURCE] == "default"
    (point,) = otel.points("codecarbon.request.energy")
    assert point.attributes[a.HTTP_ROUTE] == "/items/{item_id}"
    assert point.sum == pytest.approx(got[a.ENERGY_TOTAL])


CASES = {
    "/fast": 200,
    "/sleep?seconds=0.05": 200,
    "/sync-sleep?seconds=0.05": 200,
    "/cpu?seconds=0.02": 200,
    "/stream?chunks=4&pause=0.01": 200,
    "/boom": 500,
    "/teapot": 418,
    "/no/such/route": 404,
}


def test_every_response_kind_is_measured(
    otel: Otel, instrument: Instrumented, source: ConstantPowerSource
) -> None:
    app, inst = ready_app(instrument, otel, power_source=source, sample_interval=0.02)
    assert fetch(app, list(CASES), concurrently=True) == list(CASES.values())
    spans = otel.server_spans()
    assert len(spans) == len(CASES)
    for span in spans:
        got = attrs(span)
        assert got[a.ENERGY_TOTAL] > 0, span.name
        assert got[a.EMISSIONS] > 0, span.name
    points = otel.points("codecarbon.request.energy")
    series = {
        (p.attributes.get(a.HTTP_ROUTE), p.attributes[a.HTTP_STATUS]) for p in points
    }
    assert series == {
        ("/fast", 200), ("/sleep", 200), ("/sync-sleep", 200), ("/cpu", 200),
        ("/stream", 200), ("/boom", 500), ("/teapot", 418),
        (None, 404),  # unknown routes collapse to one series with no route
    }  # fmt: skip
    assert sum(p.count for p in points) == len(CASES)
    assert inst.ledger.in_flight == 0


def test_streaming_is_charged_up_to_the_last_chunk(
    otel: Otel, instrument: Instrumented, source: ConstantPowerSource
) -> None:
    app, _ = ready_app(instrument, otel, power_source=source, sample_interval=0.02)
    assert fetch(app, ["/stream?chunks=5&pause=0.04"]) == [200]
    (span,) = otel.server_spans()
    energy = attrs(span)[a.ENERGY["cpu"]]
    # Five pauses of 40 ms happen before the last chunk, all charged.
    assert energy >= 0.2 * CPU_W * 0.99
    duration = (span.end_time - span.start_time) / 1e9  # type: ignore[operator]
    assert energy <= duration * CPU_W * 1.01


def test_concurrent_requests_share_the_power(
    otel: Otel, instrument: Instrumented, source: ConstantPowerSource
) -> None:
    app, _ = ready_app(instrument, otel, power_source=source, sample_interval=0.02)
    assert fetch(app, ["/sleep?seconds=0.2"] * 4, concurrently=True) == [200] * 4
    spans = otel.server_spans()
    for span in spans:
        got = attrs(span)
        assert got[a.CONCURRENCY] == pytest.approx(4, rel=0.15)
        # Each is charged a quarter, while the process drew its full power.
        assert got[a.ENERGY["cpu"]] == pytest.approx(0.2 * CPU_W / 4, rel=0.15)
        assert got[a.POWER["cpu"]] == pytest.approx(CPU_W, rel=0.05)


def test_unsampled_and_untraced_requests_hold_windows_and_count_in_metrics(
    instrument: Instrumented, source: ConstantPowerSource
) -> None:
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    otel = Otel(sampler=ALWAYS_OFF)
    app, _ = ready_app(instrument, otel, power_source=source, sample_interval=0.02)
    assert fetch(app, ["/sleep?seconds=0.1"] * 6, concurrently=True) == [200] * 6
    assert otel.server_spans() == []
    (point,) = otel.points("codecarbon.request.energy")
    assert point.count == 6
    # Six windows shared the power: each was charged about a sixth.
    assert point.sum / 6 == pytest.approx(0.1 * CPU_W / 6 + 0.1 * RAM_W / 6, rel=0.25)


def test_no_tracing_configured_still_measures(
    instrument: Instrumented, source: ConstantPowerSource
) -> None:
    otel = Otel()
    app = build_app()
    # No span creator at all: only carbonspan and a meter provider.
    inst = instrument(
        app, otel, contrib=None, power_source=source, sample_interval=0.02
    )
    wait_ready(inst)
    assert fetch(app, ["/fast", "/fast", "/cpu?seconds=0.01"]) == [200] * 3
    points = otel.points("codecarbon.request.energy")
    assert sum(p.count for p in points) == 3
    assert inst.ledger.in_flight == 0


def test_excluded_urls_hold_a_window_but_get_nothing(
    otel: Otel, instrument: Instrumented, source: ConstantPowerSource
) -> None:
    app, inst = ready_app(
        instrument, otel, power_source=source, sample_interval=0.02,
        excluded_urls="^/health$,/sleep",
    )  # fmt: skip
    before = inst.ledger.totals()
    assert fetch(app, ["/sleep?seconds=0.2", "/fast"]) == [200, 200]
    spans = {s.name: s for s in otel.server_spans()}
    assert attrs(spans["GET /sleep"]) == {}
    assert attrs(spans["GET /fast"])[a.ENERGY_TOTAL] > 0
    assert otel.routes() == ["/fast"]
    after = inst.ledger.totals()
    # The excluded request's share went to the unattributed account.
    assert after.unattributed[0] - before.unattributed[0] >= 0.19 * CPU_W * 0.95
    # And /fast was charged only its own share, not the excluded one's.
    assert attrs(spans["GET /fast"])[a.ENERGY["cpu"]] < 0.05 * CPU_W


def test_instrumenting_twice_does_nothing_the_second_time(
    otel: Otel, instrument: Instrumented, source: ConstantPowerSource
) -> None:
    from carbonspan import CodeCarbonInstrumentor, CodeCarbonMiddleware
    from carbonspan.otel.instrumentor import instrumentation_of

    app = build_app()
    inst = instrument(app, otel, power_source=source, sample_interval=0.02)
    CodeCarbonInstrumentor().instrument_app(app, power_source=source)
    assert instrumentation_of(app) is inst
    wait_ready(inst)
    assert fetch(app, ["/fast"]) == [200]
    node, count = app.middleware_stack, 0
    while node is not None:
        count += isinstance(node, CodeCarbonMiddleware)
        node = getattr(node, "app", None)
    assert count == 1
    (point,) = otel.points("codecarbon.request.energy")
    assert point.count == 1


def test_two_apps_on_one_meter_provider_report_together(
    otel: Otel, instrument: Instrumented, source: ConstantPowerSource
) -> None:
    apps = [build_app(), build_app()]
    instrumentations = [
        instrument(app, otel, power_source=source, sample_interval=0.02) for app in apps
    ]
    assert (
        instrumentations[0].sampler is instrumentations[1].sampler
    )  # one source: one sampler
    wait_ready(instrumentations[0])
    two, three = ["/sleep?seconds=0.05"] * 2, ["/sleep?seconds=0.05"] * 3
    assert fetch(apps[0], two, concurrently=True) == [200, 200]
    assert fetch(apps[1], three, concurrently=True) == [200, 200, 200]
    (energy,) = otel.points("codecarbon.request.energy")
    assert energy.count == 5
    (grams,) = otel.points("codecarbon.request.emissions")
    # The emissions count what a request drew up to its close: on a busy
    # machine the app may return over 1 ms after the response went out, and
    # that tail is in the background energy, not in the histogram.
    background = sum(
        p.value for p in otel.points("codecarbon.request.background.energy")
    )
    joules = energy.sum + background
    assert grams.value == pytest.approx(instrumentations[0].intensity.grams(joules))
    attributed = [
        p.value
        for p in otel.points("codecarbon.energy")
        if p.attributes[a.ATTRIBUTED] and p.attributes[a.HW_TYPE] == "cpu"
    ]
    # The shared ledger is counted once, not once per app.
    assert attributed == [
        pytest.approx(instrumentations[0].ledger.totals().attributed[0])
    ]


def test_in_flight_is_observable_and_returns_to_zero(
    otel: Otel, instrument: Instrumented, source: ConstantPowerSource
) -> None:
    app, inst = ready_app(instrument, otel, power_source=source, sample_interval=0.02)
    seen: list[int] = []

    async def go() -> None:
        async with client(app) as c:
            pending = [
                asyncio.create_task(c.get("/sleep?seconds=0.3")) for _ in range(3)
            ]
            await async_wait_for(lambda: inst.ledger.in_flight == 3)
            (point,) = otel.points("codecarbon.requests.in_flight")
            seen.append(point.value)
            await asyncio.gather(*pending)

    asyncio.run(go())
    assert seen == [3]
    (point,) = otel.points("codecarbon.requests.in_flight")
    assert point.value == 0
