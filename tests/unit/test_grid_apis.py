"""Electricity Maps and BoaviztAPI, spoken to over HTTP on 127.0.0.1, and what
their answers (or their failures) do to spans and metrics."""

from __future__ import annotations

import logging
import time
import urllib.error
from typing import Any

import pytest

from carbonspan.carbon import embodied
from carbonspan.carbon.embodied import Boavizta, EmbodiedEmissions
from carbonspan.carbon.grid import ElectricityMapsIntensity
from carbonspan.carbon.intensity import resolve
from carbonspan.otel import attributes as a
from carbonspan.testing import ConstantPowerSource
from support.apps import build_app
from support.asgi import fetch
from support.checks import wait_for
from support.fake_apis import BOAVIZTA_M5_LARGE, Canned, ElectricityMaps
from support.otel import Instrumented, Otel, attrs, ready_app, wait_ready
from support.server import free_port

TOKEN = "secret-token"


# --- Electricity Maps --------------------------------------------------------------


def test_electricity_maps_latest_intensity_for_a_zone() -> None:
    with ElectricityMaps([312.0, 95.5]) as api:
        provider = ElectricityMapsIntensity("DE", TOKEN, base_url=api.base_url)
        assert provider.current() == 312.0
        assert provider.current() == 95.5
        path, query, headers = api.seen[0]
        assert path == "/v3/carbon-intensity/latest"
        assert query == {"zone": "DE"}
        assert {k.lower(): v for k, v in headers.items()}["auth-token"] == TOKEN
    assert TOKEN not in repr(provider)


def test_electricity_maps_refusals_raise() -> None:
    with ElectricityMaps([300.0]) as api:
        wrong = ElectricityMapsIntensity("DE", "not-the-token", base_url=api.base_url)
        with pytest.raises(urllib.error.HTTPError) as info:
            wrong.current()
        assert info.value.code == 401
    with ElectricityMaps([None]) as api:  # a zone without data
        empty = ElectricityMapsIntensity("XX", TOKEN, base_url=api.base_url)
        with pytest.raises(
            ValueError, match=r"carbonIntensity for zone 'XX' is not a .*number: None"
        ):
            empty.current()


def wait_for_spans(otel: Otel, app: Any, done: Any, timeout: float = 15.0) -> None:
    """Serve requests until the spans show what `done` looks for."""

    def served_and_done() -> bool:
        assert fetch(app, ["/sleep?seconds=0.01"]) == [200]
        return bool(done([attrs(s) for s in otel.server_spans()]))

    wait_for(served_and_done, timeout=timeout)


