"""The metrics contract, through the application's MeterProvider.

The request path makes no SDK call: requests' figures are queued and
recorded in batches (`carbonspan.otel.metric_queue`); every collection
drains the queue first, so a reader that collects right after a request sees
it. Everything else is observable, read at collection time from sums the
ledger and the accounts already keep.
"""

from __future__ import annotations

import functools
import threading
import time
import weakref
from collections.abc import Iterable

from opentelemetry.metrics import (
    CallbackOptions,
    MeterProvider,
    Observation,
    get_meter,
)

from carbonspan import forks
from carbonspan.attribution.ledger import Ledger
from carbonspan.attribution.totals import Totals
from carbonspan.carbon.accounts import EmissionsAccounts
from carbonspan.otel import attributes as a
from carbonspan.otel.metric_queue import PointQueue, RouteKey
from carbonspan.otel.tenant import MAX_TENANTS
from carbonspan.power.source import COMPONENTS
from carbonspan.version import __version__

SCHEMA_URL = "https://opentelemetry.io/schemas/1.26.0"
#: The meter's (the instrumentation scope's) name: backends show it
#: (Prometheus's `otel_scope_name`), so it stays put whatever the module is.
METER_NAME = "carbonspan.metrics"
ENERGY_BUCKETS = (
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0,
)  # fmt: skip


