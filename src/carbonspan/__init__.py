"""carbonspan: each HTTP request's energy and CO2eq on its OpenTelemetry span."""

from carbonspan.instrumentor import CodeCarbonInstrumentor
from carbonspan.ledger import Measurement
from carbonspan.middleware import CodeCarbonMiddleware
from carbonspan.source import (
    CodeCarbonPowerSource,
    EnergyReading,
    HardwareInfo,
    PowerSource,
)
from carbonspan.version import __version__

__all__ = [
    "CodeCarbonInstrumentor",
    "CodeCarbonMiddleware",
    "CodeCarbonPowerSource",
    "EnergyReading",
    "HardwareInfo",
    "Measurement",
    "PowerSource",
    "__version__",
]
