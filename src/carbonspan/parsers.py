"""One parser per kind of setting value: a keyword argument's value or an
environment variable's text in, the checked value out, or a `ValueError` that
names the setting and what it accepts. `carbonspan.config`'s table gives each
setting its parser."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from carbonspan.carbon import intensity
from carbonspan.carbon.grid import IntensityProvider
from carbonspan.numbers import is_finite

#: carbon_intensity bound, g CO2eq/kWh: above every grid in CodeCarbon's
#: tables (the highest, Turkmenistan, is about 1306), so what is higher is a
#: unit mistake (see docs/decisions.md).
MAX_INTENSITY = 2000.0
#: Groups allowed in one excluded_urls regex: URL patterns need a handful.
MAX_GROUPS = 100
HEADER_FIELDS = ("energy", "emissions", "duration")
INTENSITY_PROVIDERS = ("static", "electricitymaps")


def check_cloud(provider: str | None, region: str | None) -> None:
    if region and not provider:
        raise ValueError(
            "cloud_region: needs cloud_provider too "
            f"(one of {', '.join(intensity.CLOUD_PROVIDERS)})"
        )
    if provider and region:
        known = intensity.cloud_regions(provider)
        # CodeCarbon has factors for some providers only (3.3: gcp): there a
        # region must be one of its; elsewhere any region name is taken.
        if known and region not in known:
            sample = ", ".join(sorted(known)[:6])
            raise ValueError(
                f"cloud_region: {region!r} is not a {provider} region CodeCarbon "
                f"knows; accepted: {sample}, ... ({len(known)} in all)"
            )


def check_region(country: str | None, region: str | None) -> None:
    if region and not country:
        raise ValueError(
            "region: needs country_iso_code too (a region is looked up within "
            "a country)"
        )
    if country and region:
        known = intensity.regions(country)
        if not known:
            raise ValueError(
                f"region: CodeCarbon has no figures by region for {country} (it has "
                f"for {', '.join(intensity.REGIONAL_COUNTRIES)}); leave region "
                f"unset to use {country}'s figure"
            )
        if intensity.region_key(country, region) is None:
            more = f", ... ({len(known)} in all)" if len(known) > 6 else ""
            raise ValueError(
                f"region: {region!r} is not a {country} region CodeCarbon knows; "
                f"accepted: {', '.join(known[:6])}{more}"
            )


def nonempty_text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name}: expected a non-empty string, got {value!r}")
    return value.strip()


def country_code(name: str, value: Any) -> str:
    code = nonempty_text(name, value).upper()
    if code not in intensity.countries():
        raise ValueError(
            f"{name}: {value!r} is not a country CodeCarbon has data for; "
            "accepted: ISO 3166-1 alpha-3 codes such as FRA, USA, DEU, IND"
        )
    return code


def cloud_provider_name(name: str, value: Any) -> str:
    provider = nonempty_text(name, value).lower()
    if provider not in intensity.CLOUD_PROVIDERS:
        raise ValueError(
            f"{name}: {value!r} is not accepted; use one of "
            f"{', '.join(intensity.CLOUD_PROVIDERS)}"
        )
    return provider


def finite_number(name: str, value: Any) -> float:
    # float() also takes "1_0" (as 10): not a way anyone writes a setting.
    if isinstance(value, bool) or (isinstance(value, str) and "_" in value):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{name}: expected a number, got {value!r}") from None
    if not is_finite(number):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    return number


def number_in(
    unit: str, low: float, high: float, *, above: bool = False
) -> Callable[[str, Any], float]:
    """A parser of numbers in `unit` from `low` to `high` (above `low`, not
    equal to it, if `above`; with no upper bound if `high` is infinite)."""

    def parse(name: str, value: Any) -> float:
        number = finite_number(name, value)
        if (number > low if above else number >= low) and number <= high:
            return number
        if math.isinf(high):
            expected = f"{unit} > {low:g}" if above else f"{unit} >= {low:g}"
        else:
            expected = f"{unit} in {'(' if above else '['}{low:g}, {high:g}]"
        raise ValueError(f"{name}: expected {expected}, got {value!r}")

    return parse


def count_in(low: int, high: int) -> Callable[[str, Any], int]:
    """A parser of whole numbers from `low` to `high`."""

    def parse(name: str, value: Any) -> int:
        text = value.strip() if isinstance(value, str) else value
        if isinstance(text, str) and re.fullmatch(r"[0-9]+", text):
            text = int(text)
        if isinstance(text, int) and not isinstance(text, bool) and low <= text <= high:
            return text
        raise ValueError(
            f"{name}: expected a whole number from {low} to {high}, got {value!r}"
        )

    return parse


def seconds_between(low: float, high: float) -> Callable[[str, Any], float]:
    return number_in("seconds", low, high)


grid_intensity = number_in("g CO2eq/kWh", 0.0, MAX_INTENSITY)
refresh_seconds = number_in("seconds", 0.0, 86400.0, above=True)
kilograms = number_in("kg CO2eq", 0.0, math.inf, above=True)
years = number_in("years", 0.0, 100.0, above=True)


def one_of(choices: tuple[str, ...]) -> Callable[[str, Any], str]:
    def parse(name: str, value: Any) -> str:
        text = value.strip().lower() if isinstance(value, str) else value
        if text not in choices:
            raise ValueError(
                f"{name}: {value!r} is not accepted; use one of {', '.join(choices)}"
            )
        return str(text)

    return parse


def url_regexes(name: str, value: Any) -> re.Pattern[str] | None:
    if isinstance(value, re.Pattern):
        return value
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
    elif isinstance(value, (list, tuple)) and all(isinstance(p, str) for p in value):
        parts = [p for p in value if p]
    else:
        raise ValueError(
            f"{name}: expected comma-separated regexes or a list of them, got {value!r}"
        )
    if not parts:
        return None
    if any(p.count("(") > MAX_GROUPS for p in parts):
        # Python 3.13.0's regex compiler can crash the process on deeply
        # nested groups rather than raise RecursionError.
        raise ValueError(
            f"{name}: {value!r} is not accepted: at most {MAX_GROUPS} groups per regex"
        )
    try:
        return re.compile("|".join(f"(?:{p})" for p in parts))
    except (re.error, OverflowError, RecursionError) as exc:  # too big, too deep
        raise ValueError(
            f"{name}: {value!r} is not a valid regex list ({exc})"
        ) from None


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def flag(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = value.strip().lower() if isinstance(value, str) else None
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ValueError(
        f"{name}: {value!r} is not accepted; use True or False (in the "
        f"environment {', '.join(_TRUE + _FALSE)})"
    )


def header_fields(name: str, value: Any) -> tuple[str, ...]:
    given = value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return HEADER_FIELDS
        if text in (*_FALSE, ""):
            return ()
        value = [p.strip() for p in text.split(",") if p.strip()]
    if value is True:
        return HEADER_FIELDS
    if value is False:
        return ()
    if isinstance(value, (list, tuple)) and all(f in HEADER_FIELDS for f in value):
        return tuple(f for f in HEADER_FIELDS if f in value)
    raise ValueError(
        f"{name}: {given!r} is not accepted; use True, False or a list of "
        f"{', '.join(HEADER_FIELDS)}"
    )


def intensity_source(name: str, value: Any) -> str | IntensityProvider:
    if not isinstance(value, str) and isinstance(value, IntensityProvider):
        return value
    choices = INTENSITY_PROVIDERS
    if isinstance(value, str) and value.strip().lower() in choices:
        return value.strip().lower()
    raise ValueError(
        f"{name}: {value!r} is not accepted; use one of {', '.join(choices)}, "
        "or an object with current() (the carbonspan.IntensityProvider protocol)"
    )


def http_url(name: str, value: Any) -> str:
    text = nonempty_text(name, value)
    if not text.lower().startswith(("http://", "https://")):
        raise ValueError(f"{name}: expected an http:// or https:// URL, got {value!r}")
    return text


def secret(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name}: expected a non-empty string")  # never the value
    return value.strip()