class Metrics:
    """The instruments on one MeterProvider, fed by every ledger that uses it.

    Instruments are created once per provider: an SDK keeps the first
    instrument of a name, so a second set of callbacks would never be called.
    Each instrumentation registers its ledger and accounts here instead, and
    samplers shared by several instrumentations are counted once.
    """

    def __init__(self, meter_provider: MeterProvider | None = None) -> None:
        self._lock = threading.Lock()
        self._ledgers: dict[Ledger, _LedgerEntry] = {}
        meter = get_meter(
            METER_NAME,
            __version__,
            meter_provider=meter_provider,
            schema_url=SCHEMA_URL,
        )
        energy, downstream = (
            meter.create_histogram(
                name, unit="J", description=text,
                explicit_bucket_boundaries_advisory=ENERGY_BUCKETS,
            )
            for name, text in a.HISTOGRAMS
        )  # fmt: skip
        self.queue = PointQueue(energy, downstream)
        self.drain = self.queue.drain
        # The first observable is codecarbon.request.emissions: a collection
        # runs it before it reads the histogram, so what it drains is in that
        # collection.
        for kind, name, unit, description, callback in a.OBSERVABLES:
            method, *args = callback.split()  # a method, and its first arguments
            getattr(meter, f"create_observable_{kind}")(
                name,
                callbacks=[functools.partial(getattr(self, method), *args)],
                unit=unit,
                description=description,
            )
        forks.track(self, forks.READERS)

    def _after_fork_in_child(self) -> None:
        # The parent records what it had queued; the child starts empty.
        self._lock = threading.Lock()
        self.queue._after_fork_in_child()

    def add(
        self,
        ledger: Ledger,
        accounts: EmissionsAccounts,
        long_request: float = 300.0,
        scope: str = "process",
        max_tenants: int = MAX_TENANTS,
    ) -> None:
        """Count `ledger` (shared by the instrumentations of one sampler: the
        first one's accounts and scope, the last one's long_request and
        max_tenants hold). Under `scope="machine"` its readings are the
        hardware's, and feed OpenTelemetry's `hw.*` instruments too."""
        self.queue.tenants.limit = max_tenants
        with self._lock:
            entry = self._ledgers.get(ledger)
            if entry is None:
                entry = self._ledgers[ledger] = _LedgerEntry(accounts)
                entry.machine = scope == "machine"
            entry.count += 1
            entry.long_request = long_request

    def remove(self, ledger: Ledger) -> None:
        with self._lock:
            entry = self._ledgers.get(ledger)
            if entry is not None:
                entry.count -= 1
                if entry.count == 0:
                    del self._ledgers[ledger]

    # -- observable callbacks ---------------------------------------------

    def _totals(
        self, machine_only: bool = False
    ) -> list[tuple[EmissionsAccounts, Totals, list[float]]]:
        """Each ledger's accounts and totals, its unattributed joules floored.

        The ledger's unattributed account dips when a power drop is corrected
        after the requests concerned have closed; a counter must not go down,
        so it holds its last value until the account is above it again.
        """
        with self._lock:
            out = []
            for ledger, entry in self._ledgers.items():
                if machine_only and not entry.machine:
                    continue
                totals = ledger.totals()
                floor = entry.joules_floor
                for i, value in enumerate(totals.unattributed):
                    floor[i] = max(floor[i], value)
                out.append((entry.accounts, totals, list(floor)))
            return out

    def _accounts(self) -> list[tuple[EmissionsAccounts, float, float]]:
        """Each ledger's accounts, with their unattributed grams floored (both
        the operational and the embodied account), as for the energy."""
        with self._lock:
            out = []
            for entry in self._ledgers.values():
                accounts, floor = entry.accounts, entry.grams_floor
                floor[0] = max(floor[0], accounts.unattributed)
                floor[1] = max(floor[1], accounts.embodied_unattributed)
                out.append((accounts, floor[0], floor[1]))
            return out

    def _by_route(self, sums: dict[RouteKey, float]) -> list[Observation]:
        queue = self.queue
        queue.drain()
        with queue.lock:
            return [Observation(v, queue.attributes[k]) for k, v in sums.items()]

    def _observe_request_emissions(self, _: CallbackOptions) -> Iterable[Observation]:
        return self._by_route(self.queue.route_grams)

    def _observe_request_embodied(self, _: CallbackOptions) -> Iterable[Observation]:
        return self._by_route(self.queue.route_embodied)

    def _observe_background(self, _: CallbackOptions) -> Iterable[Observation]:
        return self._by_route(self.queue.background_joules)

    def _observe_energy(self, _: CallbackOptions) -> Iterable[Observation]:
        sums: dict[tuple[str, bool], float] = {}
        for _accounts, totals, floored in self._totals():
            for i, component in enumerate(COMPONENTS):
                if totals.known[i]:
                    hw = a.HW_TYPES[component]
                    sums[hw, True] = sums.get((hw, True), 0.0) + totals.attributed[i]
                    sums[hw, False] = sums.get((hw, False), 0.0) + floored[i]
        return [
            Observation(joules, {a.HW_TYPE: hw, a.ATTRIBUTED: attributed})
            for (hw, attributed), joules in sums.items()
        ]

    def _observe_emissions(self, _: CallbackOptions) -> Iterable[Observation]:
        # From the accounts: the energy of each interval at the intensity then
        # in force, so the counters stay exact when the intensity changes.
        return _split((acc.attributed, grams) for acc, grams, _ in self._accounts())

    def _observe_embodied(self, _: CallbackOptions) -> Iterable[Observation]:
        # No series where no embodied emissions are known.
        return _split(
            (acc.embodied_attributed, grams)
            for acc, _, grams in self._accounts()
            if acc.embodied.value is not None
        )

    def _sums(self, field: str, machine_only: bool = False) -> dict[str, float]:
        """A `Totals` field summed over the ledgers, per hw.type."""
        sums: dict[str, float] = {}
        for _accounts, totals, _floored in self._totals(machine_only):
            values = getattr(totals, field)
            for i, component in enumerate(COMPONENTS):
                if totals.known[i]:
                    hw = a.HW_TYPES[component]
                    sums[hw] = sums.get(hw, 0.0) + values[i]
        return sums

    def _by_hw_type(self, field: str) -> list[Observation]:
        return [Observation(v, {a.HW_TYPE: hw}) for hw, v in self._sums(field).items()]

    def _observe_power(self, _: CallbackOptions) -> Iterable[Observation]:
        return self._by_hw_type("power")

    def _observe_open(self, _: CallbackOptions) -> Iterable[Observation]:
        return self._by_hw_type("open")

    def _hardware(self, field: str, per: str, _: CallbackOptions) -> list[Observation]:
        """OpenTelemetry's hardware conventions, for the hardware's own
        figures (scope="machine" only): `per` "component", one aggregate
        component per hw.type, `hw.id` naming it; `per` "host", the total."""
        sums = self._sums(field, machine_only=True)
        if per == "host":
            return [Observation(sum(sums.values()))] if sums else []
        return [Observation(v, {a.HW_TYPE: hw, a.HW_ID: hw}) for hw, v in sums.items()]

    def _observe_in_flight(self, _: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            ledgers = list(self._ledgers)
        return [Observation(sum(ledger.in_flight for ledger in ledgers))]

    def _observe_long(self, _: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            entries = [(ledger, e.long_request) for ledger, e in self._ledgers.items()]
        now = time.monotonic()
        return [Observation(sum(ledger.open_since(now - s) for ledger, s in entries))]

    def _observe_dropped(self, _: CallbackOptions) -> Iterable[Observation]:
        self.queue.drain()
        return [Observation(self.queue.dropped)]

    def _observe_intensity(self, _: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            first = next(iter(self._ledgers.values()), None)
        if first is None:
            return []
        return [Observation(first.accounts.factors.intensity.g_per_kwh)]


class _LedgerEntry:
    """One ledger the instruments read: its accounts, how many
    instrumentations count it, and the floors that keep its unattributed
    counters from going down."""

    __slots__ = (
        *("accounts", "count", "grams_floor"),
        *("joules_floor", "long_request", "machine"),
    )

    def __init__(self, accounts: EmissionsAccounts) -> None:
        self.accounts = accounts
        self.count = 0
        self.machine = False  # scope="machine": its readings are the hardware's
        self.long_request = 300.0
        self.joules_floor = [0.0] * len(COMPONENTS)
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
