"""How carbonspan is put in an app: instrument() hooks every FastAPI app built
afterwards, instrument_app() one app, CodeCarbonMiddleware any ASGI app; and
how it is taken out again."""

from __future__ import annotations

import asyncio
from importlib.metadata import entry_points
from typing import Any

import pytest
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from carbonspan import CodeCarbonInstrumentor, CodeCarbonMiddleware
from carbonspan.otel import attributes as a
from carbonspan.otel.instrumentor import instrumentation_of
from carbonspan.testing import ConstantPowerSource
from support.apps import build_app
from support.asgi import fetch, get
from support.fakes import Recorded
from support.otel import Instrumented, Otel, attrs, wait_ready


def measure(app: Any, otel: Otel, watts: float = 1.0) -> None:
    """instrument_app, with a constant source and the test's meter provider."""
    CodeCarbonInstrumentor().instrument_app(
        app, power_source=ConstantPowerSource(cpu=watts),
        meter_provider=otel.meter_provider,
    )  # fmt: skip


def middlewares(app: Any) -> list[str]:
    node, names = app.middleware_stack, []
    while node is not None:
        names.append(type(node).__name__)
        node = getattr(node, "app", None)
    return names


@pytest.mark.parametrize("contrib_first", [True, False])
def test_instrument_covers_apps_built_afterwards(
    otel: Otel, contrib_first: bool
) -> None:
    source = ConstantPowerSource(cpu=3.0)
    carbon = CodeCarbonInstrumentor()
    contrib = FastAPIInstrumentor()
    contrib_kwargs = {
        "tracer_provider": otel.tracer_provider,
        "meter_provider": otel.meter_provider,
    }
    if contrib_first:
        contrib.instrument(**contrib_kwargs)
    carbon.instrument(
        power_source=source, meter_provider=otel.meter_provider, sample_interval=0.01
    )
    if not contrib_first:
        contrib.instrument(**contrib_kwargs)
    try:
        app = build_app()
        assert get(app, "/fast").status_code == 200
        inst = instrumentation_of(app)  # the global instrumentation's
        assert inst is not None
        wait_ready(inst)
        assert get(app, "/sleep?seconds=0.05").status_code == 200
        stack = middlewares(app)
        assert stack.count("CodeCarbonMiddleware") == 1
        assert stack.index("OpenTelemetryMiddleware") < stack.index(
            "CodeCarbonMiddleware"
        )
        assert stack[0] == "ServerErrorMiddleware"
        span = otel.server_spans()[-1]
        assert attrs(span)[a.ENERGY_TOTAL] > 0
    finally:
        contrib.uninstrument()
        carbon.uninstrument()
    after = build_app()
    assert get(after, "/fast").status_code == 200
    assert "CodeCarbonMiddleware" not in middlewares(after)


def test_uninstrument_app_takes_the_middleware_out(otel: Otel) -> None:
    app = build_app()
    measure(app, otel)
    assert get(app, "/fast").status_code == 200
    assert "CodeCarbonMiddleware" in middlewares(app)
    CodeCarbonInstrumentor.uninstrument_app(app)
    assert "CodeCarbonMiddleware" not in middlewares(app)
    assert get(app, "/fast").status_code == 200


def test_uninstrument_under_contrib_patch_passes_through(otel: Otel) -> None:
    app = build_app()
    measure(app, otel)
    FastAPIInstrumentor.instrument_app(app, tracer_provider=otel.tracer_provider)
    try:
        assert get(app, "/fast").status_code == 200
        CodeCarbonInstrumentor.uninstrument_app(app)
        assert "CodeCarbonMiddleware" not in middlewares(app)
        assert "OpenTelemetryMiddleware" in middlewares(app)
        assert get(app, "/fast").status_code == 200
        assert attrs(otel.server_spans()[-1]) == {}
    finally:
        FastAPIInstrumentor.uninstrument_app(app)


def test_entry_point_is_registered() -> None:
    (ep,) = [
        e
        for e in entry_points(group="opentelemetry_instrumentor")
        if e.name == "codecarbon"
    ]
    assert ep.value == "carbonspan:CodeCarbonInstrumentor"
    assert ep.load() is CodeCarbonInstrumentor
    assert CodeCarbonInstrumentor().instrumentation_dependencies() == (
        "fastapi >= 0.100",
    )


