"""Settings: keyword arguments first, `CARBONSPAN_*` environment second.

A bad keyword argument raises `ValueError` naming the setting and what it
accepts. A bad environment value is logged and the default is used instead,
so a typo in a deployment's environment never stops the service (this is
also what happens under `opentelemetry-instrument`, where settings come from
the environment only). The checks that involve two settings (`cloud_region`
with `cloud_provider`, `region` with `country_iso_code`) raise as soon as one
of the two is a keyword argument. An unknown `CARBONSPAN_*` variable is
warned about once, with the closest known name.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import math
import os
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from carbonspan import emissions, intensity
from carbonspan.policies import POLICIES
from carbonspan.source import PowerSource, Scope

_log = logging.getLogger(__name__)

SCOPES = ("process", "machine")
ATTRIBUTIONS = tuple(POLICIES)
HEADER_FIELDS = ("energy", "emissions", "duration")
HEADER_FORMATS = ("x-codecarbon", "server-timing", "both")
INTENSITY_PROVIDERS = ("static", "electricitymaps")
ENV_PREFIX = "CARBONSPAN_"
#: sample_interval bounds, in seconds. Below 10 ms the sampler thread costs
#: more CPU than the requests it measures; above a minute it hardly follows.
MIN_INTERVAL, MAX_INTERVAL = 0.01, 60.0
#: carbon_intensity bound, g CO2eq/kWh: above every grid in CodeCarbon's
#: tables (the highest, Turkmenistan, is about 1306), so what is higher is a
#: unit mistake (see docs/decisions.md).
MAX_INTENSITY = 2000.0
#: Groups allowed in one excluded_urls regex: URL patterns need a handful.
MAX_GROUPS = 100
#: long_request bounds, in seconds: from a second to a day.
MIN_LONG, MAX_LONG = 1.0, 86400.0
#: Settings that only keyword arguments can give (objects, not text).
OBJECT_SETTINGS = (
    "power_source",
    "meter_provider",
    "tracer_provider",
    "measurement_hook",
)

MeasurementHook = Callable[[Any, Mapping[str, Any], Any], None]


@dataclass(frozen=True)
class Settings:
    country_iso_code: str | None = None
    region: str | None = None
    cloud_provider: str | None = None
    cloud_region: str | None = None
    carbon_intensity: float | None = None
    sample_interval: float = 0.1
    scope: Scope = "process"
    attribution: str = "time_share"
    excluded_urls: re.Pattern[str] | None = None
    response_headers: tuple[str, ...] = ()
    response_headers_format: str = "x-codecarbon"
    long_request: float = 300.0
    power_source: PowerSource | None = None
    meter_provider: Any = None
    tracer_provider: Any = None  # only flushed at shutdown: spans are not ours
    measurement_hook: MeasurementHook | None = None
    # Grid intensity and embodied emissions (see carbonspan.intensity,
    # carbonspan.embodied).
    intensity_provider: str | intensity.IntensityProvider = "static"
    intensity_refresh: float = intensity.REFRESH
    electricitymaps_zone: str | None = None
    electricitymaps_url: str = intensity.ELECTRICITYMAPS_URL
    electricitymaps_token: str | None = field(default=None, repr=False)
    embodied_emissions: float | None = None
    hardware_lifetime: float | None = None
    boavizta_url: str | None = None
    cloud_instance: str | None = None
    boavizta_archetype: str | None = None

    @classmethod
    def load(
        cls, kwargs: Mapping[str, Any], environ: Mapping[str, str] | None = None
    ) -> Settings:
        """Validated settings from `kwargs`, falling back on the environment."""
        environ = os.environ if environ is None else environ
        unknown = set(kwargs) - _NAMES
        if unknown:
            raise ValueError(
                f"unknown setting(s) {', '.join(sorted(unknown))}; "
                f"accepted: {', '.join(sorted(_NAMES))}"
            )
        _warn_unknown_env(environ)
        values: dict[str, Any] = {}
        from_env: dict[str, str] = {}  # setting -> the raw variable it came from
        for name, parse in _PARSERS.items():
            if name in kwargs and kwargs[name] is not None:
                values[name] = parse(name, kwargs[name])
                continue
            raw = environ.get(ENV_PREFIX + name.upper())
            if raw is None or raw.strip() == "":
                continue
            try:
                values[name] = parse(name, raw)
                from_env[name] = raw
            except ValueError as exc:
                _env_error(name, raw, exc)
        for name in OBJECT_SETTINGS:
            if kwargs.get(name) is not None:
                values[name] = kwargs[name]
        hook = values.get("measurement_hook")
        if hook is not None and (
            not callable(hook) or inspect.iscoroutinefunction(hook)
        ):
            raise ValueError(
                "measurement_hook: expected a plain (not async) callable "
                f"(span, scope, measurement), got {hook!r}"
            )
        for name, method in (
            ("meter_provider", "get_meter"),
            ("tracer_provider", "get_tracer"),
        ):
            provider = values.get(name)
            if provider is not None and not callable(getattr(provider, method, None)):
                raise ValueError(
                    f"{name}: expected an OpenTelemetry provider with {method}(), "
                    f"got {provider!r}"
                )
        if values.get("power_source") is not None and not isinstance(
            values["power_source"], PowerSource
        ):
            raise ValueError(
                "power_source: expected an object with read() and describe() "
                f"(the carbonspan.PowerSource protocol), got {values['power_source']!r}"
            )
        _check_pair(values, from_env, ("cloud_provider", "cloud_region"), _check_cloud)
        _check_pair(values, from_env, ("country_iso_code", "region"), _check_region)
        _check_sci(values, from_env)
        return cls(**values)


def _env_error(name: str, raw: Any, exc: ValueError) -> None:
    _log.error(
        "carbonspan: ignoring %s%s=%r: %s; using the default",
        ENV_PREFIX,
        name.upper(),
        raw,
        exc,
    )


_warned_env: set[str] = set()


def _warn_unknown_env(environ: Mapping[str, str]) -> None:
    """Warn, once per process and name, about `CARBONSPAN_*` names we do not read."""
    known = sorted(ENV_PREFIX + name.upper() for name in _PARSERS)
    for var in environ:
        if not var.startswith(ENV_PREFIX) or var in known or var in _warned_env:
            continue
        _warned_env.add(var)
        setting = var[len(ENV_PREFIX) :].lower()
        if setting in OBJECT_SETTINGS:
            hint = f"{setting} is a Python object, given as a keyword argument only"
        else:
            close = difflib.get_close_matches(setting, _PARSERS, n=1, cutoff=0.6)
            hint = (
                f"did you mean {ENV_PREFIX}{close[0].upper()}?"
                if close
                else "no setting has that name"
            )
        _log.warning(
            "carbonspan: %s is not a carbonspan setting and is ignored; %s",
            var,
            hint,
        )


def _check_pair(
    values: dict[str, Any],
    from_env: Mapping[str, str],
    names: tuple[str, str],
    check: Callable[[Any, Any], None],
) -> None:
    """A check on two settings (the second refines the first).

    If either value is a keyword argument, a failure raises `ValueError`: the
    mistake is in the code. If both come from the environment, it is logged,
    naming the variables actually set, and the settings are dropped: both for
    the cloud pair, only the refinement (`region`) for the country pair.
    """
    first, second = names
    try:
        check(values.get(first), values.get(second))
    except ValueError as exc:
        given = [n for n in names if values.get(n) is not None]
        env = [n for n in given if n in from_env]
        if len(env) < len(given):
            if env:  # say which half came from the environment
                origin = ", ".join(f"{n} came from {_var(n, from_env[n])}" for n in env)
                raise ValueError(f"{exc}; {origin}") from None
            raise
        dropped = given if first == "cloud_provider" else [second]
        context = "".join(
            f" (with {ENV_PREFIX}{n.upper()} set to {from_env[n]!r})"
            for n in given
            if n not in dropped
        )
        _log.error(
            "carbonspan: ignoring %s%s: %s; using the default",
            " and ".join(_var(n, from_env[n]) for n in dropped),
            context,
            exc,
        )
        for name in dropped:
            values.pop(name, None)


def _var(name: str, raw: str) -> str:
    return f"{ENV_PREFIX}{name.upper()}={raw!r}"


def _check_cloud(provider: str | None, region: str | None) -> None:
    if region and not provider:
        raise ValueError(
            "cloud_region: needs cloud_provider too "
            f"(one of {', '.join(emissions.CLOUD_PROVIDERS)})"
        )
    if provider and region:
        known = emissions.cloud_regions(provider)
        # CodeCarbon has factors for some providers only (3.3: gcp): there a
        # region must be one of its; elsewhere any region name is taken.
        if known and region not in known:
            sample = ", ".join(sorted(known)[:6])
            raise ValueError(
                f"cloud_region: {region!r} is not a {provider} region CodeCarbon "
                f"knows; accepted: {sample}, ... ({len(known)} in all)"
            )


def _check_region(country: str | None, region: str | None) -> None:
    if region and not country:
        raise ValueError(
            "region: needs country_iso_code too (a region is looked up within "
            "a country)"
        )
    if country and region:
        known = emissions.regions(country)
        if not known:
            raise ValueError(
                f"region: CodeCarbon has no figures by region for {country} (it has "
                f"for {', '.join(emissions.REGIONAL_COUNTRIES)}); leave region "
                f"unset to use {country}'s figure"
            )
        if emissions.region_key(country, region) is None:
            more = f", ... ({len(known)} in all)" if len(known) > 6 else ""
            raise ValueError(
                f"region: {region!r} is not a {country} region CodeCarbon knows; "
                f"accepted: {', '.join(known[:6])}{more}"
            )


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name}: expected a non-empty string, got {value!r}")
    return value.strip()


def _country(name: str, value: Any) -> str:
    code = _text(name, value).upper()
    if code not in emissions.countries():
        raise ValueError(
            f"{name}: {value!r} is not a country CodeCarbon has data for; "
            "accepted: ISO 3166-1 alpha-3 codes such as FRA, USA, DEU, IND"
        )
    return code


def _cloud_provider(name: str, value: Any) -> str:
    provider = _text(name, value).lower()
    if provider not in emissions.CLOUD_PROVIDERS:
        raise ValueError(
            f"{name}: {value!r} is not accepted; use one of "
            f"{', '.join(emissions.CLOUD_PROVIDERS)}"
        )
    return provider


def _number(name: str, value: Any) -> float:
    # float() also takes "1_0" (as 10): not a way anyone writes a setting.
    if isinstance(value, bool) or (isinstance(value, str) and "_" in value):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{name}: expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    return number


def _intensity(name: str, value: Any) -> float:
    number = _number(name, value)
    if not 0 <= number <= MAX_INTENSITY:
        raise ValueError(
            f"{name}: expected g CO2eq/kWh in [0, {MAX_INTENSITY:g}], got {value!r}"
        )
    return number


def _seconds(low: float, high: float) -> Callable[[str, Any], float]:
    def parse(name: str, value: Any) -> float:
        number = _number(name, value)
        if not low <= number <= high:
            raise ValueError(
                f"{name}: expected seconds in [{low:g}, {high:g}], got {value!r}"
            )
        return number

    return parse


_interval = _seconds(MIN_INTERVAL, MAX_INTERVAL)
_long = _seconds(MIN_LONG, MAX_LONG)


def _choice(choices: tuple[str, ...]) -> Callable[[str, Any], str]:
    def parse(name: str, value: Any) -> str:
        text = value.strip().lower() if isinstance(value, str) else value
        if text not in choices:
            raise ValueError(
                f"{name}: {value!r} is not accepted; use one of {', '.join(choices)}"
            )
        return str(text)

    return parse


def _excluded(name: str, value: Any) -> re.Pattern[str] | None:
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


def _headers(name: str, value: Any) -> tuple[str, ...]:
    given = value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("true", "1", "yes", "on"):
            return HEADER_FIELDS
        if text in ("false", "0", "no", "off", ""):
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


def _provider(name: str, value: Any) -> str | intensity.IntensityProvider:
    if not isinstance(value, str) and isinstance(value, intensity.IntensityProvider):
        return value
    choices = INTENSITY_PROVIDERS
    if isinstance(value, str) and value.strip().lower() in choices:
        return value.strip().lower()
    raise ValueError(
        f"{name}: {value!r} is not accepted; use one of {', '.join(choices)}, "
        "or an object with current() (the carbonspan.intensity.IntensityProvider "
        "protocol)"
    )


def _refresh(name: str, value: Any) -> float:
    number = _number(name, value)
    if not 0 < number <= 86400:
        raise ValueError(f"{name}: expected seconds in (0, 86400], got {value!r}")
    return number


def _url(name: str, value: Any) -> str:
    text = _text(name, value)
    if not text.lower().startswith(("http://", "https://")):
        raise ValueError(f"{name}: expected an http:// or https:// URL, got {value!r}")
    return text


def _kilograms(name: str, value: Any) -> float:
    number = _number(name, value)
    if number <= 0:
        raise ValueError(f"{name}: expected kg CO2eq > 0, got {value!r}")
    return number


def _years(name: str, value: Any) -> float:
    number = _number(name, value)
    if not 0 < number <= 100:
        raise ValueError(f"{name}: expected years in (0, 100], got {value!r}")
    return number


def _secret(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name}: expected a non-empty string")  # never the value
    return value.strip()


def _check_sci(values: dict[str, Any], from_env: Collection[str]) -> None:
    """Checks between the grid-intensity and embodied-emissions settings.

    As for `cloud_region`: a mistake raises when a setting involved was a
    keyword argument; from the environment only it is logged, and the
    setting that needs the others is dropped (its default applies).
    """
    checks: list[tuple[str, tuple[str, ...], str | None]] = []
    if values.get("intensity_provider") == "electricitymaps" and not (
        values.get("electricitymaps_zone") and values.get("electricitymaps_token")
    ):
        checks.append(
            (
                "intensity_provider",
                ("intensity_provider", "electricitymaps_zone", "electricitymaps_token"),
                "'electricitymaps' needs electricitymaps_zone (such as FR or "
                f"US-CAL-CISO) and a token in {intensity.TOKEN_ENV}",
            )
        )
    if values.get("boavizta_url"):
        if values.get("embodied_emissions") is not None:
            checks.append(
                (
                    "boavizta_url",
                    ("boavizta_url", "embodied_emissions"),
                    "give embodied_emissions or boavizta_url, not both",
                )
            )
        elif not (
            (values.get("cloud_provider") and values.get("cloud_instance"))
            or values.get("boavizta_archetype")
        ):
            checks.append(
                (
                    "boavizta_url",
                    (
                        "boavizta_url",
                        "cloud_provider",
                        "cloud_instance",
                        "boavizta_archetype",
                    ),
                    "needs cloud_provider and cloud_instance (such as aws and "
                    "m5.large), or boavizta_archetype (such as "
                    "platform_compute_medium)",
                )
            )
    for setting, involved, problem in checks:
        message = f"{setting}: {problem}"
        given = [n for n in involved if n in values]
        if any(n not in from_env for n in given):
            raise ValueError(message)
        _env_error(setting, values.get(setting), ValueError(message))
        values.pop(setting, None)


_PARSERS: dict[str, Callable[[str, Any], Any]] = {
    "country_iso_code": _country,
    "region": _text,
    "cloud_provider": _cloud_provider,
    "cloud_region": _text,
    "carbon_intensity": _intensity,
    "sample_interval": _interval,
    "long_request": _long,
    "scope": _choice(SCOPES),
    "attribution": _choice(ATTRIBUTIONS),
    "excluded_urls": _excluded,
    "response_headers": _headers,
    "response_headers_format": _choice(HEADER_FORMATS),
    "intensity_provider": _provider,
    "intensity_refresh": _refresh,
    "electricitymaps_zone": _text,
    "electricitymaps_url": _url,
    "electricitymaps_token": _secret,
    "embodied_emissions": _kilograms,
    "hardware_lifetime": _years,
    "boavizta_url": _url,
    "cloud_instance": _text,
    "boavizta_archetype": _text,
}
_NAMES = frozenset(f.name for f in fields(Settings))
