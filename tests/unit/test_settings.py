"""Settings: bad keyword values raise ValueError; bad env values are logged."""

from __future__ import annotations

import logging

import pytest

from carbonspan import CodeCarbonInstrumentor
from carbonspan.config import Settings
from carbonspan.emissions import cloud_regions, resolve, world_average
from carbonspan.testing import ConstantPowerSource

BAD_KWARGS = [
    ("scope", "galaxy", "process, machine"),
    ("sample_interval", 0, "[0.01, 60]"),
    ("sample_interval", -1.5, "[0.01, 60]"),
    ("sample_interval", 1e-9, "[0.01, 60]"),
    ("sample_interval", 60.5, "[0.01, 60]"),
    ("sample_interval", "soon", "number"),
    ("sample_interval", "1_0", "number"),
    ("country_iso_code", "XXX", "ISO 3166-1 alpha-3"),
    ("country_iso_code", "", "non-empty"),
    ("carbon_intensity", -3, "[0, 2000]"),
    ("carbon_intensity", 1e308, "[0, 2000]"),
    ("carbon_intensity", "4_75", "number"),
    ("carbon_intensity", float("nan"), "finite"),
    ("cloud_provider", "ibm", "aws, azure, gcp"),
    ("attribution", "random", "time_share"),
    ("excluded_urls", "([", "regex"),
    ("excluded_urls", 42, "regexes"),
    ("response_headers", "maybe", "'maybe' is not accepted"),
    ("power_source", object(), "read() and describe()"),
]


@pytest.mark.parametrize(("name", "value", "accepted"), BAD_KWARGS)
def test_bad_keyword_raises_naming_the_setting(
    name: str, value: object, accepted: str
) -> None:
    with pytest.raises(ValueError) as info:
        Settings.load({name: value}, environ={})
    assert str(info.value).startswith(f"{name}:")
    assert accepted in str(info.value)


@pytest.mark.parametrize(("name", "value", "accepted"), BAD_KWARGS[:3])
def test_instrument_app_raises_before_touching_the_app(
    name: str, value: object, accepted: str
) -> None:
    from apps import build_app

    app = build_app()
    original = app.build_middleware_stack
    with pytest.raises(ValueError, match=name):
        CodeCarbonInstrumentor().instrument_app(app, **{name: value})
    assert app.build_middleware_stack == original
    assert not hasattr(app, "_carbonspan_runtime")


def test_instrument_raises_and_stays_uninstrumented() -> None:
    instrumentor = CodeCarbonInstrumentor()
    with pytest.raises(ValueError, match="scope"):
        instrumentor.instrument(scope="nowhere")
    assert not instrumentor.is_instrumented_by_opentelemetry


def test_unknown_setting_is_refused() -> None:
    with pytest.raises(ValueError, match=r"unknown setting.*contry"):
        Settings.load({"contry_iso_code": "FRA"}, environ={})


def test_cloud_region_needs_a_known_provider_region() -> None:
    with pytest.raises(ValueError, match="cloud_region: needs cloud_provider"):
        Settings.load({"cloud_region": "europe-west1"}, environ={})
    with pytest.raises(ValueError, match="cloud_region: 'mars-1' is not a gcp region"):
        Settings.load({"cloud_provider": "gcp", "cloud_region": "mars-1"}, environ={})
    # CodeCarbon has no factors for AWS: any region name is taken, and the
    # factor comes from the country (or the world average).
    s = Settings.load(
        {"cloud_provider": "aws", "cloud_region": "eu-west-3"}, environ={}
    )
    assert (s.cloud_provider, s.cloud_region) == ("aws", "eu-west-3")


