"""What a component draws while requests run, learned from the sampler's ticks.

Each tick tells how many joules a component drew over an interval, and the
ledger knows how many of the interval's seconds had no request in flight
(idle) and how many had at least one (busy). A request shorter than the
interval is over before the tick that measures it, so its charge is a guess:
the guess is only as good as the power it assumes.

`PowerModel` fits, per component,

    joules = idle_watts * idle_seconds + busy_watts * busy_seconds

by least squares over the recent ticks, from running sums that are forgotten
exponentially with time (what a tick said a minute ago weighs 1/e of a new
one), so the fit follows a change of load. Forgetting scales every sum alike,
so it never moves the fit by itself: a server idle for an hour still holds
what its requests draw. Two guards keep it sane where the ticks say little:

- idle power comes from the intervals with no request in flight, where there
  are enough of them: those measure it directly. Intervals that hold one short
  request each cannot tell idle from busy power well, since their idle and
  busy seconds always add up to the same interval;
- an interval's joules are split between its idle and busy seconds in the
  proportion the fit expects (idle power x idle seconds against busy power x
  busy seconds), so an interval's error is shared, not all put on the few
  busy milliseconds, and busy power is never found below idle power
  (requests do not lower a process's power), nor 0 where the interval drew
  anything;
- the busy power keeps of its difference from the idle power only what stands
  out of the ticks' noise (a James-Stein shrinkage by the difference's
  variance): power that changes for reasons of its own, not with the requests
  in flight, is not taken for theirs.

A power the ticks have not shown yet is the prior: the source's own estimate
of busy power where it gives one, else the first interval's mean power. Busy
power stays there until the ticks have seen a millisecond of busy time: an
interval with a few nanoseconds of request in it says nothing about it.

`Ratio` learns one number, joules per unit (for `cpu_time`, joules per CPU
second of request work), with the same forgetting per unit seen.
"""

from __future__ import annotations

import math

#: Below this (relative) determinant, the intervals seen so far all had the
#: same mix of idle and busy time, which cannot tell the two powers apart.
CONDITION = 1e-6
#: Forgetting: what a tick said `MEMORY` seconds ago weighs 1/e of a new one.
MEMORY = 60.0
#: Idle power is measured directly once this many seconds (forgotten alike)
#: of intervals with no request in flight are known.
IDLE_ANCHOR = 0.5
#: Busy power is fitted once the busy seconds seen (root of the forgotten sum
#: of their squares) reach a millisecond: over less, a few joules of counter
#: resolution or idle power would read as an arbitrarily high busy power.
BUSY_EVIDENCE = 0.001


class PowerModel:
    """Idle and busy watts of one component, by least squares over ticks."""

    __slots__ = (
        "_fitted",
        "_idle_j",
        "_idle_s",
        "_ii",
        "_iu",
        "_iy",
        "_keep",
        "_n",
        "_prior",
        "_uu",
        "_uy",
        "_yy",
        "busy",
        "idle",
    )

    def __init__(self) -> None:
        # Running sums, forgotten alike: idle^2, idle*busy, busy^2, idle*J,
        # busy*J; and the joules and seconds of intervals with nothing in flight.
        self._ii = self._iu = self._uu = self._iy = self._uy = 0.0
        self._yy = self._n = 0.0  # J^2, and how many ticks (forgotten alike)
        self._keep = 1.0  # how much of busy minus idle power stands out of noise
        self._idle_j = self._idle_s = 0.0
        self._prior: tuple[float, float] | None = None  # (idle W, busy W)
        self._fitted = False  # whether busy power was ever fitted
        #: Watts while no request is in flight, and while one is; None until a
        #: first interval is seen.
        self.idle: float | None = None
        self.busy: float | None = None

    def prior(self, busy_watts: float) -> None:
        """The source's own estimate of busy power, until ticks teach one."""
        idle = self._prior[0] if self._prior is not None else busy_watts
        self._prior = (idle, busy_watts)
        if not self._busy_known():
            self.busy = busy_watts

    def observe(self, idle: float, busy: float, joules: float) -> float:
        """Learn from one interval; returns the joules of its idle seconds."""
        seconds = idle + busy
        if seconds <= 0.0:
            return 0.0
        if self._prior is None:  # the first interval: its mean power
            mean = joules / seconds
            self._prior = (mean, mean)
        keep = math.exp(-seconds / MEMORY)
        self._ii = self._ii * keep + idle * idle
        self._iu = self._iu * keep + idle * busy
        self._uu = self._uu * keep + busy * busy
        self._iy = self._iy * keep + idle * joules
        self._uy = self._uy * keep + busy * joules
        self._yy = self._yy * keep + joules * joules
        self._n = self._n * keep + 1.0
        self._idle_j *= keep
        self._idle_s *= keep
        if busy <= 0.0:
            self._idle_j += joules
            self._idle_s += idle
        self._solve(busy > 0.0)
        if busy <= 0.0:
            return joules
        assert self.idle is not None and self.busy is not None
        # The joules split as the model expects them to be: its idle power
        # over the idle seconds against its busy power over the busy ones.
        expected_idle, expected_busy = self.idle * idle, self.busy * busy
        if expected_idle + expected_busy <= 0.0:
            return joules * idle / seconds
        return joules * expected_idle / (expected_idle + expected_busy)

    def _busy_known(self) -> bool:
        """Whether the ticks have seen enough busy time to fit busy power."""
        return self._uu >= BUSY_EVIDENCE * BUSY_EVIDENCE

    def _solve(self, busy_seen: bool) -> None:
        assert self._prior is not None
        a, b = self._prior
        ii, iu, uu, iy, uy = self._ii, self._iu, self._uu, self._iy, self._uy
        if self._idle_s >= IDLE_ANCHOR:  # measured directly
            a = self._idle_j / self._idle_s
        else:
            det = ii * uu - iu * iu
            if ii > 0.0 and uu > 0.0 and det > CONDITION * ii * uu:
                a = (uu * iy - iu * uy) / det
            elif ii > 0.0 and uu == 0.0:  # only idle intervals so far
                a = iy / ii
        if self._busy_known():  # the best busy power, given the idle power
            self._fitted = True
            b = (uy - iu * a) / uu
            gap = b - a
            if busy_seen:
                # Keep of its difference from idle power only what the ticks
                # show beyond their noise: power that does not follow the
                # requests (a step no request caused) must not read as
                # theirs. Judged when requests were in flight: idle ticks
                # tell nothing about it.
                residual = self._yy - 2 * (a * iy + b * uy) + a * a * ii
                residual += 2 * a * b * iu + b * b * uu
                variance = max(residual, 0.0) / max(self._n - 2.0, 1.0) / uu
                square = gap * gap
                self._keep = max(0.0, 1.0 - variance / square) if square else 1.0
            b = a + gap * self._keep
        elif self._fitted and self.busy is not None:  # seen long ago: kept
            b = self.busy
        # Else the prior: never the busy power raised to the idle power of a
        # first interval (the sampler's start-up), which would stick.
        # Requests do not lower a process's power: busy is at least idle.
        self.idle = max(a, 0.0)
        self.busy = max(b, self.idle)


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
