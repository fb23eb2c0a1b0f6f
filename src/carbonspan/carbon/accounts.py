"""SCI per request: the factors in force, and the accounts kept in grams.

The Software Carbon Intensity (ISO/IEC 21031:2024) of one request is

    SCI = E x I + M

- E x I, the operational emissions: the request's joules times the carbon
  intensity in force (`carbonspan.carbon.grid.GridIntensity`);
- M, its share of the embodied emissions: TE x (time reserved / lifespan) x
  (resources reserved / total resources). The time a request reserves is its
  shared time, duration / concurrency, which the ledger already integrates
  (a request alone holds its duration; two in flight together hold half of
  it each). Resources reserved over total resources (RS) is 1 under
  `scope="machine"`; under `scope="process"` it is the process's share by
  the rule for CPU energy: its CPU time over the machine's busy CPU time.

A request reads one object, `EmissionsAccounts.factors`, when it is
valued: the intensity
in force (g/kWh) and the embodied rate in force (g per second of reserved
time, RS included). Both change only at a tick, in the sampler thread, so
every request that closes between two ticks is valued with the same factors.

The accounts, kept at each tick from the ledger's own totals, make the process
counters exact when the factors change:

- measured grams: the sum over intervals of the interval's joules x its
  intensity; embodied grams: the sum over intervals of the interval's
  seconds x rate x the interval's RS;
- attributed: what the requests that closed were charged, at the factors in
  force when each closed;
- unattributed: the rest, drawn while no request was in flight, charged to
  excluded requests, and the revaluation of what requests still in flight
  hold when a factor changes (they will be valued at the new factor when
  they close).

So that at every tick, with the requests in flight valued at the factors in
force, attributed + unattributed + in flight == measured.
"""

from __future__ import annotations

import threading
from math import exp

from carbonspan import forks
from carbonspan.attribution.estimator import MEMORY
from carbonspan.attribution.ledger import Ledger
from carbonspan.attribution.measurement import Measurement
from carbonspan.carbon.embodied import EmbodiedEmissions
from carbonspan.carbon.grid import GridIntensity
from carbonspan.carbon.intensity import CarbonIntensity
from carbonspan.numbers import JOULES_PER_KWH, is_finite
from carbonspan.power.source import EnergyReading


class Factors:
    """What a request is valued at when it closes."""

    __slots__ = ("embodied_rate", "intensity")

    def __init__(self, intensity: CarbonIntensity, embodied_rate: float | None) -> None:
        self.intensity = intensity
        #: g CO2eq per second of reserved (shared) time, RS included; None
        #: when the embodied emissions are not known.
        self.embodied_rate = embodied_rate

    def embodied_grams(self, measurement: Measurement) -> float | None:
        """M for one request: its reserved time x the embodied rate."""
        rate = self.embodied_rate
        if rate is None:
            return None
        return rate * reserved(measurement)

    def __repr__(self) -> str:
        return f"Factors({self.intensity!r}, embodied_rate={self.embodied_rate!r})"


def reserved(measurement: Measurement) -> float:
    """A request's reserved time: its shared seconds, duration / concurrency."""
    concurrency = measurement.concurrency
    return measurement.duration / concurrency if concurrency > 0 else 0.0