def test_spans_follow_electricity_maps_from_the_environment(
    otel: Otel, instrument: Instrumented, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    values = [120.0, 480.0, 240.0, 60.0] * 50
    with ElectricityMaps(values) as api:
        for name, value in {
            "INTENSITY_PROVIDER": "electricitymaps",
            "ELECTRICITYMAPS_ZONE": "FR",
            "ELECTRICITYMAPS_URL": api.base_url,
            "ELECTRICITYMAPS_TOKEN": TOKEN,
            "INTENSITY_REFRESH": "0.05",
        }.items():
            monkeypatch.setenv("CARBONSPAN_" + name, value)
        app = build_app()
        inst = instrument(
            app, otel, power_source=ConstantPowerSource(cpu=10.0),
            country_iso_code="FRA", sample_interval=0.02,
        )  # fmt: skip
        with caplog.at_level(logging.DEBUG):
            wait_ready(inst)

            def two_values(spans: list[dict[str, Any]]) -> bool:
                seen = {
                    s[a.CARBON_INTENSITY]
                    for s in spans
                    if s.get(a.LOCATION_SOURCE) == "electricitymaps"
                }
                return len(seen) >= 2

            wait_for_spans(otel, app, two_values)
    spans = [attrs(s) for s in otel.server_spans()]
    for got in spans:
        if a.ENERGY_TOTAL not in got:
            continue
        # Each span's factor is the one its emissions were computed with.
        assert got[a.EMISSIONS] == pytest.approx(
            got[a.ENERGY_TOTAL] / 3.6e6 * got[a.CARBON_INTENSITY], rel=1e-12
        )
        if got[a.LOCATION_SOURCE] == "electricitymaps":
            assert got[a.CARBON_INTENSITY] in values
        else:  # before the first answer: the country's factor, labelled so
            assert got[a.LOCATION_SOURCE] == "country"
            assert got[a.CARBON_INTENSITY] == resolve(country_iso_code="FRA").g_per_kwh
        assert got[a.COUNTRY] == "FRA"
    (gauge,) = otel.points("codecarbon.carbon_intensity")
    assert gauge.value in values
    assert all(q == {"zone": "FR"} for _, q, _ in api.seen)
    assert TOKEN not in caplog.text


def test_electricity_maps_refusing_the_token_never_hurts_a_request(
    otel: Otel, instrument: Instrumented, caplog: pytest.LogCaptureFixture
) -> None:
    with ElectricityMaps([300.0], token="another") as api:
        app = build_app()
        inst = instrument(
            app, otel, power_source=ConstantPowerSource(cpu=10.0),
            carbon_intensity=70.0, intensity_provider="electricitymaps",
            electricitymaps_zone="DE", electricitymaps_url=api.base_url,
            electricitymaps_token=TOKEN, intensity_refresh=0.05,
            sample_interval=0.02,
        )  # fmt: skip
        with caplog.at_level(logging.WARNING, logger="carbonspan.carbon.grid"):
            wait_ready(inst)
            deadline = time.monotonic() + 10
            while inst.grid.failures < 3 and time.monotonic() < deadline:
                assert fetch(app, ["/fast"] * 3) == [200, 200, 200]
    assert inst.grid.failures >= 3
    assert len([r for r in caplog.records if "401" in r.getMessage()]) == 1
    spans = [attrs(s) for s in otel.server_spans()]
    measured = [s for s in spans if a.ENERGY_TOTAL in s]
    assert measured
    for got in measured:  # the configured factor, nothing invented
        assert got[a.CARBON_INTENSITY] == 70.0 and got[a.LOCATION_SOURCE] == "config"


# --- BoaviztAPI ---------------------------------------------------------------------


def test_boavizta_cloud_instance_whole_life_once() -> None:
    with Canned(200, BOAVIZTA_M5_LARGE) as api:
        server = Boavizta(api.url, cloud_provider="aws", cloud_instance="m5.large")
        got = server.fetch()
        again = server.fetch()
        assert len(api.seen) == 1  # cached
        path, query, _ = api.seen[0]
    assert path == "/v1/cloud/instance"
    assert query == {
        "provider": "aws", "instance_type": "m5.large", "criteria": "gwp",
        "verbose": "true",
    }  # fmt: skip
    assert got == again
    assert (got.kg, got.lifetime_hours, got.origin) == (24.0, 52560.0, "boavizta")
    # 24 kg over 6 years: 0.457 g an hour, as BoaviztAPI says for 1 h.
    assert got.grams_per_second * 3600 == pytest.approx(24000 / 52560)
    longer = Boavizta(
        api.url, cloud_provider="aws", cloud_instance="m5.large", lifetime_years=8
    ).fetch()  # the setting replaces BoaviztAPI's lifespan, from the cache
    assert (longer.kg, longer.lifetime_hours) == (24.0, 8 * 8766.0)


def test_boavizta_server_archetype_query() -> None:
    server = Boavizta("http://127.0.0.1:1/", archetype="platform_compute_medium")
    assert server.url == (
        "http://127.0.0.1:1/v1/server/?archetype=platform_compute_medium"
        "&criteria=gwp&verbose=true"
    )


@pytest.mark.parametrize(
    ("status", "body"),
    [(404, {"detail": "m9.huge at aws not found"}), (200, {"impacts": {}})],
)
def test_boavizta_answers_without_a_figure_are_not_asked_again(
    status: int, body: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with Canned(status, body) as api:
        source = EmbodiedEmissions(
            boavizta=Boavizta(api.url, cloud_provider="aws", cloud_instance="m9.huge"),
            threaded=False,
        )
        with caplog.at_level(logging.WARNING, logger="carbonspan.carbon.embodied"):
            for now in (0.0, 400.0, 800.0):
                source.poll(now)
        assert len(api.seen) == 1
    assert source.value is None and source.refresher.stopped
    assert len(caplog.records) == 1


def test_boavizta_unreachable_means_no_embodied_figures_and_a_single_warning(
    otel: Otel, instrument: Instrumented, caplog: pytest.LogCaptureFixture
) -> None:
    app = build_app()
    with caplog.at_level(logging.WARNING, logger="carbonspan.carbon.embodied"):
        inst = instrument(
            app, otel, power_source=ConstantPowerSource(cpu=10.0),
            boavizta_url=f"http://127.0.0.1:{free_port()}",
            cloud_provider="aws", cloud_instance="m5.large", sample_interval=0.02,
        )  # fmt: skip
        wait_ready(inst)
        source = inst.accounts.embodied
        wait_for(lambda: source.failures >= 1)
        assert fetch(app, ["/sleep?seconds=0.02"] * 3) == [200, 200, 200]
        # Asked again once RETRY seconds have gone by, silently: one warning.
        assert not source.refresher.stopped  # a server not up yet may come up
        later = time.monotonic() + embodied.RETRY + 1.0

        def asked_again() -> bool:
            source.poll(later)  # a no-op while the first ask still winds up
            return source.failures >= 2

        wait_for(asked_again)
    assert "no embodied emissions" in caplog.records[0].getMessage()
    spans = [attrs(s) for s in otel.server_spans()]
    assert spans and all(a.EMBODIED not in s and a.SCI not in s for s in spans)
    assert any(a.ENERGY_TOTAL in s for s in spans)
    assert otel.points("codecarbon.emissions.embodied") == []


def test_boavizta_answer_reaches_spans_and_metrics(
    otel: Otel, instrument: Instrumented
) -> None:
    with Canned(200, BOAVIZTA_M5_LARGE) as api:
        app, inst = ready_app(
            instrument, otel, power_source=ConstantPowerSource(cpu=10.0),
            carbon_intensity=100.0, boavizta_url=api.url, cloud_provider="aws",
            cloud_instance="m5.large", sample_interval=0.02,
        )  # fmt: skip
        wait_for(lambda: inst.accounts.factors.embodied_rate is not None)
        assert fetch(app, ["/items/3"] * 4) == [200] * 4
        assert fetch(app, ["/sleep?seconds=0.05"]) == [200]
        wait_ready(inst)  # a tick after the last close: the accounts have it
    rate = 24000 / (52560 * 3600)  # g/s
    spans = [attrs(s) for s in otel.server_spans()]
    measured = [s for s in spans if a.EMBODIED in s]
    assert len(measured) == 5
    for got, span in zip(spans, otel.server_spans(), strict=True):
        duration = (span.end_time - span.start_time) / 1e9  # type: ignore[operator]
        # Alone, a request reserves its duration, within the span's.
        assert 0 < got[a.EMBODIED] <= rate * duration
        if (span.attributes or {})["http.route"] == "/sleep":
            assert got[a.EMBODIED] >= rate * 0.05
        assert got[a.SCI] == got[a.EMISSIONS] + got[a.EMBODIED]
    by_route: dict[str, float] = {}
    for point in otel.points("codecarbon.request.emissions.embodied"):
        route = point.attributes[a.HTTP_ROUTE]
        by_route[route] = by_route.get(route, 0.0) + point.value
    spans_by_route: dict[str, float] = {}
    for got, span in zip(spans, otel.server_spans(), strict=True):
        route = (span.attributes or {})["http.route"]
        spans_by_route[route] = spans_by_route.get(route, 0.0) + got[a.EMBODIED]
    assert by_route.keys() == {"/items/{item_id}", "/sleep"}
    for route, grams in spans_by_route.items():
        assert by_route[route] == pytest.approx(grams, rel=1e-9)
    process = {
        p.attributes[a.ATTRIBUTED]: p.value
        for p in otel.points("codecarbon.emissions.embodied")
    }
    # The spans, plus the requests' time after their responses had gone (the
    # span creator ending the span, the app returning), attributed too.
    on_spans = sum(spans_by_route.values())
    assert on_spans <= process[True] <= on_spans * 1.1
    accounts = inst.accounts
    assert process[True] + accounts.embodied_unattributed == pytest.approx(
        accounts.embodied_total, rel=1e-9
    )
