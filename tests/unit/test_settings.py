"""Settings: keyword values are checked, and a bad one raises a ValueError that
names the setting; `CARBONSPAN_*` variables are read, and a bad one is logged
(the default is used), a misspelt one warned about with the closest name. The
same for the grid intensity and embodied emissions settings.

Fuzzed over every setting: test_settings_fuzz.py. Where the carbon intensity
comes from (country, region, cloud): test_intensity_location.py.
"""

from __future__ import annotations

import logging
from typing import Any, Literal, get_args, get_origin, get_type_hints

import pytest

from carbonspan import CodeCarbonInstrumentor, config
from carbonspan.carbon.grid import ELECTRICITYMAPS_URL, REFRESH
from carbonspan.carbon.intensity import world_average
from carbonspan.config import Settings
from carbonspan.otel.instrumentor import instrumentation_of
from carbonspan.testing import ConstantPowerSource
from support.apps import build_app
from support.checks import log_messages
from support.otel import Instrumented

pytestmark = pytest.mark.usefixtures("fresh_warnings")


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
    ("max_tenants", -1, "whole number from 0 to 10000"),
    ("max_tenants", 2.5, "whole number from 0 to 10000"),
    ("max_tenants", True, "whole number from 0 to 10000"),
    ("max_tenants", 10001, "whole number from 0 to 10000"),
    ("tenant_baggage", "  ", "non-empty"),
    ("tenant_baggage", 7, "non-empty"),
    ("downstream_energy", "sometimes", "use True or False"),
    ("downstream_energy", 1, "use True or False"),
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
    app = build_app()
    original = app.build_middleware_stack
    with pytest.raises(ValueError, match=name):
        CodeCarbonInstrumentor().instrument_app(app, **{name: value})
    assert app.build_middleware_stack == original
    assert instrumentation_of(app) is None


def test_instrument_raises_and_stays_uninstrumented() -> None:
    instrumentor = CodeCarbonInstrumentor()
    with pytest.raises(ValueError, match="scope"):
        instrumentor.instrument(scope="nowhere")
    assert not instrumentor.is_instrumented_by_opentelemetry


def test_unknown_setting_is_refused() -> None:
    with pytest.raises(ValueError, match=r"unknown setting.*contry"):
        Settings.load({"contry_iso_code": "FRA"}, environ={})


def test_tenant_settings_from_the_environment() -> None:
    environ = {
        "CARBONSPAN_TENANT_BAGGAGE": " tenant.id ",
        "CARBONSPAN_MAX_TENANTS": "0",
    }
    s = Settings.load({}, environ=environ)
    assert (s.tenant_baggage, s.max_tenants) == ("tenant.id", 0)
    assert Settings.load({"max_tenants": 20}, environ=environ).max_tenants == 20
    assert Settings().max_tenants == 100 and Settings().tenant_baggage is None


@pytest.mark.parametrize(
    ("name", "value"),
    [("sample_interval", 0.01), ("sample_interval", 60), ("carbon_intensity", 0),
     ("carbon_intensity", 2000), ("carbon_intensity", "1306.025")],
)  # fmt: skip
def test_range_bounds_are_accepted(name: str, value: object) -> None:
    assert getattr(Settings.load({name: value}, environ={}), name) == float(value)  # type: ignore[arg-type]


# -- the environment ----------------------------------------------------------


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
    with caplog.at_level(logging.ERROR, logger="carbonspan.checks"):
        s = Settings.load({}, environ=env)
    assert s.scope == "process" and s.sample_interval == 0.1
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "CARBONSPAN_SCOPE" in messages and "process, machine" in messages
    assert "CARBONSPAN_SAMPLE_INTERVAL" in messages


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
        ("CARBONSPAN_MAX_TENANTS", "lots",
         "max_tenants: expected a whole number from 0 to 10000, got 'lots'"),
    ],
)  # fmt: skip
def test_bad_env_values_are_quoted_as_given(
    var: str, raw: str, says: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="carbonspan.checks"):
        s = Settings.load({}, environ={var: raw})
    name = var.removeprefix("CARBONSPAN_").lower()
    assert getattr(s, name) == getattr(Settings(), name)
    (message,) = log_messages(caplog, "carbonspan.checks")
    assert message == f"carbonspan: ignoring {var}={raw!r}: {says}; using the default"