@pytest.mark.parametrize(
    ("kwargs", "env", "from_env"),
    [
        ({"cloud_region": "nowhere"}, {"CARBONSPAN_CLOUD_PROVIDER": "gcp"},
         "cloud_provider came from CARBONSPAN_CLOUD_PROVIDER='gcp'"),
        ({"cloud_provider": "gcp"}, {"CARBONSPAN_CLOUD_REGION": "nowhere"},
         "cloud_region came from CARBONSPAN_CLOUD_REGION='nowhere'"),
    ],
)  # fmt: skip
def test_a_cloud_keyword_raises_even_with_its_partner_from_the_env(
    kwargs: dict[str, str],
    env: dict[str, str],
    from_env: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from apps import build_app

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    app = build_app()
    with pytest.raises(ValueError) as info:
        CodeCarbonInstrumentor().instrument_app(app, **kwargs)
    message = str(info.value)
    assert message.startswith("cloud_region: 'nowhere' is not a gcp region")
    assert message.endswith(from_env)
    assert not hasattr(app, "_carbonspan_runtime")


def test_bad_cloud_region_from_env_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = {"CARBONSPAN_CLOUD_PROVIDER": "gcp", "CARBONSPAN_CLOUD_REGION": "mars-1"}
    with caplog.at_level(logging.ERROR, logger="carbonspan.config"):
        s = Settings.load({}, environ=env)
    assert s.cloud_provider is None and s.cloud_region is None
    (record,) = caplog.records
    assert record.getMessage().startswith(
        "carbonspan: ignoring CARBONSPAN_CLOUD_PROVIDER='gcp' and "
        "CARBONSPAN_CLOUD_REGION='mars-1': cloud_region: 'mars-1' is not a gcp region"
    )


def test_env_cloud_error_names_only_the_variables_set(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="carbonspan.config"):
        s = Settings.load({}, environ={"CARBONSPAN_CLOUD_REGION": "europe-west1"})
    assert s.cloud_region is None
    (record,) = caplog.records
    message = record.getMessage()
    assert "CARBONSPAN_CLOUD_REGION='europe-west1'" in message
    assert "needs cloud_provider" in message
    assert "CARBONSPAN_CLOUD_PROVIDER" not in message


def test_gcp_region_gives_the_cloud_factor_and_its_country() -> None:
    region, factor = next(iter(cloud_regions("gcp").items()))
    intensity = resolve(cloud_provider="gcp", cloud_region=region)
    assert (intensity.g_per_kwh, intensity.source) == (factor, "cloud")
    assert intensity.country_iso_code is not None
    aws = resolve(
        cloud_provider="aws", cloud_region="eu-west-3", country_iso_code="FRA"
    )
    assert aws.source == "country" and aws.cloud_provider == "aws"


def test_env_is_read_and_kwargs_win() -> None:
    env = {
        "CARBONSPAN_COUNTRY_ISO_CODE": "deu",
        "CARBONSPAN_SAMPLE_INTERVAL": "0.5",
        "CARBONSPAN_SCOPE": "machine",
        "CARBONSPAN_EXCLUDED_URLS": "/health, /metrics",
        "CARBONSPAN_CARBON_INTENSITY": "120",
    }
    s = Settings.load({}, environ=env)
    assert s.country_iso_code == "DEU"
    assert s.sample_interval == 0.5
    assert s.scope == "machine"
    assert s.excluded_urls is not None and s.excluded_urls.search("/metrics")
    assert s.carbon_intensity == 120.0
    s = Settings.load({"scope": "process", "sample_interval": 0.2}, environ=env)
    assert (s.scope, s.sample_interval) == ("process", 0.2)


def test_bad_env_is_logged_and_the_default_used(
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = {"CARBONSPAN_SCOPE": "galaxy", "CARBONSPAN_SAMPLE_INTERVAL": "-1"}
    with caplog.at_level(logging.ERROR, logger="carbonspan.config"):
        s = Settings.load({}, environ=env)
    assert s.scope == "process" and s.sample_interval == 0.1
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "CARBONSPAN_SCOPE" in messages and "process, machine" in messages
    assert "CARBONSPAN_SAMPLE_INTERVAL" in messages


def test_bad_env_does_not_stop_instrument_app(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from apps import build_app

    monkeypatch.setenv("CARBONSPAN_COUNTRY_ISO_CODE", "ATLANTIS")
    app = build_app()
    with caplog.at_level(logging.ERROR):
        CodeCarbonInstrumentor().instrument_app(
            app, power_source=ConstantPowerSource(cpu=1)
        )
    try:
        assert app._carbonspan_runtime.intensity.source == "default"
        assert "CARBONSPAN_COUNTRY_ISO_CODE" in caplog.text
    finally:
        CodeCarbonInstrumentor.uninstrument_app(app)


def test_intensity_resolution_order() -> None:
    from codecarbon.core.emissions import Emissions
    from codecarbon.core.units import Energy
    from codecarbon.external.geography import GeoMetadata
    from codecarbon.input import DataSource

    config = resolve(carbon_intensity=42.0, country_iso_code="FRA")
    assert (config.g_per_kwh, config.source) == (42.0, "config")

    region, factor = next(iter(cloud_regions("gcp").items()))
    cloud = resolve(cloud_provider="gcp", cloud_region=region, country_iso_code="FRA")
    assert (cloud.g_per_kwh, cloud.source) == (factor, "cloud")

    country = resolve(country_iso_code="POL")
    kg = Emissions(DataSource()).get_private_infra_emissions(
        Energy.from_energy(kWh=1.0), GeoMetadata(country_iso_code="POL")
    )
    assert country.source == "country"
    assert country.g_per_kwh == pytest.approx(kg * 1000)
    assert country.g_per_kwh > resolve(country_iso_code="FRA").g_per_kwh

    default = resolve()
    assert (default.g_per_kwh, default.source) == (world_average(), "default")
    assert default.grams(3.6e6) == pytest.approx(world_average())


def test_us_region_uses_regional_data() -> None:
    california = resolve(country_iso_code="USA", region="california")
    wyoming = resolve(country_iso_code="USA", region="wyoming")
    assert california.g_per_kwh != wyoming.g_per_kwh
