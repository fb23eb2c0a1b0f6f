"""What a component draws while requests run, learned from the sampler's ticks.

Each tick tells how many joules a component drew over an interval, and the
ledger knows how many of the interval's seconds had no request in flight
(idle) and how many had at least one (busy). A request shorter than the
interval is over before the tick that measures it, so its charge is a guess:
the guess is only as good as the power it assumes.

`PowerModel` fits, per component,

    joules = idle_watts * idle_seconds + busy_watts * busy_seconds

by recursive least squares over the ticks: each tick moves the fit by its
error, in the direction the earlier ticks leave open. What they said is
forgotten exponentially with time, so the fit follows a change of load; but
a tick only moves the busy power if requests were in flight during it, so a
server idle for an hour still holds what its requests draw, and the next busy
interval refits it. A power the ticks have not shown yet is the prior: the
source's own estimate of busy power where it gives one, else the first
interval's mean power.

`Ratio` learns one number, joules per unit (for `cpu_time`, joules per CPU
second of request work), with the same forgetting per unit seen.
"""

from __future__ import annotations

import math

#: Below this (relative) determinant, the intervals seen so far all had the
#: same mix of idle and busy time, which cannot tell the two powers apart.
CONDITION = 1e-6
#: Forgetting: what a tick said `MEMORY` seconds ago weighs 1/e of a new one.
MEMORY = 10.0


class PowerModel:
    """Idle and busy watts of one component, by recursive least squares."""

    __slots__ = ("_a", "_b", "_ii", "_iu", "_uu")

    def __init__(self) -> None:
        self._a: float | None = None  # idle watts, as fitted (may be < 0)
        self._b: float | None = None  # busy watts, as fitted
        # The information the ticks gave: sums of idle^2, idle*busy, busy^2.
        self._ii = self._iu = self._uu = 0.0

    @property
    def idle(self) -> float | None:
        """Watts while no request is in flight; None until an interval is seen."""
        return None if self._a is None else max(self._a, 0.0)

    @property
    def busy(self) -> float | None:
        """Watts while requests are in flight; None until an interval is seen."""
        return None if self._b is None else max(self._b, 0.0)

    def prior(self, busy_watts: float) -> None:
        """The source's own estimate of busy power, until ticks teach one."""
        if self._uu == 0.0:
            self._b = busy_watts

    def observe(self, idle: float, busy: float, joules: float) -> float:
        """Learn from one interval; returns the joules of its idle seconds.

        The idle joules are what the fitted idle power would have drawn over
        the idle seconds, never more than the interval's joules; the rest went
        to the requests in flight.
        """
        seconds = idle + busy
        if seconds <= 0.0:
            return 0.0
        mean = joules / seconds
        a = mean if self._a is None else self._a
        b = mean if self._b is None else self._b
        # Forget a little of what earlier ticks said, then add this one.
        keep = math.exp(-seconds / MEMORY)
        ii = self._ii = self._ii * keep + idle * idle
        uu = self._uu = self._uu * keep + busy * busy
        iu = self._iu = self._iu * keep + idle * busy
        error = joules - a * idle - b * busy
        det = ii * uu - iu * iu
        if det > CONDITION * ii * uu:
            a += (uu * idle - iu * busy) * error / det
            b += (ii * busy - iu * idle) * error / det
        else:  # all intervals alike so far: fit this one, nearest the last fit
            norm = idle * idle + busy * busy
            a += idle * error / norm
            b += busy * error / norm
        self._a, self._b = a, b
        if busy <= 0.0:
            return joules
        if idle <= 0.0:
            return 0.0
        return min(max(a * idle, 0.0), joules)


class Ratio:
    """Joules per unit of work, forgotten per unit seen; None until known."""

    __slots__ = ("_joules", "_units", "_weight")

    def __init__(self, memory: float) -> None:
        self._joules = self._units = 0.0
        self._weight = 1.0 / memory

    def observe(self, units: float, joules: float) -> None:
        keep = math.exp(-units * self._weight)
        self._joules = self._joules * keep + joules
        self._units = self._units * keep + units

    def value(self, prior: float | None, prior_units: float) -> float | None:
        """The ratio, pulled towards `prior` as if `prior_units` had shown it."""
        if prior is None:
            return self._joules / self._units if self._units > 0.0 else None
        units = self._units + prior_units
        return (self._joules + prior * prior_units) / units
