"""A request's span attributes: its figures, and the static ones (where its
figures came from) that its Resource does not already carry."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from carbonspan.carbon.intensity import CarbonIntensity
from carbonspan.otel.attributes import (
    ATTRIBUTION,
    CARBON_INTENSITY,
    CLOUD_PROVIDER,
    CLOUD_REGION,
    CONCURRENCY,
    COUNTRY,
    CPU_MODEL,
    EMBODIED,
    EMISSIONS,
    EMISSIONS_DOWNSTREAM,
    ENERGY,
    ENERGY_DOWNSTREAM,
    ENERGY_INCLUSIVE,
    ENERGY_TOTAL,
    GPU_COUNT,
    GPU_MODEL,
    IDLE_POWER,
    LOCATION_SOURCE,
    MEASUREMENT,
    POWER,
    REGION,
    SCI,
    SCOPE,
    TENANT,
)
from carbonspan.power.source import HardwareInfo

if TYPE_CHECKING:
    from carbonspan.carbon.grid import GridIntensity
    from carbonspan.otel.reporter import Valuation
    from carbonspan.power.sampler import PowerSampler


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
        attrs[LOCATION_SOURCE] = intensity.location_source
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


class SpanAttributes:
    """The attributes for each request's span: its figures, and the static
    ones its Resource does not already carry with the same value.

    The static part is computed again only when the sampler's hardware
    description changes (at most once a tick), and what a Resource lacks
    once per Resource.
    """

    def __init__(
        self,
        grid: GridIntensity,
        sampler: PowerSampler,
        scope: str,
        attribution: str,
    ) -> None:
        self._grid = grid
        self._dynamic = grid.dynamic  # a provider is given once, or never
        self._sampler = sampler
        self._scope = scope
        self._attribution = attribution
        self._info: HardwareInfo | None = None  # the one `_static` describes
        self._static: dict[str, Any] = {}
        # The last span Resource seen, and the static attributes it lacks.
        self._on_span: tuple[object, dict[str, Any]] = (None, {})

    def static(self, span: object = None) -> dict[str, Any]:
        """The static attributes `span` needs (None: all of them)."""
        info = self._sampler.info
        if info is not self._info:
            self._info = info
            self._static = static_attributes(
                self._grid.fallback,
                info,
                self._scope,
                self._attribution,
                dynamic=self._dynamic,
            )
            self._on_span = (None, {})
        resource = getattr(span, "resource", None)
        if resource is None:  # not an SDK span: all of them
            return self._static
        seen, on_span = self._on_span
        if resource is not seen:
            on_span = missing_from(self._static, resource)
            self._on_span = (resource, on_span)
        return on_span

    def for_span(self, valuation: Valuation, span: object = None) -> dict[str, Any]:
        """All contract attributes of one valued request, for `span`."""
        m = valuation.measurement
        attrs = dict(self.static(span))
        attrs[ENERGY_TOTAL] = valuation.joules
        grams = attrs[EMISSIONS] = valuation.grams
        if self._dynamic:  # the request's own intensity
            intensity = valuation.factors.intensity
            attrs[CARBON_INTENSITY] = intensity.g_per_kwh
            attrs[LOCATION_SOURCE] = intensity.location_source
        embodied = valuation.embodied
        if embodied is not None:
            attrs[EMBODIED] = embodied
            attrs[SCI] = grams + embodied
        attrs[CONCURRENCY] = m.concurrency
        for energy, joules, power, watts in (
            (_CPU_J, m.cpu, _CPU_W, m.cpu_power),
            (_GPU_J, m.gpu, _GPU_W, m.gpu_power),
            (_RAM_J, m.ram, _RAM_W, m.ram_power),
        ):
            if joules is not None:
                attrs[energy] = joules
                if watts is not None:
                    attrs[power] = watts
        if m.attribution != self._attribution:
            attrs[ATTRIBUTION] = m.attribution  # this request fell back
        tenant = valuation.key[3]
        if tenant is not None:
            attrs[TENANT] = tenant
        downstream = valuation.downstream
        if downstream is not None:
            attrs[ENERGY_DOWNSTREAM] = downstream[0]
            attrs[ENERGY_INCLUSIVE] = valuation.joules + downstream[0]
            attrs[EMISSIONS_DOWNSTREAM] = downstream[1]
        return attrs


_CPU_J, _GPU_J, _RAM_J = ENERGY["cpu"], ENERGY["gpu"], ENERGY["ram"]
_CPU_W, _GPU_W, _RAM_W = POWER["cpu"], POWER["gpu"], POWER["ram"]
