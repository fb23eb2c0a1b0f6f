"""The metrics contract, through the application's MeterProvider.

The request path makes exactly one SDK call: the `codecarbon.request.energy`
histogram record. Everything else is observable and read at collection time
from sums the ledger and this module already keep.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation, get_meter

from carbonspan import attributes as a
from carbonspan.emissions import CarbonIntensity
from carbonspan.ledger import Ledger, Measurement
from carbonspan.source import COMPONENTS
from carbonspan.version import __version__

SCHEMA_URL = "https://opentelemetry.io/schemas/1.26.0"
ENERGY_BUCKETS = (
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0,
)  # fmt: skip
_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
)

RouteKey = tuple[str | None, str, int]


class Metrics:
    """Instruments of one instrumentation, fed by its ledger and requests."""

    def __init__(
        self, ledger: Ledger, intensity: CarbonIntensity, meter_provider: Any = None
    ) -> None:
        self._ledger = ledger
        self._intensity = intensity
        self._lock = threading.Lock()
        self._route_grams: dict[RouteKey, float] = {}
        self._attrs: dict[RouteKey, dict[str, Any]] = {}
        self._idle_floor = [0.0] * len(COMPONENTS)
        meter = get_meter(
            __name__, __version__, meter_provider=meter_provider, schema_url=SCHEMA_URL
        )
        self.request_energy = meter.create_histogram(
            "codecarbon.request.energy",
            unit="J",
            description="Energy charged to each HTTP request",
            explicit_bucket_boundaries_advisory=ENERGY_BUCKETS,
        )
        meter.create_observable_counter(
            "codecarbon.request.emissions",
            callbacks=[self._observe_request_emissions],
            unit="g",
            description="CO2eq emissions charged to HTTP requests",
        )
        meter.create_observable_counter(
            "codecarbon.energy",
            callbacks=[self._observe_energy],
            unit="J",
            description="Energy measured for this process, attributed or not",
        )
        meter.create_observable_counter(
            "codecarbon.emissions",
            callbacks=[self._observe_emissions],
            unit="g",
            description="CO2eq emissions of the energy measured for this process",
        )
        meter.create_observable_gauge(
            "codecarbon.power",
            callbacks=[self._observe_power],
            unit="W",
            description="Power drawn by this process over the last sampling interval",
        )
        meter.create_observable_gauge(
            "codecarbon.carbon_intensity",
            callbacks=[self._observe_intensity],
            unit="g/kWh",
            description="Carbon intensity of the electricity used",
        )

    def record(
        self, measurement: Measurement, route: str | None, method: str, status: int
    ) -> None:
        """Record one finished request (one SDK call)."""
        total = measurement.total
        if total is None:
            return
        key = (route, method if method in _METHODS else "_OTHER", status)
        attrs = self._attrs.get(key)
        if attrs is None:
            attrs = {a.HTTP_METHOD: key[1], a.HTTP_STATUS: status}
            if route is not None:
                attrs[a.HTTP_ROUTE] = route
            self._attrs[key] = attrs
        self.request_energy.record(total, attrs)
        grams = self._intensity.grams(total)
        with self._lock:
            self._route_grams[key] = self._route_grams.get(key, 0.0) + grams

    # -- observable callbacks ---------------------------------------------

    def _observe_request_emissions(self, _: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            items = list(self._route_grams.items())
        return [Observation(grams, self._attrs[key]) for key, grams in items]

    def _unattributed(self) -> list[float]:
        # The ledger's idle account dips when a power drop is corrected after
        # the requests concerned have closed; a counter must not go down, so
        # it holds its last value until the account is above it again.
        totals = self._ledger.totals()
        with self._lock:
            floor = self._idle_floor
            for i, value in enumerate(totals.unattributed):
                floor[i] = max(floor[i], value)
            return list(floor)

    def _observe_energy(self, _: CallbackOptions) -> Iterable[Observation]:
        totals = self._ledger.totals()
        idle = self._unattributed()
        out = []
        for i, component in enumerate(COMPONENTS):
            if not totals.known[i]:
                continue
            hw = a.HW_TYPES[component]
            attributed: dict[str, Any] = {a.HW_TYPE: hw, a.ATTRIBUTED: True}
            out.append(Observation(totals.attributed[i], attributed))
            out.append(Observation(idle[i], {a.HW_TYPE: hw, a.ATTRIBUTED: False}))
        return out

    def _observe_emissions(self, _: CallbackOptions) -> Iterable[Observation]:
        totals = self._ledger.totals()
        grams = self._intensity.grams
        return [
            Observation(grams(sum(totals.attributed)), {a.ATTRIBUTED: True}),
            Observation(grams(sum(self._unattributed())), {a.ATTRIBUTED: False}),
        ]

    def _observe_power(self, _: CallbackOptions) -> Iterable[Observation]:
        totals = self._ledger.totals()
        return [
            Observation(totals.power[i], {a.HW_TYPE: a.HW_TYPES[c]})
            for i, c in enumerate(COMPONENTS)
            if totals.known[i]
        ]

    def _observe_intensity(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self._intensity.g_per_kwh)]
