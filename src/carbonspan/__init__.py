"""carbonspan: each HTTP request's energy and CO2eq on its OpenTelemetry span."""

from carbonspan.codecarbon_source import CodeCarbonPowerSource
from carbonspan.instrumentor import CodeCarbonInstrumentor
from carbonspan.middleware import CodeCarbonMiddleware
from carbonspan.source import (
    EnergyReading,
    EnergyTotals,
    HardwareInfo,
    Measurement,
    PowerSource,
)
from carbonspan.version import __version__

__all__ = [
    "CodeCarbonInstrumentor",
    "CodeCarbonMiddleware",
    "CodeCarbonPowerSource",
    "EnergyReading",
    "EnergyTotals",
    "HardwareInfo",
    "Measurement",
    "PowerSource",
    "__version__",
]
