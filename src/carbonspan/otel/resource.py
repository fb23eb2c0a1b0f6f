"""An OpenTelemetry resource detector for the attributes that never change.

Eight of a request's span attributes are the same for every request of the
process: where the carbon intensity came from and its value, the scope, the
attribution policy, the hardware model and how each component is measured.
`CodeCarbonResourceDetector` puts them on the process's Resource once. Every
span (and, through the Collector or a backend that shows the resource, every
metric) then carries them, and carbonspan leaves off each span those that the
span's Resource already has with the same value: seven fewer attributes to
validate per request.

Use it under `opentelemetry-instrument` with

    OTEL_EXPERIMENTAL_RESOURCE_DETECTORS=otel,codecarbon

(the entry point `codecarbon` in the group `opentelemetry_resource_detector`),
or in code:

    resource = Resource.create().merge(CodeCarbonResourceDetector().detect())
    TracerProvider(resource=resource)

The detector reads the same settings as the instrumentor, from the
environment (`CARBONSPAN_*`) or from keyword arguments. What it cannot know
without the power source's first reading is left out: GPU attributes, and the
measurement methods of a custom `power_source`. Whatever the Resource lacks,
or has with another value, stays on the span, so a span never loses where its
figures came from.
"""

from __future__ import annotations

import os
from typing import Any

from opentelemetry.sdk.resources import Resource, ResourceDetector

from carbonspan import codecarbon_api as cc
from carbonspan.config import Settings
from carbonspan.otel.span import static_attributes
from carbonspan.power.cpu import cpu_model
from carbonspan.power.process_share import IDLE_POWER
from carbonspan.power.source import HardwareInfo


class CodeCarbonResourceDetector(ResourceDetector):
    """The `codecarbon.*` attributes that are constant per process."""

    def __init__(self, raise_on_error: bool = False, **settings: Any) -> None:
        super().__init__(raise_on_error)
        self._settings = settings

    def detect(self) -> Resource:
        settings = Settings.load(dict(self._settings))
        intensity = settings.offline_intensity()
        if settings.power_source is not None:
            info = settings.power_source.describe()
        else:
            info = HardwareInfo(
                cpu_model=_cpu_model(),
                measurement=_methods(),
                idle_power=IDLE_POWER[settings.scope],
            )
        # An intensity a provider refreshes is each span's own, not the
        # process's: it is left off the Resource.
        dynamic = settings.intensity_provider != "static"
        attrs = static_attributes(
            intensity, info, settings.scope, settings.attribution, dynamic=dynamic
        )
        return Resource(attrs)


def _cpu_model() -> str | None:
    # Only where /proc/cpuinfo has it: elsewhere CodeCarbon would start a
    # second interpreter (py-cpuinfo), too slow for building a Resource.
    return cpu_model() if os.path.exists("/proc/cpuinfo") else None


def _methods() -> dict[str, str]:
    """How the default source will measure CPU and RAM (its detection's rule)."""
    return {"cpu": cc.cpu_method(), "ram": "model"}
