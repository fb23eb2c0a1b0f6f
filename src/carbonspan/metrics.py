"""The metrics contract, through the application's MeterProvider.

The request path makes no SDK call: requests' figures are queued and
recorded in batches (see `carbonspan.recorder`); every collection drains the
queue first, so a reader that collects right after a request sees it.
Everything else is observable and read at collection time from sums the
ledger, the books and the recorder already keep.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterable

from opentelemetry.metrics import (
    CallbackOptions,
    MeterProvider,
    Observation,
    get_meter,
)

from carbonspan import attributes as a
from carbonspan import forks
from carbonspan.ledger import Ledger, Totals
from carbonspan.recorder import Recorder
from carbonspan.sci import Books
from carbonspan.source import COMPONENTS
from carbonspan.version import __version__

SCHEMA_URL = "https://opentelemetry.io/schemas/1.26.0"
ENERGY_BUCKETS = (
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0,
)  # fmt: skip


class Metrics(Recorder):
    """The instruments on one MeterProvider, fed by every ledger that uses it.

    Instruments are created once per provider: an SDK keeps the first
    instrument of a name, so a second set of callbacks would never be called.
    Each instrumentation registers its ledger and factor here instead, and
    samplers shared by several instrumentations are counted once.
    """

    def __init__(self, meter_provider: MeterProvider | None = None) -> None:
        super().__init__()
        self._sources: dict[Ledger, _Source] = {}
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
            "codecarbon.request.emissions.embodied",
            callbacks=[self._observe_request_embodied],
            unit="g",
            description="Embodied CO2eq emissions (hardware manufacturing) "
            "charged to HTTP requests",
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
        meter.create_observable_counter(
            "codecarbon.emissions.embodied",
            callbacks=[self._observe_embodied],
            unit="g",
            description="Embodied CO2eq emissions of the hardware's time, "
            "attributed to requests or not",
        )
        meter.create_observable_gauge(
            "codecarbon.power",
            callbacks=[self._observe_power],
            unit="W",
            description="Power drawn by this process over the last sampling interval",
        )
        meter.create_observable_up_down_counter(
            "codecarbon.requests.in_flight",
            callbacks=[self._observe_in_flight],
            unit="{request}",
            description="HTTP requests holding an attribution window right now",
        )
        meter.create_observable_gauge(
            "codecarbon.carbon_intensity",
            callbacks=[self._observe_intensity],
            unit="g/kWh",
            description="Carbon intensity of the electricity used",
        )
        meter.create_observable_counter(
            "codecarbon.request.background.energy",
            callbacks=[self._observe_background],
            unit="J",
            description="Energy of the work HTTP requests left running after "
            "their response (background tasks), by route",
        )
        meter.create_observable_up_down_counter(
            "codecarbon.energy.open",
            callbacks=[self._observe_open],
            unit="J",
            description="Energy held by the HTTP requests still in flight at the "
            "last reading: measured = attributed + unattributed + this",
        )
        meter.create_observable_up_down_counter(
            "codecarbon.requests.long",
            callbacks=[self._observe_long],
            unit="{request}",
            description="HTTP requests in flight for longer than the "
            "long_request setting",
        )
        meter.create_observable_counter(
            "codecarbon.requests.dropped",
            callbacks=[self._observe_dropped],
            unit="{request}",
            description="HTTP requests left out of codecarbon.request.* because "
            "the buffer of figures waiting to be recorded was full",
        )
        forks.track(self, forks.READERS)

    def add(self, ledger: Ledger, books: Books, long_request: float = 300.0) -> None:
        """Count `ledger` (shared by the instrumentations of one sampler: the
        first one's books and the last one's long_request hold)."""
        with self._lock:
            source = self._sources.get(ledger)
            if source is None:
                source = self._sources[ledger] = _Source(books)
            source.count += 1
            source.long_request = long_request

    def remove(self, ledger: Ledger) -> None:
        with self._lock:
            source = self._sources.get(ledger)
            if source is not None:
                source.count -= 1
                if source.count == 0:
                    del self._sources[ledger]

    # -- observable callbacks ---------------------------------------------

    def _ledgers(self) -> list[tuple[Ledger, Books, Totals, list[float]]]:
        """Each ledger's totals, with its unattributed account floored.

        The ledger's idle account dips when a power drop is corrected after
        the requests concerned have closed; a counter must not go down, so it
        holds its last value until the account is above it again.
        """
        with self._lock:
            out = []
            for ledger, source in self._sources.items():
                totals = ledger.totals()
                floor = source.idle_floor
                for i, value in enumerate(totals.unattributed):
                    floor[i] = max(floor[i], value)
                out.append((ledger, source.books, totals, list(floor)))
            return out

    def _books(self) -> list[tuple[Books, float, float]]:
        """Each ledger's books, with their unattributed grams floored (both
        the operational and the embodied account), as for the energy."""
        with self._lock:
            out = []
            for source in self._sources.values():
                books, floor = source.books, source.grams_floor
                floor[0] = max(floor[0], books.unattributed)
                floor[1] = max(floor[1], books.embodied_unattributed)
                out.append((books, floor[0], floor[1]))
            return out

    def _observe_request_emissions(self, _: CallbackOptions) -> Iterable[Observation]:
        # The first observable of the meter: a collection runs it before it
        # reads the histogram, so what is drained here is in this collection.
        self.drain()
        with self._lock:
            items = list(self._route_grams.items())
        return [Observation(grams, self._attrs[key]) for key, grams in items]

    def _observe_request_embodied(self, _: CallbackOptions) -> Iterable[Observation]:
        self.drain()
        with self._lock:
            items = list(self._route_embodied.items())
        return [Observation(grams, self._attrs[key]) for key, grams in items]

    def _observe_energy(self, _: CallbackOptions) -> Iterable[Observation]:
        sums: dict[tuple[str, bool], float] = {}
        for _ledger, _books, totals, idle in self._ledgers():
            for i, component in enumerate(COMPONENTS):
                if totals.known[i]:
                    hw = a.HW_TYPES[component]
                    sums[hw, True] = sums.get((hw, True), 0.0) + totals.attributed[i]
                    sums[hw, False] = sums.get((hw, False), 0.0) + idle[i]
        return [
            Observation(joules, {a.HW_TYPE: hw, a.ATTRIBUTED: attributed})
            for (hw, attributed), joules in sums.items()
        ]

    def _observe_emissions(self, _: CallbackOptions) -> Iterable[Observation]:
        # From the books: the energy of each interval at the intensity then
        # in force, so the counters stay exact when the intensity changes.
        return _split(
            (books.attributed, idle) for books, idle, _embodied in self._books()
        )

    def _observe_embodied(self, _: CallbackOptions) -> Iterable[Observation]:
        # No series where no embodied emissions are known.
        return _split(
            (books.embodied_attributed, idle)
            for books, _idle, idle in self._books()
            if books.embodied.value is not None
        )

    def _by_hw_type(self, field: str) -> list[Observation]:
        """A `Totals` field summed over the ledgers, one observation per hw.type."""
        sums: dict[str, float] = {}
        for _ledger, _books, totals, _idle in self._ledgers():
            values = getattr(totals, field)
            for i, component in enumerate(COMPONENTS):
                if totals.known[i]:
                    hw = a.HW_TYPES[component]
                    sums[hw] = sums.get(hw, 0.0) + values[i]
        return [Observation(value, {a.HW_TYPE: hw}) for hw, value in sums.items()]

    def _observe_power(self, _: CallbackOptions) -> Iterable[Observation]:
        return self._by_hw_type("power")

    def _observe_in_flight(self, _: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            ledgers = list(self._sources)
        return [Observation(sum(ledger.in_flight for ledger in ledgers))]

    def _observe_background(self, _: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            items = list(self._background.items())
        return [Observation(joules, self._attrs[key]) for key, joules in items]

    def _observe_open(self, _: CallbackOptions) -> Iterable[Observation]:
        return self._by_hw_type("open")

    def _observe_long(self, _: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            entries = [(ledger, s.long_request) for ledger, s in self._sources.items()]
        now = time.monotonic()
        return [Observation(sum(ledger.open_since(now - s) for ledger, s in entries))]

    def _observe_dropped(self, _: CallbackOptions) -> Iterable[Observation]:
        self.drain()
        return [Observation(self.dropped)]

    def _observe_intensity(self, _: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            first = next(iter(self._sources.values()), None)
        if first is None:
            return []
        return [Observation(first.books.factors.intensity.g_per_kwh)]


class _Source:
    """One ledger the instruments read: its books, how many instrumentations
    count it, and the floors that keep its unattributed counters from going
    down."""

    __slots__ = ("books", "count", "grams_floor", "idle_floor", "long_request")

    def __init__(self, books: Books) -> None:
        self.books = books
        self.count = 0
        self.long_request = 300.0
        self.idle_floor = [0.0] * len(COMPONENTS)
        self.grams_floor = [0.0, 0.0]


def _split(pairs: Iterable[tuple[float, float]]) -> list[Observation]:
    """(attributed, unattributed) pairs summed into the two series, if any."""
    attributed = unattributed = 0.0
    seen = False
    for mine, idle in pairs:
        seen = True
        attributed += mine
        unattributed += idle
    if not seen:
        return []
    return [
        Observation(attributed, {a.ATTRIBUTED: True}),
        Observation(unattributed, {a.ATTRIBUTED: False}),
    ]


_REGISTRY_LOCK = "metrics.registry"
forks.lock(_REGISTRY_LOCK)
_global: list[Metrics] = []  # for the global provider (meter_provider=None)
_by_provider: weakref.WeakKeyDictionary[MeterProvider, Metrics] = (
    weakref.WeakKeyDictionary()
)


def metrics_for(meter_provider: MeterProvider | None) -> Metrics:
    """The one `Metrics` of a MeterProvider (None: the global one)."""
    with forks.locks[_REGISTRY_LOCK]:
        if meter_provider is None:
            if not _global:
                _global.append(Metrics(None))
            return _global[0]
        metrics = _by_provider.get(meter_provider)
        if metrics is None:
            metrics = _by_provider[meter_provider] = Metrics(meter_provider)
        return metrics