class EmissionsAccounts:
    """One ledger's emissions in grams, kept at each tick; the factors in force.

    `tick()` runs in the sampler thread after each reading (and after the
    last one, at shutdown). It accounts the interval just measured at the
    factors that were in force during it, then takes any new intensity from
    the grid and the embodied rate, and publishes the new `factors`.
    `measured` is what the other accounts balance against.
    """

    def __init__(
        self, ledger: Ledger, grid: GridIntensity, embodied: EmbodiedEmissions
    ) -> None:
        self.ledger = ledger
        self.grid = grid
        self.embodied = embodied
        self._lock = threading.Lock()
        self.reset()
        forks.track(self, forks.READERS)

    def _after_fork_in_child(self) -> None:
        # The ledgers were reset: the child's accounts start from nothing too.
        self._lock = threading.Lock()
        self.reset(forked=True)

    def reset(self, *, forked: bool = False) -> None:
        """Start from the ledger as it is; after a fork, from nothing (the
        child's ledger starts from nothing too)."""
        self.factors = Factors(self.grid.current, None)
        self.measured = 0.0  # g of the measured energy
        self.attributed = 0.0  # g charged to closed requests
        self.unattributed = 0.0  # g of the rest
        self.embodied_total = 0.0  # g of embodied emissions of the elapsed time
        self.embodied_attributed = 0.0
        self.embodied_unattributed = 0.0
        self.reserved_share: float | None = None  # RS of the last interval
        self._rs_seconds = 0.0  # busy seconds behind the smoothed RS (forgotten)
        self._rs_sum = 0.0
        if forked:
            self._joules = (0.0, 0.0, 0.0)
            self._times = (0.0, 0.0, 0.0, 0.0)
            return
        totals = self.ledger.totals()
        times = self.ledger.times()
        self._joules = (
            sum(totals.measured),
            sum(totals.attributed),
            sum(totals.unattributed),
        )
        self._times = (times.idle, times.busy, times.attributed, times.unattributed)

    def tick(self, reading: EnergyReading) -> None:
        """Account the interval that just ended; publish the factors in force."""
        with self._lock:
            self._tick(reading.share)
        self.grid.poll(reading.time)
        self.embodied.poll(reading.time)

    def _tick(self, reading_share: float | None) -> None:
        ledger = self.ledger
        totals = ledger.totals()
        times = ledger.times()
        factors = self.factors
        per_joule = factors.intensity.g_per_kwh / JOULES_PER_KWH
        measured, attributed, unattributed = (
            sum(totals.measured),
            sum(totals.attributed),
            sum(totals.unattributed),
        )
        m0, a0, u0 = self._joules
        self.measured += (measured - m0) * per_joule
        self.attributed += (attributed - a0) * per_joule
        self.unattributed += (unattributed - u0) * per_joule
        self._joules = (measured, attributed, unattributed)

        idle0, busy0, sa0, su0 = self._times
        d_idle, d_busy = times.idle - idle0, times.busy - busy0
        d_sa, d_su = times.attributed - sa0, times.unattributed - su0
        self._times = (times.idle, times.busy, times.attributed, times.unattributed)
        share = self._interval_share(reading_share, d_busy)
        known = self.embodied.value
        rate = known.grams_per_second if known is not None else None
        used = factors.embodied_rate  # what requests closing in the interval used
        if rate is not None and used is not None:
            worth = rate * share  # what the interval's seconds are worth
            self.embodied_total += worth * (d_idle + d_busy)
            self.embodied_attributed += used * d_sa
            self.embodied_unattributed += (
                worth * d_idle + used * d_su + (worth - used) * d_busy
            )

        # The new factors. What requests in flight hold is revalued at them:
        # they will be charged at the new ones when they close.
        intensity = self.grid.take() or factors.intensity
        rs = self._smoothed_share(share)
        embodied = rate * rs if rate is not None else None
        if intensity is not factors.intensity:
            open_joules = measured - attributed - unattributed
            self.unattributed += open_joules * (
                per_joule - intensity.g_per_kwh / JOULES_PER_KWH
            )
        open_seconds = times.busy - times.attributed - times.unattributed
        if times.in_flight == 0 or open_seconds < 0.0:
            open_seconds = 0.0
        if embodied != used:
            self.embodied_unattributed += open_seconds * (
                (used or 0.0) - (embodied or 0.0)
            )
        if intensity is not factors.intensity or embodied != used:
            self.factors = Factors(intensity, embodied)

    def _interval_share(self, share: float | None, busy: float) -> float:
        """RS of the interval just measured, from its reading (None: the
        whole machine, 1.0)."""
        if share is None:
            share = 1.0
        elif not is_finite(share):
            share = self.reserved_share if self.reserved_share is not None else 0.0
        share = min(max(share, 0.0), 1.0)
        self.reserved_share = share
        # The value requests are charged with: the RS of the intervals when
        # requests were in flight, weighted by their busy seconds and
        # forgotten after about MEMORY busy seconds.
        keep = exp(-busy / MEMORY)
        self._rs_seconds = self._rs_seconds * keep + busy
        self._rs_sum = self._rs_sum * keep + share * busy
        return share

    def _smoothed_share(self, share: float) -> float:
        if self._rs_seconds > 0:
            return self._rs_sum / self._rs_seconds
        return share
