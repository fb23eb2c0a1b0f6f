"""What a user is told about their settings: misspelt variables, the carbon
intensity in use and why, regions, and values outside their range."""

from __future__ import annotations

import logging

import pytest

from apps import build_app
from carbonspan import CodeCarbonInstrumentor, config
from carbonspan import attributes as a
from carbonspan.config import Settings
from carbonspan.emissions import regions, resolve, world_average
from carbonspan.testing import ConstantPowerSource
from conftest import Instrumented, Otel, attrs, client, wait_ready


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unknown variables are warned about once per process: start afresh."""
    monkeypatch.setattr(config, "_warned_env", set())


def messages(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger]


@pytest.mark.parametrize(
    ("var", "closest"),
    [
        ("CARBONSPAN_CONTRY_ISO_CODE", "did you mean CARBONSPAN_COUNTRY_ISO_CODE?"),
        ("CARBONSPAN_INTERVAL", "did you mean CARBONSPAN_SAMPLE_INTERVAL?"),
        ("CARBONSPAN_EXCLUDE_URLS", "did you mean CARBONSPAN_EXCLUDED_URLS?"),
        ("CARBONSPAN_scope", "did you mean CARBONSPAN_SCOPE?"),
        (
            "CARBONSPAN_POWER_SOURCE",
            "power_source is a Python object, given as a keyword argument only",
        ),
        ("CARBONSPAN_XYZZY", "no setting has that name"),
    ],
)
def test_unknown_variable_is_warned_about_once_with_the_closest_name(
    var: str, closest: str, caplog: pytest.LogCaptureFixture
) -> None:
    env = {var: "FRA", "CARBONSPAN_SCOPE": "machine", "OTHER_VAR": "1"}
    with caplog.at_level(logging.WARNING, logger="carbonspan.config"):
        first = Settings.load({}, environ=env)
        Settings.load({}, environ=env)  # a second instrumentation: no repeat
    assert first.scope == "machine" and first.country_iso_code is None
    (message,) = messages(caplog, "carbonspan.config")
    assert message == (
        f"carbonspan: {var} is not a carbonspan setting and is ignored; {closest}"
    )
    assert caplog.records[0].levelno == logging.WARNING


def test_known_variables_raise_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    env = {
        config.ENV_PREFIX + name.upper(): "" for name in config._PARSERS
    }  # every known name, blank (unset)
    with caplog.at_level(logging.DEBUG, logger="carbonspan.config"):
        Settings.load({}, environ=env)
    assert messages(caplog, "carbonspan.config") == []


def test_misspelt_country_under_instrument_app_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CARBONSPAN_CONTRY_ISO_CODE", "FRA")
    app = build_app()
    with caplog.at_level(logging.INFO, logger="carbonspan"):
        CodeCarbonInstrumentor().instrument_app(
            app, power_source=ConstantPowerSource(cpu=1.0)
        )
    try:
        assert app._carbonspan_runtime.intensity.source == "default"
        (warning,) = messages(caplog, "carbonspan.config")
        assert "CARBONSPAN_COUNTRY_ISO_CODE?" in warning
        # ... and the intensity line says the world average is in use, and why.
        (info,) = messages(caplog, "carbonspan.emissions")
        assert info.startswith(f"carbonspan: carbon intensity {world_average():g} ")
        assert "world average: no carbon_intensity or country_iso_code is set" in info
    finally:
        CodeCarbonInstrumentor.uninstrument_app(app)


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
        runtime = instrument(
            build_app(), otel, power_source=ConstantPowerSource(cpu=1.0), **settings
        )
    (line,) = messages(caplog, "carbonspan.emissions")
    g = runtime.intensity.g_per_kwh
    assert line.startswith(f"carbonspan: carbon intensity {g:.6g} g CO2eq/kWh, ")
    assert line.endswith(expected)
    assert caplog.records[-1].levelno == logging.INFO


def test_region_is_on_the_span_as_codecarbon_knows_it(
    otel: Otel, instrument: Instrumented
) -> None:
    import asyncio

    app = build_app()
    runtime = instrument(
        app, otel, power_source=ConstantPowerSource(cpu=10.0),
        country_iso_code="usa", region=" California ",
    )  # fmt: skip
    wait_ready(runtime)

    async def get() -> int:
        async with client(app) as c:
            return (await c.get("/sleep?seconds=0.02")).status_code

    assert asyncio.run(get()) == 200
    (span,) = otel.server_spans()
    got = attrs(span)
    california = resolve(country_iso_code="USA", region="california")
    assert got[a.REGION] == "california" and got[a.COUNTRY] == "USA"
    assert got[a.CARBON_INTENSITY] == california.g_per_kwh
    assert california.g_per_kwh != resolve(country_iso_code="USA").g_per_kwh


def test_no_region_attribute_without_a_region(
    otel: Otel, instrument: Instrumented
) -> None:
    import asyncio

    app = build_app()
    runtime = instrument(
        app, otel, power_source=ConstantPowerSource(cpu=10.0), country_iso_code="USA"
    )
    wait_ready(runtime)

    async def get() -> int:
        async with client(app) as c:
            return (await c.get("/fast")).status_code

    assert asyncio.run(get()) == 200
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
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CARBONSPAN_COUNTRY_ISO_CODE", "USA")
    monkeypatch.setenv("CARBONSPAN_REGION", "atlantis")
    app = build_app()
    with caplog.at_level(logging.DEBUG):
        CodeCarbonInstrumentor().instrument_app(
            app, power_source=ConstantPowerSource(cpu=1.0)
        )
    try:
        intensity = app._carbonspan_runtime.intensity
        assert (intensity.country_iso_code, intensity.region) == ("USA", None)
        assert intensity.g_per_kwh == resolve(country_iso_code="USA").g_per_kwh
        loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(loud) == 1, [r.getMessage() for r in loud]
        assert loud[0].name == "carbonspan.config" and loud[0].exc_info is None
        message = loud[0].getMessage()
        assert message.startswith(
            "carbonspan: ignoring CARBONSPAN_REGION='atlantis' (with "
            "CARBONSPAN_COUNTRY_ISO_CODE set to 'USA'): region: 'atlantis' is not "
            "a USA region CodeCarbon knows"
        )
    finally:
        CodeCarbonInstrumentor.uninstrument_app(app)


def test_resolve_never_hands_codecarbon_an_unknown_region(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG):
        intensity = resolve(country_iso_code="USA", region="atlantis")
    assert intensity.region is None
    assert intensity.g_per_kwh == resolve(country_iso_code="USA").g_per_kwh
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    ("var", "raw", "says"),
    [
        ("CARBONSPAN_RESPONSE_HEADERS", "maybe",
         "response_headers: 'maybe' is not accepted; use True, False or a list of "
         "energy, emissions, duration"),
        ("CARBONSPAN_SAMPLE_INTERVAL", "1e-9",
         "sample_interval: expected seconds in [0.01, 60], got '1e-9'"),
        ("CARBONSPAN_SAMPLE_INTERVAL", "1_0",
         "sample_interval: expected a number, got '1_0'"),
        ("CARBONSPAN_CARBON_INTENSITY", "1e308",
         "carbon_intensity: expected g CO2eq/kWh in [0, 2000], got '1e308'"),
        ("CARBONSPAN_CARBON_INTENSITY", "4_75",
         "carbon_intensity: expected a number, got '4_75'"),
    ],
)  # fmt: skip
def test_bad_env_values_are_quoted_as_given(
    var: str, raw: str, says: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="carbonspan.config"):
        s = Settings.load({}, environ={var: raw})
    name = var.removeprefix("CARBONSPAN_").lower()
    assert getattr(s, name) == getattr(Settings(), name)
    (message,) = messages(caplog, "carbonspan.config")
    assert message == f"carbonspan: ignoring {var}={raw!r}: {says}; using the default"


@pytest.mark.parametrize(
    ("name", "value"),
    [("sample_interval", 0.01), ("sample_interval", 60), ("carbon_intensity", 0),
     ("carbon_intensity", 2000), ("carbon_intensity", "1306.025")],
)  # fmt: skip
def test_range_bounds_are_accepted(name: str, value: object) -> None:
    assert getattr(Settings.load({name: value}, environ={}), name) == float(value)  # type: ignore[arg-type]


def test_a_short_list_of_regions_is_given_whole() -> None:
    with pytest.raises(ValueError) as info:
        Settings.load({"country_iso_code": "SWE", "region": "SE9"}, environ={})
    assert str(info.value) == (
        "region: 'SE9' is not a SWE region CodeCarbon knows; accepted: SE1, SE2, "
        "SE3, SE4"
    )
    s = Settings.load({"country_iso_code": "swe", "region": "se3"}, environ={})
    assert resolve(country_iso_code=s.country_iso_code, region=s.region).region == "SE3"
