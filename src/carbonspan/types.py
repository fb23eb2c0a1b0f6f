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

    from carbonspan.intensity import IntensityProvider
    from carbonspan.source import Measurement, PowerSource

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
    environment; docs/configuration.md has their defaults and checks."""

    country_iso_code: str  # ISO 3166-1 alpha-3, such as "FRA"
    region: str  # within country_iso_code, such as "california"
    cloud_provider: Literal["aws", "azure", "gcp"]
    cloud_region: str
    carbon_intensity: float  # g CO2eq/kWh
    sample_interval: float  # s
    scope: Literal["process", "machine"]
    attribution: Literal["time_share", "cpu_time"]
    excluded_urls: str | Sequence[str] | re.Pattern[str]  # regexes
    response_headers: bool | Sequence[Literal["energy", "emissions", "duration"]]
    response_headers_format: Literal["x-codecarbon", "server-timing", "both"]
    long_request: float  # s
    power_source: PowerSource
    meter_provider: MeterProvider
    tracer_provider: TracerProvider
    measurement_hook: MeasurementHook
    intensity_provider: Literal["static", "electricitymaps"] | IntensityProvider
    intensity_refresh: float  # s
    electricitymaps_zone: str
    electricitymaps_url: str
    electricitymaps_token: str
    embodied_emissions: float  # kg CO2eq over the hardware's lifetime
    hardware_lifetime: float  # years
    boavizta_url: str
    cloud_instance: str
    boavizta_archetype: str


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
