"""Settings of the grid intensity and the embodied emissions: a bad keyword
raises naming the setting; a bad environment value is logged, and the
default applies."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from carbonspan.config import Settings
from carbonspan.intensity import ELECTRICITYMAPS_URL, REFRESH


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
    with caplog.at_level(logging.ERROR, logger="carbonspan.config"):
        s = Settings.load({}, environ=environ)
    assert getattr(s, field) == default
    (record,) = caplog.records
    assert f"{variable}=" in record.getMessage()
    assert "using the default" in record.getMessage()
