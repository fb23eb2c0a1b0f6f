"""Where the carbon intensity comes from: the carbon_intensity setting, the
country (and its region), the cloud region, or the world average; the one line
that tells the user which, and why; and what the span says."""

from __future__ import annotations

import logging

import pytest

from carbonspan import CodeCarbonInstrumentor
from carbonspan.carbon.intensity import cloud_regions, regions, resolve, world_average
from carbonspan.config import Settings
from carbonspan.otel import attributes as a
from carbonspan.otel.instrumentor import instrumentation_of
from carbonspan.testing import ConstantPowerSource
from support.apps import build_app
from support.asgi import get
from support.checks import log_messages
from support.otel import Instrumented, Otel, attrs, ready_app

pytestmark = pytest.mark.usefixtures("fresh_warnings")


def test_intensity_resolution_order() -> None:
    from codecarbon.core.emissions import Emissions
    from codecarbon.core.units import Energy
    from codecarbon.external.geography import GeoMetadata
    from codecarbon.input import DataSource

    config = resolve(carbon_intensity=42.0, country_iso_code="FRA")
    assert (config.g_per_kwh, config.location_source) == (42.0, "config")

    region, factor = next(iter(cloud_regions("gcp").items()))
    cloud = resolve(cloud_provider="gcp", cloud_region=region, country_iso_code="FRA")
    assert (cloud.g_per_kwh, cloud.location_source) == (factor, "cloud")

    country = resolve(country_iso_code="POL")
    kg = Emissions(DataSource()).get_private_infra_emissions(
        Energy.from_energy(kWh=1.0), GeoMetadata(country_iso_code="POL")
    )
    assert country.location_source == "country"
    assert country.g_per_kwh == pytest.approx(kg * 1000)
    assert country.g_per_kwh > resolve(country_iso_code="FRA").g_per_kwh

    default = resolve()
    assert (default.g_per_kwh, default.location_source) == (world_average(), "default")
    assert default.grams(3.6e6) == pytest.approx(world_average())


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"carbon_intensity": 120.0},
         "carbon intensity 120 g CO2eq/kWh, from the carbon_intensity setting"),
        ({"country_iso_code": "FRA"},
         "CodeCarbon's figure for the electricity of FRA"),
        ({"country_iso_code": "USA", "region": "California"},
         "CodeCarbon's figure for the electricity of USA region california"),
        ({"cloud_provider": "gcp", "cloud_region": "europe-west1"},
         "CodeCarbon's figure for gcp region europe-west1"),
        ({"cloud_provider": "aws", "cloud_region": "eu-west-3"},
         "CodeCarbon's world average: no carbon_intensity or country_iso_code is "
         "set (CodeCarbon has no figure for aws region eu-west-3); set "
         "country_iso_code (or carbon_intensity) for the local grid"),
        ({"cloud_provider": "aws", "cloud_region": "eu-west-3",
          "country_iso_code": "FRA"},
         "CodeCarbon's figure for the electricity of FRA (CodeCarbon has no "
         "figure for aws region eu-west-3)"),
    ],
)  # fmt: skip
def test_one_info_line_says_which_intensity_and_why(
    settings: dict[str, object],
    expected: str,
    otel: Otel,
    instrument: Instrumented,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="carbonspan"):
        inst = instrument(
            build_app(), otel, power_source=ConstantPowerSource(cpu=1.0), **settings
        )
    (line,) = log_messages(caplog, "carbonspan.carbon.intensity")
    g = inst.intensity.g_per_kwh
    assert line.startswith(f"carbonspan: carbon intensity {g:.6g} g CO2eq/kWh, ")
    assert line.endswith(expected)
    assert caplog.records[-1].levelno == logging.INFO


# -- regions ------------------------------------------------------------------


def test_us_region_uses_regional_data() -> None:
    california = resolve(country_iso_code="USA", region="california")
    wyoming = resolve(country_iso_code="USA", region="wyoming")
    assert california.g_per_kwh != wyoming.g_per_kwh


def test_region_is_on_the_span_as_codecarbon_knows_it(
    otel: Otel, instrument: Instrumented
) -> None:
    app, _ = ready_app(
        instrument, otel, power_source=ConstantPowerSource(cpu=10.0),
        country_iso_code="usa", region=" California ",
    )  # fmt: skip
    assert get(app, "/sleep?seconds=0.02").status_code == 200
    (span,) = otel.server_spans()
    got = attrs(span)
    california = resolve(country_iso_code="USA", region="california")
    assert got[a.REGION] == "california" and got[a.COUNTRY] == "USA"
    assert got[a.CARBON_INTENSITY] == california.g_per_kwh
    assert california.g_per_kwh != resolve(country_iso_code="USA").g_per_kwh


