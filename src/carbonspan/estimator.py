"""What a component draws while requests run, learned from the sampler's ticks.

Each tick tells how many joules a component drew over an interval, and the
ledger knows how many of the interval's seconds had no request in flight
(idle) and how many had at least one (busy). A request shorter than the
interval is over before the tick that measures it, so its charge is a guess:
the guess is only as good as the power it assumes.

`PowerModel` fits, per component,

    joules = idle_watts * idle_seconds + busy_watts * busy_seconds

by weighted least squares over the recent ticks. The sums are forgotten
exponentially, but only in the direction a tick informs: a tick with no
request in flight ages what is known of the idle power and keeps what is
known of the busy power, so a server idle for an hour still remembers what
its requests draw. Until the ticks have told the two apart, a power they have
not shown is the prior: the source's own estimate of busy power where it
gives one, else the first interval's mean power.

`Ratio` learns one number, joules per unit (for `cpu_time`, joules per CPU
second of request work), with the same forgetting per unit seen.
"""

from __future__ import annotations

import math

#: Below this (relative) determinant, the intervals seen so far all had the
#: same mix of idle and busy time, which cannot tell the two powers apart.
CONDITION = 1e-6
#: Forgetting: what was seen `MEMORY` seconds (of idle, or of busy time) ago
#: weighs 1/e of what is seen now.
MEMORY = 5.0


class PowerModel:
    """Idle and busy watts of one component, by least squares over ticks."""

    __slots__ = ("_ii", "_iu", "_iy", "_prior", "_uu", "_uy", "busy", "idle")

    def __init__(self) -> None:
        self._ii = self._iu = self._uu = self._iy = self._uy = 0.0
        self._prior: tuple[float, float] | None = None
        #: Watts while no request is in flight, and while one is; None until
        #: a first interval was measured.
        self.idle: float | None = None
        self.busy: float | None = None

    def prior(self, busy_watts: float) -> None:
        """The source's own estimate of busy power, before ticks teach one."""
        idle = self._prior[0] if self._prior is not None else busy_watts
        self._prior = (idle, busy_watts)
        if self.busy is None or self._uu == 0.0:
            self._solve()

    def observe(self, idle: float, busy: float, joules: float) -> float:
        """Learn from one interval; returns the joules of its idle seconds.

        The idle joules are what the fitted idle power would have drawn over
        the idle seconds, never more than the interval's joules; the rest went
        to the requests in flight.
        """
        seconds = idle + busy
        if seconds <= 0.0:
            return 0.0
        if self._prior is None:  # the first interval: its mean power
            mean = joules / seconds
            self._prior = (mean, mean)
        # Forget in the direction this tick informs, then add it.
        fi = math.exp(-idle / MEMORY)
        fu = math.exp(-busy / MEMORY)
        self._ii = self._ii * fi + idle * idle
        self._uu = self._uu * fu + busy * busy
        self._iu = self._iu * math.sqrt(fi * fu) + idle * busy
        self._iy = self._iy * fi + idle * joules
        self._uy = self._uy * fu + busy * joules
        self._solve()
        if busy <= 0.0:
            return joules
        if idle <= 0.0:
            return 0.0
        assert self.idle is not None
        return min(max(self.idle * idle, 0.0), joules)

    def _solve(self) -> None:
        if self._prior is None:
            return
        a, b = self._prior  # where the ticks have said nothing
        ii, uu, iu, iy, uy = self._ii, self._uu, self._iu, self._iy, self._uy
        det = ii * uu - iu * iu
        if ii > 0.0 and uu > 0.0 and det > CONDITION * ii * uu:
            a = (uu * iy - iu * uy) / det
            b = (ii * uy - iu * iy) / det
        elif uu > 0.0:  # busy seen, idle not told apart from it: idle at prior
            b = (uy - iu * a) / uu
        elif ii > 0.0:  # only idle intervals so far
            a = iy / ii
        self.idle, self.busy = max(a, 0.0), max(b, 0.0)


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
