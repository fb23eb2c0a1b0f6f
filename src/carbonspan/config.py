"""Settings, defined once: the table below, keyword arguments first,
`CARBONSPAN_*` environment second.

Each field of `Settings` is one setting: its default, the parser that checks
its value (`carbonspan.parsers`; None for the Python objects, which are
keyword arguments only), and what docs/configuration.md says of it (its
type and the values it accepts). `carbonspan.types.InstrumentSettings`, the
keyword arguments' types, is checked against this table, and the reference
table in docs/configuration.md is written from it (`docs/gen_settings.py`).

A bad keyword argument raises `ValueError` naming the setting and what it
accepts. A bad environment value is logged and the default is used instead,
so a typo in a deployment's environment never stops the service (this is
also what happens under `opentelemetry-instrument`, where settings come from
the environment only); `carbonspan.checks` has those rules.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider

from carbonspan import checks, parsers
from carbonspan.attribution.policies import POLICIES
from carbonspan.carbon import grid
from carbonspan.carbon.intensity import CarbonIntensity, resolve
from carbonspan.otel.tenant import MAX_MAX_TENANTS, MAX_TENANTS
from carbonspan.power.source import PowerSource, SourceScope
from carbonspan.types import MeasurementHook

SCOPES = ("process", "machine")
ATTRIBUTIONS = tuple(POLICIES)
HEADER_FORMATS = ("x-codecarbon", "server-timing", "both")
ENV_PREFIX = checks.ENV_PREFIX
#: sample_interval bounds, in seconds. Below 10 ms the sampler thread costs
#: more CPU than the requests it measures; above a minute it hardly follows.
MIN_INTERVAL, MAX_INTERVAL = 0.01, 60.0
#: long_request bounds, in seconds: from a second to a day.
MIN_LONG, MAX_LONG = 1.0, 86400.0


def _setting(
    default: Any,
    parse: Callable[[str, Any], Any] | None,
    kind: str,
    accepted: str,
    *,
    shown: str | None = None,
    repr: bool = True,
) -> Any:
    """One row of the table: `kind` and `accepted` are the docs' type and
    accepted values, `shown` the default as the docs say it (else `default`)."""
    if shown is None:
        shown = _shown(default)
    return field(
        default=default,
        repr=repr,
        metadata={"parse": parse, "kind": kind, "accepted": accepted, "shown": shown},
    )


def _shown(default: Any) -> str:
    if default is None:
        return "none"
    return f"`{default:g}`" if isinstance(default, float) else f"`{default}`"


_TEXT = "`str`"
_CASE = "; case-insensitive"


@dataclass(frozen=True)
class Settings:
    """Validated settings (see `carbonspan.types.InstrumentSettings` for what
    each one means); `Settings.load` builds them."""

    country_iso_code: str | None = _setting(None, parsers.country_code, _TEXT, "an ISO 3166-1 alpha-3 code that CodeCarbon has an energy mix for (`FRA`, `USA`, `DEU`, `IND`, ...); case-insensitive, stored upper-case")  # fmt: skip
    region: str | None = _setting(None, parsers.nonempty_text, _TEXT, "a region CodeCarbon has a figure for within `country_iso_code`, which it needs: a US state (`california`), a Canadian or Chinese province (`quebec`, `beijing`), a Nordic bidding zone (`SE3`, `NO1`, `FI`)" + _CASE)  # fmt: skip
    cloud_provider: str | None = _setting(None, parsers.cloud_provider_name, _TEXT, "`aws`, `azure`, `gcp`" + _CASE)  # fmt: skip
    cloud_region: str | None = _setting(None, parsers.nonempty_text, _TEXT, "a region in CodeCarbon's cloud table for `cloud_provider` (for example `europe-west1`); needs `cloud_provider`")  # fmt: skip
    carbon_intensity: float | None = _setting(None, parsers.grid_intensity, "`float`, g CO2eq/kWh", f"a number from 0 to {parsers.MAX_INTENSITY:g}")  # fmt: skip
    sample_interval: float = _setting(0.1, parsers.seconds_between(MIN_INTERVAL, MAX_INTERVAL), "`float`, seconds", f"a number from {MIN_INTERVAL:g} to {MAX_INTERVAL:g}")  # fmt: skip
    scope: SourceScope = _setting("process", parsers.one_of(SCOPES), _TEXT, "`process`, `machine`" + _CASE)  # fmt: skip
    attribution: str = _setting("time_share", parsers.one_of(ATTRIBUTIONS), _TEXT, ", ".join(f"`{n}`" for n in ATTRIBUTIONS) + _CASE)  # fmt: skip
    excluded_urls: re.Pattern[str] | None = _setting(None, parsers.url_regexes, "`str`, list of `str`, or compiled `re.Pattern`", f"comma-separated regular expressions, or a list of them; at most {parsers.MAX_GROUPS} groups in one", shown="none (then the OpenTelemetry variables, see below)")  # fmt: skip
    response_headers: tuple[str, ...] = _setting((), parsers.header_fields, "`bool`, or list of `str`", "`True` / `False`, or a list of `energy`, `emissions`, `duration`; in the environment `true`, `1`, `yes`, `on`, `false`, `0`, `no`, `off`, or a comma-separated list", shown="off")  # fmt: skip
    response_headers_format: str = _setting("x-codecarbon", parsers.one_of(HEADER_FORMATS), _TEXT, ", ".join(f"`{n}`" for n in HEADER_FORMATS) + _CASE)  # fmt: skip
    downstream_energy: bool = _setting(False, parsers.flag, "`bool`", "`True` / `False`; in the environment `true`, `1`, `yes`, `on`, `false`, `0`, `no`, `off`: read the energy the responses of a request's outgoing HTTP calls report (httpx, requests, aiohttp)")  # fmt: skip
    long_request: float = _setting(300.0, parsers.seconds_between(MIN_LONG, MAX_LONG), "`float`, seconds", f"a number from {MIN_LONG:g} to {MAX_LONG:g}")  # fmt: skip
    tenant_baggage: str | None = _setting(None, parsers.nonempty_text, _TEXT, "the name of the OpenTelemetry baggage entry that names a request's tenant (`tenant.id`, ...); `carbonspan.set_tenant` wins over it")  # fmt: skip
    max_tenants: int = _setting(MAX_TENANTS, parsers.count_in(0, MAX_MAX_TENANTS), "`int`", f"a whole number from 0 to {MAX_MAX_TENANTS}: the tenants metric points name, per process; the others are `_other`")  # fmt: skip
    power_source: PowerSource | None = _setting(None, None, "a `carbonspan.PowerSource`", "any object with `read()` and `describe()`", shown="`CodeCarbonPowerSource(scope)`")  # fmt: skip
    meter_provider: MeterProvider | None = _setting(None, None, "an OpenTelemetry `MeterProvider`", "any `MeterProvider`", shown="the global one")  # fmt: skip
    tracer_provider: TracerProvider | None = _setting(None, None, "an OpenTelemetry `TracerProvider`", "any `TracerProvider`; only flushed at shutdown", shown="the global one")  # fmt: skip
    measurement_hook: MeasurementHook | None = _setting(None, None, "callable `(span, scope, measurement) -> None`", "a plain (not `async`) callable")  # fmt: skip
    intensity_provider: str | grid.IntensityProvider = _setting("static", parsers.intensity_source, "`str`, or (keyword only) an object with `current()`", "`static`, `electricitymaps`; case-insensitive; or any `carbonspan.IntensityProvider`")  # fmt: skip
    intensity_refresh: float = _setting(grid.REFRESH, parsers.refresh_seconds, "`float`, seconds", "a number in (0, 86400]")  # fmt: skip
    electricitymaps_zone: str | None = _setting(None, parsers.nonempty_text, _TEXT, "an Electricity Maps zone (`FR`, `DE`, `US-CAL-CISO`, ...); needed by `electricitymaps`")  # fmt: skip
    electricitymaps_token: str | None = _setting(None, parsers.secret, _TEXT, "the API token; needed by `electricitymaps`; never logged", repr=False)  # fmt: skip
    electricitymaps_url: str = _setting(grid.ELECTRICITYMAPS_URL, parsers.http_url, _TEXT, "an `http://` or `https://` URL")  # fmt: skip
    embodied_emissions: float | None = _setting(None, parsers.kilograms, "`float`, kg CO2eq", "a finite number > 0; not with `boavizta_url`")  # fmt: skip
    hardware_lifetime: float | None = _setting(None, parsers.years, "`float`, years", "a number in (0, 100]", shown="4 with `embodied_emissions`, BoaviztAPI's own with `boavizta_url`")  # fmt: skip
    boavizta_url: str | None = _setting(None, parsers.http_url, _TEXT, "an `http://` or `https://` URL of a BoaviztAPI server; needs `cloud_provider` + `cloud_instance`, or `boavizta_archetype`")  # fmt: skip
    cloud_instance: str | None = _setting(None, parsers.nonempty_text, _TEXT, "a cloud instance type BoaviztAPI knows for `cloud_provider` (`m5.large`, ...)")  # fmt: skip
    boavizta_archetype: str | None = _setting(None, parsers.nonempty_text, _TEXT, "a BoaviztAPI server archetype (`platform_compute_medium`, ...)")  # fmt: skip

    def offline_intensity(self) -> CarbonIntensity:
        """The intensity these settings give without any network: explicit,
        cloud region, country (and region), or CodeCarbon's world average."""
        return resolve(
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
        unknown = set(kwargs) - set(NAMES)
        if unknown:
            raise ValueError(
                f"unknown setting(s) {', '.join(sorted(unknown))}; "
                f"accepted: {', '.join(sorted(NAMES))}"
            )
        checks.warn_unknown_env(environ, PARSERS, OBJECT_SETTINGS)
        values: dict[str, Any] = {}
        from_env: dict[str, str] = {}  # setting -> the raw variable it came from
        for name, parse in PARSERS.items():
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
                checks.env_error(name, raw, exc)
        for name in OBJECT_SETTINGS:
            if kwargs.get(name) is not None:
                values[name] = _checked_object(name, kwargs[name])
        checks.check_all(values, from_env)
        return cls(**values)


#: The objects' checks: what each must offer.
_OBJECTS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "power_source": (
        lambda v: isinstance(v, PowerSource),
        "an object with read() and describe() (the carbonspan.PowerSource protocol)",
    ),
    "meter_provider": (
        lambda v: callable(getattr(v, "get_meter", None)),
        "an OpenTelemetry provider with get_meter()",
    ),
    "tracer_provider": (
        lambda v: callable(getattr(v, "get_tracer", None)),
        "an OpenTelemetry provider with get_tracer()",
    ),
    "measurement_hook": (
        lambda v: callable(v) and not inspect.iscoroutinefunction(v),
        "a plain (not async) callable (span, scope, measurement)",
    ),
}


def _checked_object(name: str, value: Any) -> Any:
    accepts, expected = _OBJECTS[name]
    if not accepts(value):
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    return value


#: Every setting's name, in the table's order.
NAMES = tuple(f.name for f in fields(Settings))
#: The parser of each setting read from text (or a keyword argument).
PARSERS: dict[str, Callable[[str, Any], Any]] = {
    f.name: f.metadata["parse"] for f in fields(Settings) if f.metadata["parse"]
}
#: Settings that only keyword arguments can give (objects, not text).
OBJECT_SETTINGS = tuple(name for name in NAMES if name not in PARSERS)
assert set(OBJECT_SETTINGS) == set(_OBJECTS)
