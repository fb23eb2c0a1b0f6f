"""carbonspan: each HTTP request's energy and CO2eq on its OpenTelemetry span.

The public names are here, in `carbonspan.testing` (power sources whose
energy is known exactly), `carbonspan.types` (the settings and ASGI types)
and `carbonspan.resource` (the resource detector). The subpackages show the
architecture; what they hold is internal:

- `carbonspan.power`: where joules come from (the `PowerSource` protocol,
  CodeCarbon's models, NVML, the sampler thread);
- `carbonspan.attribution`: how they are split between requests (the
  ledger, its policies, the per-request CPU clocks);
- `carbonspan.carbon`: what they emit (carbon intensity, grid providers,
  embodied emissions, the accounts in grams);
- `carbonspan.otel`: how it reaches OpenTelemetry (instrumentor,
  middleware, reporter, span attributes, metrics, resource detector).
"""

from carbonspan.attribution.measurement import Measurement
from carbonspan.attribution.totals import EnergyTotals
from carbonspan.carbon.grid import ElectricityMapsIntensity, IntensityProvider
from carbonspan.otel.instrumentor import CodeCarbonInstrumentor
from carbonspan.otel.middleware import CodeCarbonMiddleware
from carbonspan.otel.tenant import set_tenant
from carbonspan.power.codecarbon import CodeCarbonPowerSource
from carbonspan.power.source import EnergyReading, HardwareInfo, PowerSource
from carbonspan.version import __version__

__all__ = [
    "CodeCarbonInstrumentor",
    "CodeCarbonMiddleware",
    "CodeCarbonPowerSource",
    "ElectricityMapsIntensity",
    "EnergyReading",
    "EnergyTotals",
    "HardwareInfo",
    "IntensityProvider",
    "Measurement",
    "PowerSource",
    "__version__",
    "set_tenant",
]