def test_no_region_attribute_without_a_region(
    otel: Otel, instrument: Instrumented
) -> None:
    app, _ = ready_app(
        instrument, otel, power_source=ConstantPowerSource(cpu=10.0),
        country_iso_code="USA",
    )  # fmt: skip
    assert get(app, "/fast").status_code == 200
    (span,) = otel.server_spans()
    assert a.REGION not in attrs(span) and attrs(span)[a.COUNTRY] == "USA"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"country_iso_code": "USA", "region": "atlantis"},
         "region: 'atlantis' is not a USA region CodeCarbon knows; accepted: "
         "alabama, alaska, arizona, arkansas, california, colorado, ... "
         f"({len(regions('USA'))} in all)"),
        ({"country_iso_code": "CAN", "region": "atlantis"},
         "region: 'atlantis' is not a CAN region CodeCarbon knows"),
        ({"country_iso_code": "SWE", "region": "SE9"},
         "region: 'SE9' is not a SWE region CodeCarbon knows; accepted: SE1, SE2, "
         "SE3, SE4"),
        ({"country_iso_code": "DEU", "region": "bavaria"},
         "region: CodeCarbon has no figures by region for DEU"),
        ({"region": "california"}, "region: needs country_iso_code too"),
    ],
)  # fmt: skip
def test_unknown_region_keyword_is_a_one_line_value_error(
    settings: dict[str, str], message: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG), pytest.raises(ValueError) as info:
        CodeCarbonInstrumentor().instrument_app(build_app(), **settings)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_unknown_region_from_env_is_one_logged_line_and_the_country_is_kept(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    instrument: Instrumented,
) -> None:
    monkeypatch.setenv("CARBONSPAN_COUNTRY_ISO_CODE", "USA")
    monkeypatch.setenv("CARBONSPAN_REGION", "atlantis")
    with caplog.at_level(logging.DEBUG):
        inst = instrument(build_app(), None, power_source=ConstantPowerSource(cpu=1.0))
    intensity = inst.intensity
    assert (intensity.country_iso_code, intensity.region) == ("USA", None)
    assert intensity.g_per_kwh == resolve(country_iso_code="USA").g_per_kwh
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(loud) == 1, [r.getMessage() for r in loud]
    assert loud[0].name == "carbonspan.checks" and loud[0].exc_info is None
    message = loud[0].getMessage()
    assert message.startswith(
        "carbonspan: ignoring CARBONSPAN_REGION='atlantis' (with "
        "CARBONSPAN_COUNTRY_ISO_CODE set to 'USA'): region: 'atlantis' is not "
        "a USA region CodeCarbon knows"
    )


def test_resolve_never_hands_codecarbon_an_unknown_region(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG):
        intensity = resolve(country_iso_code="USA", region="atlantis")
    assert intensity.region is None
    assert intensity.g_per_kwh == resolve(country_iso_code="USA").g_per_kwh
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def test_a_short_list_of_regions_is_given_whole() -> None:
    with pytest.raises(ValueError) as info:
        Settings.load({"country_iso_code": "SWE", "region": "SE9"}, environ={})
    assert str(info.value) == (
        "region: 'SE9' is not a SWE region CodeCarbon knows; accepted: SE1, SE2, "
        "SE3, SE4"
    )
    s = Settings.load({"country_iso_code": "swe", "region": "se3"}, environ={})
    assert resolve(country_iso_code=s.country_iso_code, region=s.region).region == "SE3"


# -- cloud regions ------------------------------------------------------------


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
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    app = build_app()
    with pytest.raises(ValueError) as info:
        CodeCarbonInstrumentor().instrument_app(app, **kwargs)
    message = str(info.value)
    assert message.startswith("cloud_region: 'nowhere' is not a gcp region")
    assert message.endswith(from_env)
    assert instrumentation_of(app) is None


def test_bad_cloud_region_from_env_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = {"CARBONSPAN_CLOUD_PROVIDER": "gcp", "CARBONSPAN_CLOUD_REGION": "mars-1"}
    with caplog.at_level(logging.ERROR, logger="carbonspan.checks"):
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
    with caplog.at_level(logging.ERROR, logger="carbonspan.checks"):
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
    assert (intensity.g_per_kwh, intensity.location_source) == (factor, "cloud")
    assert intensity.country_iso_code is not None
    aws = resolve(
        cloud_provider="aws", cloud_region="eu-west-3", country_iso_code="FRA"
    )
    assert aws.location_source == "country" and aws.cloud_provider == "aws"
