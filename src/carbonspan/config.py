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
import os
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider

from carbonspan import emissions, intensity, parsers
from carbonspan.policies import POLICIES
from carbonspan.source import PowerSource, SourceScope
from carbonspan.types import MeasurementHook

_log = logging.getLogger(__name__)

SCOPES = ("process", "machine")
ATTRIBUTIONS = tuple(POLICIES)
HEADER_FORMATS = ("x-codecarbon", "server-timing", "both")
ENV_PREFIX = "CARBONSPAN_"
#: sample_interval bounds, in seconds. Below 10 ms the sampler thread costs
#: more CPU than the requests it measures; above a minute it hardly follows.
MIN_INTERVAL, MAX_INTERVAL = 0.01, 60.0
#: long_request bounds, in seconds: from a second to a day.
MIN_LONG, MAX_LONG = 1.0, 86400.0
#: Settings that only keyword arguments can give (objects, not text).
OBJECT_SETTINGS = (
    "power_source",
    "meter_provider",
    "tracer_provider",
    "measurement_hook",
)


@dataclass(frozen=True)
class Settings:
    """Validated settings (see `carbonspan.types.InstrumentSettings` for what
    each one means); `Settings.load` builds them."""

    country_iso_code: str | None = None
    region: str | None = None
    cloud_provider: str | None = None
    cloud_region: str | None = None
    carbon_intensity: float | None = None
    sample_interval: float = 0.1
    scope: SourceScope = "process"
    attribution: str = "time_share"
    excluded_urls: re.Pattern[str] | None = None
    response_headers: tuple[str, ...] = ()
    response_headers_format: str = "x-codecarbon"
    long_request: float = 300.0
    power_source: PowerSource | None = None
    meter_provider: MeterProvider | None = None
    tracer_provider: TracerProvider | None = None  # flushed at shutdown only
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

    def offline_intensity(self) -> emissions.CarbonIntensity:
        """The intensity these settings give without any network: explicit,
        cloud region, country (and region), or CodeCarbon's world average."""
        return emissions.resolve(
            carbon_intensity=self.carbon_intensity,
            cloud_provider=self.cloud_provider,
            cloud_region=self.cloud_region,
            country_iso_code=self.country_iso_code,
            region=self.region,
        )

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
        _check_pair(
            values, from_env, ("cloud_provider", "cloud_region"), parsers.check_cloud
        )
        _check_pair(
            values,
            from_env,
            ("country_iso_code", "region"),
            parsers.check_region,
            keep_first=True,
        )
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
    keep_first: bool = False,
) -> None:
    """A check on two settings (the second refines the first).

    If either value is a keyword argument, a failure raises `ValueError`: the
    mistake is in the code. If both come from the environment, it is logged,
    naming the variables actually set, and the settings are dropped: both, or
    with `keep_first` only the refinement (a country stands without a region).
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
        dropped = [second] if keep_first else given
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
    "country_iso_code": parsers.country_code,
    "region": parsers.nonempty_text,
    "cloud_provider": parsers.cloud_provider_name,
    "cloud_region": parsers.nonempty_text,
    "carbon_intensity": parsers.grid_intensity,
    "sample_interval": parsers.seconds_between(MIN_INTERVAL, MAX_INTERVAL),
    "long_request": parsers.seconds_between(MIN_LONG, MAX_LONG),
    "scope": parsers.one_of(SCOPES),
    "attribution": parsers.one_of(ATTRIBUTIONS),
    "excluded_urls": parsers.url_regexes,
    "response_headers": parsers.header_fields,
    "response_headers_format": parsers.one_of(HEADER_FORMATS),
    "intensity_provider": parsers.intensity_source,
    "intensity_refresh": parsers.refresh_seconds,
    "electricitymaps_zone": parsers.nonempty_text,
    "electricitymaps_url": parsers.http_url,
    "electricitymaps_token": parsers.secret,
    "embodied_emissions": parsers.kilograms,
    "hardware_lifetime": parsers.years,
    "boavizta_url": parsers.http_url,
    "cloud_instance": parsers.nonempty_text,
    "boavizta_archetype": parsers.nonempty_text,
}
_NAMES = frozenset(f.name for f in fields(Settings))
