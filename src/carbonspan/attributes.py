"""The names of the span and metric contracts, defined once; span attributes
and response headers.

Units are fixed by the contract and the names carry none: joules for
`codecarbon.energy.*`, watts for `codecarbon.power.*`, grams CO2eq for
`codecarbon.emissions`, g CO2eq/kWh for `codecarbon.carbon_intensity`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from carbonspan.emissions import CarbonIntensity
from carbonspan.source import COMPONENTS, HardwareInfo, Measurement

if TYPE_CHECKING:
    from carbonspan.intensity import Grid
    from carbonspan.sampler import PowerSampler
    from carbonspan.sci import Books, Factors

ENERGY_TOTAL = "codecarbon.energy.total"
ENERGY = {c: f"codecarbon.energy.{c}" for c in COMPONENTS}
POWER = {c: f"codecarbon.power.{c}" for c in COMPONENTS}
MEASUREMENT = {c: f"codecarbon.measurement.{c}" for c in COMPONENTS}
EMISSIONS = "codecarbon.emissions"
EMBODIED = "codecarbon.emissions.embodied"
SCI = "codecarbon.sci"
CARBON_INTENSITY = "codecarbon.carbon_intensity"
COUNTRY = "codecarbon.country.iso_code"
REGION = "codecarbon.region"
CLOUD_PROVIDER = "codecarbon.cloud.provider"
CLOUD_REGION = "codecarbon.cloud.region"
LOCATION_SOURCE = "codecarbon.location.source"
ATTRIBUTION = "codecarbon.attribution"
CONCURRENCY = "codecarbon.concurrency"
SCOPE = "codecarbon.scope"
IDLE_POWER = "codecarbon.idle_power"
CPU_MODEL = "codecarbon.cpu.model"
GPU_MODEL = "codecarbon.gpu.model"
GPU_COUNT = "codecarbon.gpu.count"

# Metric attribute keys.
HTTP_ROUTE = "http.route"
HTTP_METHOD = "http.request.method"
HTTP_STATUS = "http.response.status_code"
HW_TYPE = "hw.type"
ATTRIBUTED = "codecarbon.attributed"
HW_TYPES = {"cpu": "cpu", "gpu": "gpu", "ram": "memory"}


def static_attributes(
    intensity: CarbonIntensity,
    info: HardwareInfo,
    scope: str,
    attribution: str,
    *,
    dynamic: bool = False,
) -> dict[str, Any]:
    """The attributes that are the same on every request's span.

    With a `dynamic` intensity (one a provider refreshes), the intensity and
    its source are the request's own, not among these.
    """
    attrs: dict[str, Any] = {SCOPE: scope, ATTRIBUTION: attribution}
    if not dynamic:
        attrs[CARBON_INTENSITY] = intensity.g_per_kwh
        attrs[LOCATION_SOURCE] = intensity.source
    optional = {
        COUNTRY: intensity.country_iso_code,
        REGION: intensity.region,
        CLOUD_PROVIDER: intensity.cloud_provider,
        CLOUD_REGION: intensity.cloud_region,
        IDLE_POWER: info.idle_power,
        CPU_MODEL: info.cpu_model,
        GPU_MODEL: info.gpu_model,
        GPU_COUNT: info.gpu_count,
    }
    attrs.update({k: v for k, v in optional.items() if v is not None})
    for component, method in info.measurement.items():
        attrs[MEASUREMENT[component]] = method
    return attrs


def missing_from(static: dict[str, Any], resource: Any) -> dict[str, Any]:
    """The static attributes a span needs, given its Resource.

    A Resource built with `carbonspan.resource.CodeCarbonResourceDetector`
    carries them for every span of the process, so they need not be set on
    each span: only those it lacks are (GPU attributes, for instance). If it
    has any of them with another value (it was built from other settings than
    the instrumentation's), the span gets them all, so that a span never
    mixes two descriptions.
    """
    on_resource = getattr(resource, "attributes", None) or {}
    missing = {}
    for key, value in static.items():
        theirs = on_resource.get(key, _ABSENT)
        if theirs is _ABSENT:
            missing[key] = value
        elif theirs != value:
            return static
    return missing


_ABSENT = object()


def span_attributes(
    measurement: Measurement,
    factors: Factors,
    static: dict[str, Any],
    dynamic: bool = False,
) -> dict[str, Any] | None:
    """All contract attributes for one request, or None if nothing was measured.

    `factors` are those in force when the request closed: its intensity (on
    the span itself when `dynamic`) and, where known, the embodied rate.
    """
    total = measurement.total
    if total is None:
        return None
    attrs = dict(static)
    intensity = factors.intensity
    attrs[ENERGY_TOTAL] = total
    grams = attrs[EMISSIONS] = intensity.grams(total)
    if dynamic:
        attrs[CARBON_INTENSITY] = intensity.g_per_kwh
        attrs[LOCATION_SOURCE] = intensity.source
    embodied = factors.embodied_grams(measurement)
    if embodied is not None:
        attrs[EMBODIED] = embodied
        attrs[SCI] = grams + embodied
    attrs[CONCURRENCY] = measurement.concurrency
    m = measurement
    for energy, joules, power, watts in (
        (_CPU_J, m.cpu, _CPU_W, m.cpu_power),
        (_GPU_J, m.gpu, _GPU_W, m.gpu_power),
        (_RAM_J, m.ram, _RAM_W, m.ram_power),
    ):
        if joules is not None:
            attrs[energy] = joules
            if watts is not None:
                attrs[power] = watts
    return attrs


_CPU_J, _GPU_J, _RAM_J = ENERGY["cpu"], ENERGY["gpu"], ENERGY["ram"]
_CPU_W, _GPU_W, _RAM_W = POWER["cpu"], POWER["gpu"], POWER["ram"]


class SpanAttributes:
    """The attributes for each request's span: its figures, and the static
    ones its Resource does not already carry with the same value.

    The static part is computed again only when the sampler's hardware
    description changes (at most once a tick), and what a Resource lacks
    once per Resource.
    """

    def __init__(
        self,
        grid: Grid,
        books: Books,
        sampler: PowerSampler,
        scope: str,
        attribution: str,
    ) -> None:
        self._grid = grid
        self._books = books
        self._sampler = sampler
        self._scope = scope
        self._attribution = attribution
        self._info: HardwareInfo | None = None  # the one `_static` describes
        self._static: dict[str, Any] = {}
        # The last span Resource seen, and the static attributes it lacks.
        self._on_span: tuple[object, dict[str, Any]] = (None, {})

    def for_span(
        self,
        measurement: Measurement,
        span: object = None,
        factors: Factors | None = None,
    ) -> dict[str, Any] | None:
        """The attributes for `span` (None: all the static ones), or None if
        nothing was measured. `factors`: those the request is valued at (by
        default, those in force)."""
        if factors is None:
            factors = self._books.factors
        dynamic = self._grid.dynamic
        info = self._sampler.info
        if info is not self._info:
            self._info = info
            self._static = static_attributes(
                self._grid.fallback,
                info,
                self._scope,
                self._attribution,
                dynamic=dynamic,
            )
            self._on_span = (None, {})
        static = self._static
        resource = getattr(span, "resource", None)
        if resource is None:  # not an SDK span: all of them
            on_span = static
        else:
            seen, on_span = self._on_span
            if resource is not seen:
                on_span = missing_from(static, resource)
                self._on_span = (resource, on_span)
        attrs = span_attributes(measurement, factors, on_span, dynamic)
        if attrs is not None and measurement.attribution != self._attribution:
            attrs[ATTRIBUTION] = measurement.attribution  # this request fell back
        return attrs


def header_writer(
    fields: tuple[str, ...], style: str, books: Books
) -> Callable[[Measurement], list[tuple[bytes, bytes]]] | None:
    """Response headers with the figures so far, or None when they are off.

    `fields` are among energy, emissions and duration; `style` is
    x-codecarbon, server-timing or both; `books` hold the factors in force.
    """
    if not fields:
        return None
    x_style = style in ("x-codecarbon", "both")
    timing = style in ("server-timing", "both")

    def write(m: Measurement) -> list[tuple[bytes, bytes]]:
        joules = m.total
        # Whole milliseconds: finer would let any client time the server's own
        # work (see docs/hooks-and-headers.md).
        values: dict[str, float] = {"duration": float(round(m.duration * 1000.0))}
        if joules is not None:
            values["energy"] = joules
            values["emissions"] = books.factors.intensity.grams(joules)
        out: list[tuple[bytes, bytes]] = []
        entries = []
        for name in fields:
            if name not in values:
                continue
            value = values[name]
            if x_style:
                out.append((_X_HEADERS[name], f"{value:.6g}".encode()))
            if timing:
                unit, scale = _TIMING[name]
                entries.append(
                    f'codecarbon-{name};dur={value * scale:.6g};desc="{unit}"'
                )
        if entries:
            out.append((b"server-timing", ", ".join(entries).encode()))
        return out

    return write


_X_HEADERS = {
    "energy": b"x-codecarbon-energy",
    "emissions": b"x-codecarbon-emissions",
    "duration": b"x-codecarbon-duration",
}
# Server-Timing has one number per entry, `dur`, shown by browsers as ms:
# energy goes as mJ and emissions as mg so that small values stay readable.
_TIMING = {
    "energy": ("mJ", 1000.0),
    "emissions": ("mg CO2eq", 1000.0),
    "duration": ("ms", 1.0),
}
