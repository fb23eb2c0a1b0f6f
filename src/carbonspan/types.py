"""The types of carbonspan's surface, defined once: the ASGI aliases (the
shapes of `starlette.types`), the measurement hook, and the settings that
`CodeCarbonInstrumentor` and `CodeCarbonMiddleware` take as keyword arguments.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypedDict

if sys.version_info >= (3, 11):
    from typing import Unpack
else:  # pragma: no cover - Python 3.10
    from typing_extensions import Unpack

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import Span, TracerProvider

    from carbonspan.attribution.measurement import Measurement
    from carbonspan.carbon.grid import IntensityProvider
    from carbonspan.power.source import PowerSource

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Called once per measured request, on the request's task, with its server
#: span (a non-recording one when tracing is off), its ASGI scope and what it
#: was charged. A plain function: it must not block, and what it raises is
#: logged (rate-limited), never passed to the request.
MeasurementHook = Callable[["Span", Scope, "Measurement"], None]


class InstrumentSettings(TypedDict, total=False):
    """The keyword arguments of `CodeCarbonInstrumentor().instrument()`,
    `instrument_app()` and `CodeCarbonMiddleware`, with their units. Every
    one but the objects can also come from `CARBONSPAN_<NAME>` in the
    environment; docs/configuration.md has their defaults and checks. The
    one table of settings is `carbonspan.config.Settings`; a test checks
    that these keys and types follow it.

    `None` counts as not given. The `Literal`s name the canonical values;
    the settings are case-insensitive where docs/configuration.md says so.
    `response_headers` is a list of energy, emissions, duration."""

    country_iso_code: str | None  # ISO 3166-1 alpha-3, such as "FRA"
    region: str | None  # within country_iso_code, such as "california"
    cloud_provider: Literal["aws", "azure", "gcp"] | None
    cloud_region: str | None
    carbon_intensity: float | None  # g CO2eq/kWh
    sample_interval: float | None  # s
    scope: Literal["process", "machine"] | None
    attribution: Literal["time_share", "cpu_time"] | None
    excluded_urls: str | list[str] | tuple[str, ...] | re.Pattern[str] | None  # regexes
    response_headers: bool | Sequence[str] | None
    response_headers_format: Literal["x-codecarbon", "server-timing", "both"] | None
    downstream_energy: bool | None
    long_request: float | None  # s
    tenant_baggage: str | None  # a baggage entry's name, such as "tenant.id"
    max_tenants: int | None
    power_source: PowerSource | None
    meter_provider: MeterProvider | None
    tracer_provider: TracerProvider | None
    measurement_hook: MeasurementHook | None
    intensity_provider: Literal["static", "electricitymaps"] | IntensityProvider | None
    intensity_refresh: float | None  # s
    electricitymaps_zone: str | None
    electricitymaps_token: str | None
    electricitymaps_url: str | None
    embodied_emissions: float | None  # kg CO2eq over the hardware's lifetime
    hardware_lifetime: float | None  # years
    boavizta_url: str | None
    cloud_instance: str | None
    boavizta_archetype: str | None


class InstrumentorSettings(InstrumentSettings, total=False):
    """`instrument()`'s keyword arguments: the settings, and those
    `BaseInstrumentor.instrument` takes for itself."""

    skip_dep_check: bool
    raise_exception_on_conflict: bool


__all__ = [
    "ASGIApp",
    "InstrumentSettings",
    "InstrumentorSettings",
    "MeasurementHook",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "Unpack",
]
