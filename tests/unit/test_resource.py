"""The constant attributes on the Resource, and what then stays on each span."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.resources import Resource, get_aggregated_resources

from carbonspan.otel import attributes as a
from carbonspan.resource import CodeCarbonResourceDetector
from carbonspan.testing import ConstantPowerSource
from support.apps import build_app
from support.asgi import get
from support.otel import Instrumented, Otel, attrs, wait_ready

PER_REQUEST = {
    a.ENERGY_TOTAL,
    a.ENERGY["cpu"],
    a.ENERGY["ram"],
    a.POWER["cpu"],
    a.POWER["ram"],
    a.EMISSIONS,
    a.CONCURRENCY,
}
STATIC = {
    a.CARBON_INTENSITY,
    a.LOCATION_SOURCE,
    a.COUNTRY,
    a.SCOPE,
    a.ATTRIBUTION,
    a.CPU_MODEL,
    a.MEASUREMENT["cpu"],
    a.MEASUREMENT["ram"],
}


def served_span(
    instrument: Instrumented,
    resource: Resource | None,
    backend: str = "asyncio",
    **settings: Any,
) -> tuple[dict[str, Any], Otel]:
    """The attributes of one request's span (served under `backend`), its
    tracer provider's Resource `resource`."""
    otel = Otel()
    if resource is not None:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        otel.tracer_provider = TracerProvider(resource=resource)
        otel.tracer_provider.add_span_processor(SimpleSpanProcessor(otel.exporter))
    app = build_app()
    settings.setdefault("power_source", ConstantPowerSource(cpu=10.0, ram=2.0))
    inst = instrument(app, otel, sample_interval=0.02, **settings)
    wait_ready(inst)
    assert get(app, "/fast", backend=backend).status_code == 200
    (span,) = otel.server_spans()
    return attrs(span), otel


def test_without_the_detector_every_span_carries_all_attributes(
    instrument: Instrumented,
) -> None:
    got, _otel = served_span(instrument, None, country_iso_code="FRA")
    assert set(got) == PER_REQUEST | STATIC
    assert got[a.CPU_MODEL] == "fake"


def test_with_the_detector_the_span_carries_only_the_figures(
    instrument: Instrumented,
) -> None:
    source = ConstantPowerSource(cpu=10.0, ram=2.0)
    detected = CodeCarbonResourceDetector(
        country_iso_code="FRA", power_source=source
    ).detect()
    resource = Resource.create({"service.name": "shop"}).merge(detected)
    got, otel = served_span(
        instrument, resource, country_iso_code="FRA", power_source=source
    )
    assert set(got) == PER_REQUEST
    (span,) = otel.server_spans()
    on_resource = dict(span.resource.attributes)
    # Where the figures came from is still on what a trace backend shows.
    assert on_resource[a.COUNTRY] == "FRA"
    assert on_resource[a.LOCATION_SOURCE] == "country"
    assert on_resource[a.MEASUREMENT["cpu"]] == "fake"
    assert on_resource[a.ATTRIBUTION] == "time_share"
    assert got[a.EMISSIONS] == pytest.approx(
        got[a.ENERGY_TOTAL] / 3.6e6 * on_resource[a.CARBON_INTENSITY], rel=1e-12
    )


def test_what_the_resource_says_differently_stays_on_the_span(
    instrument: Instrumented,
) -> None:
    # The Resource was built from other settings than the instrumentation's.
    detected = CodeCarbonResourceDetector(country_iso_code="DEU").detect()
    got, _ = served_span(instrument, detected, country_iso_code="FRA")
    # All of them, so that the span never mixes two descriptions.
    assert set(got) == PER_REQUEST | STATIC
    assert got[a.COUNTRY] == "FRA"
    assert got[a.MEASUREMENT["cpu"]] == "fake"


def test_what_the_resource_lacks_stays_on_the_span(
    instrument: Instrumented,
) -> None:
    source = ConstantPowerSource(cpu=10.0, ram=2.0)
    detected = CodeCarbonResourceDetector(power_source=source).detect()
    partial = Resource(
        {k: v for k, v in detected.attributes.items() if k != a.CPU_MODEL}
    )
    got, _ = served_span(instrument, partial, power_source=source)
    assert set(got) == PER_REQUEST | {a.CPU_MODEL}


@pytest.mark.parametrize(
    ("backend", "charged_by"), [("asyncio", None), ("trio", "time_share")]
)
def test_a_request_whose_policy_differs_says_so_on_its_span(
    backend: str, charged_by: str | None, instrument: Instrumented
) -> None:
    # Under cpu_time, a request outside asyncio has no CPU clock: it is
    # charged by time share, and its span says so beside its Resource's
    # cpu_time. Under asyncio the Resource says it all.
    source = ConstantPowerSource(cpu=10.0, ram=2.0)
    detected = CodeCarbonResourceDetector(
        power_source=source, attribution="cpu_time"
    ).detect()
    assert detected.attributes[a.ATTRIBUTION] == "cpu_time"
    got, _ = served_span(
        instrument, detected, backend, power_source=source, attribution="cpu_time"
    )
    assert got.get(a.ATTRIBUTION) == charged_by
    assert got[a.ENERGY_TOTAL] > 0


def test_the_entry_point_works_with_the_sdk_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPERIMENTAL_RESOURCE_DETECTORS", "otel,codecarbon")
    monkeypatch.setenv("CARBONSPAN_COUNTRY_ISO_CODE", "SWE")
    monkeypatch.setenv("CARBONSPAN_SCOPE", "machine")
    got = dict(Resource.create({"service.name": "shop"}).attributes)
    assert got["service.name"] == "shop"
    assert got[a.COUNTRY] == "SWE"
    assert got[a.SCOPE] == "machine"
    assert got[a.LOCATION_SOURCE] == "country"
    assert got[a.CARBON_INTENSITY] > 0
    assert got[a.MEASUREMENT["cpu"]] in ("rapl", "cpu_load", "tdp")
    assert got[a.MEASUREMENT["ram"]] == "model"


def test_a_bad_setting_leaves_the_resource_without_our_attributes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    merged = get_aggregated_resources(
        [CodeCarbonResourceDetector(country_iso_code="not a country")]
    )
    assert a.COUNTRY not in merged.attributes