def test_bad_env_does_not_stop_instrument_app(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    instrument: Instrumented,
) -> None:
    monkeypatch.setenv("CARBONSPAN_COUNTRY_ISO_CODE", "ATLANTIS")
    with caplog.at_level(logging.ERROR):
        inst = instrument(build_app(), None, power_source=ConstantPowerSource(cpu=1))
    assert inst.intensity.location_source == "default"
    assert "CARBONSPAN_COUNTRY_ISO_CODE" in caplog.text


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
    with caplog.at_level(logging.WARNING, logger="carbonspan.checks"):
        first = Settings.load({}, environ=env)
        Settings.load({}, environ=env)  # a second instrumentation: no repeat
    assert first.scope == "machine" and first.country_iso_code is None
    (message,) = log_messages(caplog, "carbonspan.checks")
    assert message == (
        f"carbonspan: {var} is not a carbonspan setting and is ignored; {closest}"
    )
    assert caplog.records[0].levelno == logging.WARNING


def test_known_variables_raise_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    env = {
        config.ENV_PREFIX + name.upper(): "" for name in config.PARSERS
    }  # every known name, blank (unset)
    with caplog.at_level(logging.DEBUG, logger="carbonspan.checks"):
        Settings.load({}, environ=env)
    assert log_messages(caplog, "carbonspan.checks") == []


def test_misspelt_country_under_instrument_app_says_so(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    instrument: Instrumented,
) -> None:
    monkeypatch.setenv("CARBONSPAN_CONTRY_ISO_CODE", "FRA")
    with caplog.at_level(logging.INFO, logger="carbonspan"):
        inst = instrument(build_app(), None, power_source=ConstantPowerSource(cpu=1.0))
    assert inst.intensity.location_source == "default"
    (warning,) = log_messages(caplog, "carbonspan.checks")
    assert "CARBONSPAN_COUNTRY_ISO_CODE?" in warning
    # ... and the intensity line says the world average is in use, and why.
    (info,) = log_messages(caplog, "carbonspan.carbon.intensity")
    assert info.startswith(f"carbonspan: carbon intensity {world_average():g} ")
    assert "world average: no carbon_intensity or country_iso_code is set" in info


# -- the grid intensity and embodied emissions settings ---------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"intensity_provider": "wattTime"}, "intensity_provider: 'wattTime' is"),
        ({"intensity_provider": 42}, "use one of static, electricitymaps"),
        ({"intensity_refresh": 0}, "intensity_refresh: expected seconds"),
        ({"intensity_refresh": 86401}, "intensity_refresh: expected seconds"),
        ({"electricitymaps_url": "api.example"}, "electricitymaps_url: expected"),
        ({"embodied_emissions": -3}, "embodied_emissions: expected kg CO2eq > 0"),
        ({"embodied_emissions": "lots"}, "embodied_emissions: expected a number"),
        ({"hardware_lifetime": 0}, "hardware_lifetime: expected years in (0, 100]"),
        ({"boavizta_url": "ftp://x"}, "boavizta_url: expected an http"),
        ({"cloud_instance": " "}, "cloud_instance: expected a non-empty string"),
        (
            {"intensity_provider": "electricitymaps"},
            "intensity_provider: 'electricitymaps' needs electricitymaps_zone",
        ),
        (
            {"intensity_provider": "electricitymaps", "electricitymaps_zone": "FR"},
            "CARBONSPAN_ELECTRICITYMAPS_TOKEN",
        ),
        ({"boavizta_url": "http://127.0.0.1:5000"}, "boavizta_url: needs"),
        (
            {"boavizta_url": "http://127.0.0.1:5000", "cloud_provider": "aws"},
            "needs cloud_provider and cloud_instance",
        ),
        (
            {"boavizta_url": "http://b:5000", "embodied_emissions": 900},
            "boavizta_url: give embodied_emissions or boavizta_url, not both",
        ),
    ],
)
def test_bad_keywords_raise_naming_the_setting(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError) as info:
        Settings.load(kwargs, environ={})
    assert message in str(info.value)