def test_starlette_experimental_span_creator_is_recognised(otel: Otel) -> None:
    from starlette.middleware.opentelemetry import OpenTelemetryMiddleware

    app = build_app()
    app.add_middleware(OpenTelemetryMiddleware, tracer_provider=otel.tracer_provider)
    measure(app, otel, watts=2.0)
    try:
        inst = instrumentation_of(app)
        assert inst is not None
        wait_ready(inst)
        assert get(app, "/sleep?seconds=0.05").status_code == 200
        stack = middlewares(app)
        assert stack.index("OpenTelemetryMiddleware") + 1 == stack.index(
            "CodeCarbonMiddleware"
        )
        (span,) = otel.server_spans()
        assert span.instrumentation_scope.name == "starlette"
        assert attrs(span)[a.ENERGY_TOTAL] > 0
    finally:
        CodeCarbonInstrumentor.uninstrument_app(app)


def test_plain_starlette_app_inside_the_asgi_middleware(otel: Otel) -> None:
    async def hello(request: Any) -> PlainTextResponse:
        await asyncio.sleep(0.05)
        return PlainTextResponse("hello")

    inner = Starlette(routes=[Route("/hello/{name}", hello)])
    measured = CodeCarbonMiddleware(
        inner, power_source=ConstantPowerSource(cpu=6.0), sample_interval=0.02,
        meter_provider=otel.meter_provider,
    )  # fmt: skip
    app = OpenTelemetryMiddleware(
        measured,
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
    )
    try:
        wait_ready(measured.instrumentation)
        assert get(app, "/hello/ada").status_code == 200
        (span,) = otel.server_spans()
        got = attrs(span)
        assert got[a.ENERGY_TOTAL] == pytest.approx(got[a.ENERGY["cpu"]])
        assert got[a.ENERGY["cpu"]] >= 0.05 * 6.0 * 0.95
        (point,) = otel.points("codecarbon.request.energy")
        assert point.attributes[a.HTTP_ROUTE] == "/hello/{name}"
    finally:
        measured.instrumentation.close()


def test_energy_totals_give_an_apps_books_against_the_source(
    instrument: Instrumented, otel: Otel
) -> None:
    app = build_app()
    assert CodeCarbonInstrumentor.energy_totals(app) is None  # nothing measures it
    source = Recorded(ConstantPowerSource(cpu=10.0, ram=2.0))
    inst = instrument(app, otel, power_source=source, sample_interval=0.02)
    wait_ready(inst)
    assert fetch(app, ["/sleep?seconds=0.05", "/fast"], concurrently=True) == [200] * 2
    inst.sampler.stop()
    inst.sampler.sample()  # a last reading, with nothing in flight
    totals = CodeCarbonInstrumentor.energy_totals(app)
    assert totals is not None and totals.in_flight == 0
    assert set(totals.measured) == {"cpu", "ram"}  # no GPU: no key, not a 0
    first, last = source.first, source.last
    assert first is not None and last is not None
    for component, watts in (("cpu", 10.0), ("ram", 2.0)):
        drawn = getattr(last, component) - getattr(first, component)
        assert totals.measured[component] == pytest.approx(drawn)
        assert totals.power[component] == pytest.approx(watts)
        assert totals.open[component] == pytest.approx(0.0, abs=1e-9)
        assert totals.attributed[component] + totals.unattributed[
            component
        ] == pytest.approx(drawn)
        # The two requests ran at least the 50 ms sleep at full power.
        assert totals.attributed[component] >= watts * 0.05 * 0.9
    CodeCarbonInstrumentor.uninstrument_app(app)
    assert CodeCarbonInstrumentor.energy_totals(app) is None


def test_energy_totals_under_instrument_once_the_app_has_served(otel: Otel) -> None:
    carbon = CodeCarbonInstrumentor()
    carbon.instrument(
        power_source=ConstantPowerSource(cpu=5.0),
        sample_interval=0.02,
        meter_provider=otel.meter_provider,
        tracer_provider=otel.tracer_provider,
    )
    try:
        app = build_app()
        assert CodeCarbonInstrumentor.energy_totals(app) is None  # no stack yet
        assert get(app, "/fast").status_code == 200
        inst = instrumentation_of(app)
        assert inst is not None
        wait_ready(inst)
        by_app = CodeCarbonInstrumentor.energy_totals(app)
        by_default = CodeCarbonInstrumentor.energy_totals()
        assert by_app is not None and by_default is not None
        assert set(by_app.measured) == {"cpu"}
        assert by_default.measured["cpu"] >= by_app.measured["cpu"] > 0
    finally:
        carbon.uninstrument()
    assert CodeCarbonInstrumentor.energy_totals(app) is None
    assert CodeCarbonInstrumentor.energy_totals() is None
