"""The names of the span and metric contracts, defined once.

Units are fixed by the contract and the names carry none: joules for
`codecarbon.energy.*`, watts for `codecarbon.power.*`, grams CO2eq for
`codecarbon.emissions`, g CO2eq/kWh for `codecarbon.carbon_intensity`.
"""

from __future__ import annotations

from carbonspan.power.source import COMPONENTS

ENERGY_TOTAL = "codecarbon.energy.total"
ENERGY_DOWNSTREAM = "codecarbon.energy.downstream"
ENERGY_INCLUSIVE = "codecarbon.energy.inclusive"
EMISSIONS_DOWNSTREAM = "codecarbon.emissions.downstream"
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
TENANT = "codecarbon.tenant"

# Metric attribute keys.
HTTP_ROUTE = "http.route"
HTTP_METHOD = "http.request.method"
HTTP_STATUS = "http.response.status_code"
HW_TYPE = "hw.type"
HW_ID = "hw.id"
ATTRIBUTED = "codecarbon.attributed"
HW_TYPES = {"cpu": "cpu", "gpu": "gpu", "ram": "memory"}

#: The histograms (J, one point per request): name, description.
HISTOGRAMS = (
    ("codecarbon.request.energy", "Energy charged to each HTTP request"),
    ("codecarbon.request.energy.downstream", "Energy the outgoing HTTP calls of each HTTP request reported (not this process's own)"),
)  # fmt: skip
#: The observable instruments, one a row: kind, name, unit, description, and
#: the `carbonspan.otel.metrics.Metrics` method that observes it (with its
#: first arguments after it).
OBSERVABLES = (
    ("counter", "codecarbon.request.emissions", "g", "CO2eq emissions charged to HTTP requests", "_observe_request_emissions"),
    ("counter", "codecarbon.request.emissions.embodied", "g", "Embodied CO2eq emissions (hardware manufacturing) charged to HTTP requests", "_observe_request_embodied"),
    ("counter", "codecarbon.energy", "J", "Energy measured for this process, attributed or not", "_observe_energy"),
    ("counter", "codecarbon.emissions", "g", "CO2eq emissions of the energy measured for this process", "_observe_emissions"),
    ("counter", "codecarbon.emissions.embodied", "g", "Embodied CO2eq emissions of the hardware's time, attributed to requests or not", "_observe_embodied"),
    ("gauge", "codecarbon.power", "W", "Power drawn by this process over the last sampling interval", "_observe_power"),
    ("up_down_counter", "codecarbon.requests.in_flight", "{request}", "HTTP requests holding an attribution window right now", "_observe_in_flight"),
    ("gauge", "codecarbon.carbon_intensity", "g/kWh", "Carbon intensity of the electricity used", "_observe_intensity"),
    ("counter", "codecarbon.request.background.energy", "J", "Energy of the work HTTP requests left running after their response (background tasks), by route", "_observe_background"),
    ("up_down_counter", "codecarbon.energy.open", "J", "Energy held by the HTTP requests still in flight at the last reading: measured = attributed + unattributed + this", "_observe_open"),
    ("up_down_counter", "codecarbon.requests.long", "{request}", "HTTP requests in flight for longer than the long_request setting", "_observe_long"),
    ("counter", "hw.energy", "J", "Energy consumed by the hardware component (scope=machine only)", "_hardware measured component"),
    ("gauge", "hw.power", "W", "Power consumed by the hardware component over the last sampling interval (scope=machine only)", "_hardware power component"),
    ("counter", "hw.host.energy", "J", "Total energy consumed by the entire physical host, as measured (scope=machine only)", "_hardware measured host"),
    ("gauge", "hw.host.power", "W", "Power consumed by the entire physical host over the last sampling interval, as measured (scope=machine only)", "_hardware power host"),
    ("counter", "codecarbon.requests.dropped", "{request}", "HTTP requests left out of codecarbon.request.* because the buffer of figures waiting to be recorded was full", "_observe_dropped"),
)  # fmt: skip
