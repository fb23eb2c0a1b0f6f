"""Checked by `mypy --strict` (scripts/test), never run: the public API's
types say what it takes. Each `type: ignore[...]` marks a call a type checker
must refuse; with `warn_unused_ignores` (part of --strict), an ignore that is
not needed fails the check, so a type that let the mistake through would."""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from typing import Any

from fastapi import FastAPI
from opentelemetry.trace import Span

from carbonspan import (
    CodeCarbonInstrumentor,
    CodeCarbonMiddleware,
    ElectricityMapsIntensity,
    EnergyReading,
    EnergyTotals,
    HardwareInfo,
    Measurement,
    set_tenant,
)
from carbonspan.testing import ConstantPowerSource
from carbonspan.types import InstrumentSettings, MeasurementHook

app = FastAPI()


def hook(span: Span, scope: MutableMapping[str, Any], m: Measurement) -> None:
    if m.total is not None and m.cpu_power is not None:
        span.set_attribute("app.energy_mj", m.total * 1000.0)


typed_hook: MeasurementHook = hook
settings: InstrumentSettings = {"sample_interval": 0.05, "scope": "machine"}

CodeCarbonInstrumentor().instrument_app(
    app,
    country_iso_code="FRA",
    attribution="cpu_time",
    response_headers=["energy", "duration"],
    power_source=ConstantPowerSource(cpu=10.0),
    measurement_hook=typed_hook,
)
CodeCarbonInstrumentor().instrument_app(app, **settings)
CodeCarbonInstrumentor().instrument(sample_interval=0.1, skip_dep_check=True)
CodeCarbonInstrumentor().instrument_app(
    app,
    country_iso_code=os.environ.get("COUNTRY"),  # None: not given
    response_headers=True,
    excluded_urls=["/health", "/metrics"],
    meter_provider=None,
)
CodeCarbonMiddleware(app, excluded_urls="/health")
CodeCarbonInstrumentor().instrument_app(
    app, tenant_baggage="tenant.id", max_tenants=20, downstream_energy=True
)
set_tenant("acme")


class Meter:
    """A power source of one's own (the `PowerSource` protocol)."""

    def read(self) -> EnergyReading:
        # The process's share of the machine, for the embodied emissions.
        return EnergyReading(time=1.0, cpu=2.5, share=0.25)

    def describe(self) -> HardwareInfo:
        return HardwareInfo(measurement={"cpu": "meter"}, busy_watts={"cpu": 9.0})


class Grid:
    """An intensity provider of one's own (the `IntensityProvider` protocol)."""

    name = "grid"

    def current(self) -> float:
        return 120.0


CodeCarbonInstrumentor().instrument_app(
    app, power_source=Meter(), intensity_provider=Grid(), intensity_refresh=60.0
)
CodeCarbonInstrumentor().instrument_app(
    app, intensity_provider=ElectricityMapsIntensity("FR", "token")
)

# Mistakes a type checker catches before instrument() raises.
CodeCarbonInstrumentor().instrument_app(app, sample_intervall=0.1)  # type: ignore[call-arg]
CodeCarbonInstrumentor().instrument_app(app, scope="host")  # type: ignore[arg-type]
CodeCarbonInstrumentor().instrument(attribution="cpu")  # type: ignore[arg-type]
CodeCarbonMiddleware(app, sample_interval="fast")  # type: ignore[arg-type]
CodeCarbonInstrumentor().instrument_app(app, measurement_hook=len)  # type: ignore[arg-type]
CodeCarbonInstrumentor().instrument_app(app, power_source=object())  # type: ignore[arg-type]
CodeCarbonInstrumentor().instrument_app(app, intensity_provider="wattTime")  # type: ignore[arg-type]
EnergyReading(time=1.0, share="half")  # type: ignore[arg-type]
CodeCarbonInstrumentor().instrument_app(app, max_tenants="20")  # type: ignore[arg-type]
set_tenant(42)  # type: ignore[arg-type]

totals: EnergyTotals | None = CodeCarbonInstrumentor.energy_totals(app)
if totals is not None:
    cpu_joules: float = totals.measured["cpu"]
m = Measurement(0.01, 0.01, cpu=0.1)
m.cpu = 0.2  # type: ignore[misc]