def test_good_keywords_and_environment() -> None:
    s = Settings.load(
        {"embodied_emissions": "1200", "hardware_lifetime": 5},
        environ={
            "CARBONSPAN_INTENSITY_PROVIDER": " ElectricityMaps ",
            "CARBONSPAN_ELECTRICITYMAPS_ZONE": "US-CAL-CISO",
            "CARBONSPAN_ELECTRICITYMAPS_TOKEN": "tok",
            "CARBONSPAN_INTENSITY_REFRESH": "300",
        },
    )
    assert s.intensity_provider == "electricitymaps"
    assert s.electricitymaps_zone == "US-CAL-CISO"
    assert s.electricitymaps_token == "tok"
    assert s.intensity_refresh == 300.0
    assert s.electricitymaps_url == ELECTRICITYMAPS_URL
    assert (s.embodied_emissions, s.hardware_lifetime) == (1200.0, 5.0)
    assert "tok" not in repr(s)


@pytest.mark.parametrize(
    ("environ", "variable", "field", "default"),
    [
        (
            {"CARBONSPAN_INTENSITY_PROVIDER": "electricitymaps"},
            "CARBONSPAN_INTENSITY_PROVIDER",
            "intensity_provider",
            "static",
        ),
        (
            {"CARBONSPAN_INTENSITY_REFRESH": "-1"},
            "CARBONSPAN_INTENSITY_REFRESH",
            "intensity_refresh",
            REFRESH,
        ),
        (
            {"CARBONSPAN_BOAVIZTA_URL": "http://b:5000"},
            "CARBONSPAN_BOAVIZTA_URL",
            "boavizta_url",
            None,
        ),
        (
            {
                "CARBONSPAN_BOAVIZTA_URL": "http://b:5000",
                "CARBONSPAN_BOAVIZTA_ARCHETYPE": "platform_compute_medium",
                "CARBONSPAN_EMBODIED_EMISSIONS": "900",
            },
            "CARBONSPAN_BOAVIZTA_URL",
            "boavizta_url",
            None,
        ),
        (
            {"CARBONSPAN_HARDWARE_LIFETIME": "forever"},
            "CARBONSPAN_HARDWARE_LIFETIME",
            "hardware_lifetime",
            None,
        ),
    ],
)
def test_bad_environment_is_logged_and_the_default_used(
    environ: dict[str, str],
    variable: str,
    field: str,
    default: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="carbonspan.checks"):
        s = Settings.load({}, environ=environ)
    assert getattr(s, field) == default
    (record,) = caplog.records
    assert f"{variable}=" in record.getMessage()
    assert "using the default" in record.getMessage()


def test_the_typed_settings_are_the_settings_the_parsers_accept() -> None:
    """`carbonspan.types.InstrumentSettings` names every setting, and its
    Literals are the choices the parsers accept."""
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import Span, TracerProvider

    from carbonspan import parsers, types
    from carbonspan.attribution.measurement import Measurement
    from carbonspan.carbon import intensity as emissions
    from carbonspan.carbon.grid import IntensityProvider
    from carbonspan.power.source import PowerSource

    names = {
        **vars(types),
        "MeterProvider": MeterProvider,
        "Span": Span,
        "TracerProvider": TracerProvider,
        "IntensityProvider": IntensityProvider,
        "Measurement": Measurement,
        "PowerSource": PowerSource,
    }
    hints = get_type_hints(types.InstrumentSettings, localns=names)
    assert set(hints) == set(config.PARSERS) | set(config.OBJECT_SETTINGS)

    def literals(annotation: Any) -> set[str]:
        return {
            value
            for arg in get_args(annotation)
            if get_origin(arg) is Literal
            for value in get_args(arg)
        }

    assert literals(hints["scope"]) == set(config.SCOPES)
    assert literals(hints["attribution"]) == set(config.ATTRIBUTIONS)
    assert literals(hints["response_headers_format"]) == set(config.HEADER_FORMATS)
    assert literals(hints["cloud_provider"]) == set(emissions.CLOUD_PROVIDERS)
    assert literals(hints["intensity_provider"]) == set(parsers.INTENSITY_PROVIDERS)
    for name, annotation in hints.items():  # None: not given, for every one
        assert type(None) in get_args(annotation), name
