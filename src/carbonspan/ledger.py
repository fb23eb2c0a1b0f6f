"""The attribution ledger: splits measured energy between concurrent requests.

Policy ``time_share``: at any instant the process draws power P(t) and n(t)
requests are in flight; each is charged P(t)/n(t). The ledger keeps one running
integral per component,

    A(t) = integral of P(s)/n(s) ds over the instants when n(s) > 0,

and a request open on [b, e] is charged A(e) - A(b). Opening and closing are
O(1) under one lock. Between sampler ticks A advances with the last sample's
power; at each tick the difference between what the source measured and what
the ledger handed out goes to the windows still open (or to the idle account
when none is), so that at every tick

    sum of attributed J + unattributed J == measured J.

A negative difference (power fell since the last sample) is never taken back
from requests: it lowers the power used until the next tick instead, so every
charge and every total only grows.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

from carbonspan.source import COMPONENTS, EnergyReading

_N = len(COMPONENTS)


@dataclass(frozen=True, slots=True)
class Measurement:
    """What one request was charged. Joules are `None` where not measured."""

    duration: float
    cpu: float | None
    gpu: float | None
    ram: float | None
    concurrency: float
    attribution: str = "time_share"

    @property
    def total(self) -> float | None:
        parts = [j for j in (self.cpu, self.gpu, self.ram) if j is not None]
        return sum(parts) if parts else None

    def power(self, component: str) -> float | None:
        """Mean watts on `component` over the request, or `None`."""
        joules: float | None = getattr(self, component)
        if joules is None or self.duration <= 0:
            return None
        return joules / self.duration


class Window:
    """An open request: the integrals' values when it opened."""

    __slots__ = ("a0", "b0", "ready", "start")

    def __init__(self, start: float, a0: tuple[float, ...], b0: float, ready: bool):
        self.start = start
        self.a0 = a0
        self.b0 = b0
        self.ready = ready


class Ledger:
    """Running integrals of per-request power, advanced by the sampler's ticks."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything (used after fork: the parent's requests are not ours)."""
        self._lock = threading.Lock()
        self._t: float | None = None  # last instant the integrals reach
        self._n = 0
        self._known = [False] * _N
        self._power = [0.0] * _N  # watts used to advance until the next tick
        self._measured_power = [0.0] * _N  # watts over the last sampled interval
        self._a = [0.0] * _N  # A(t), joules per request
        self._b = 0.0  # integral of 1/n(t) dt, for the mean concurrency
        self._charged = [0.0] * _N  # everything handed out, open windows included
        self._idle = [0.0] * _N  # unattributed: nothing in flight, or excluded
        self._attributed = [0.0] * _N  # closed, attributed windows
        self._measured = [0.0] * _N  # sum of the source's valid deltas
        self._last: list[float | None] = [None] * _N
        self._last_time: float | None = None
        self.first_reading: EnergyReading | None = None
        self.last_reading: EnergyReading | None = None

    # -- request path ------------------------------------------------------

    def open(self, now: float) -> Window:
        with self._lock:
            self._advance(now)
            self._n += 1
            return Window(now, tuple(self._a), self._b, self._t is not None)

    def close(self, window: Window, now: float, attributed: bool = True) -> Measurement:
        with self._lock:
            self._advance(now)
            self._n -= 1
            a, known = self._a, self._known
            charges = [a[i] - window.a0[i] for i in range(_N)]
            # A window opened before the first reading reports nothing, so
            # what it was charged since counts as unattributed.
            account = self._attributed if attributed and window.ready else self._idle
            for i in range(_N):
                account[i] += charges[i]
            shared = self._b - window.b0
        duration = now - window.start
        if not window.ready:
            return Measurement(duration, None, None, None, 1.0)
        concurrency = duration / shared if shared > 0 else 1.0
        return Measurement(
            duration,
            charges[0] if known[0] else None,
            charges[1] if known[1] else None,
            charges[2] if known[2] else None,
            concurrency,
        )

    def _advance(self, now: float) -> None:
        last = self._t
        if last is None or now <= last:
            return
        self._t = now
        dt = now - last
        power, charged = self._power, self._charged
        if self._n:
            share = dt / self._n
            self._b += share
            a = self._a
            for i in range(_N):
                a[i] += power[i] * share
                charged[i] += power[i] * dt
        else:
            idle = self._idle
            for i in range(_N):
                idle[i] += power[i] * dt
                charged[i] += power[i] * dt

    # -- sampler path ------------------------------------------------------

    def tick(self, reading: EnergyReading) -> None:
        """Take a new cumulative reading from the power source."""
        values = (reading.cpu, reading.gpu, reading.ram)
        with self._lock:
            if self.first_reading is None:
                self.first_reading = reading
            self.last_reading = reading
            if self._t is None:
                self._t = reading.time
            else:
                self._advance(reading.time)
            dt = reading.time - self._last_time if self._last_time is not None else 0.0
            self._last_time = reading.time
            for i in range(_N):
                value = values[i]
                if value is None or not math.isfinite(value):
                    continue
                self._known[i] = True
                previous = self._last[i]
                self._last[i] = value
                if previous is None:
                    continue
                delta = value - previous
                if delta < 0:  # the counter was reset: start again from here
                    continue
                self._measured[i] += delta
                if dt > 0:
                    self._measured_power[i] = delta / dt
                diff = self._measured[i] - self._charged[i]
                if diff > 0:
                    if self._n:
                        self._a[i] += diff / self._n
                    else:
                        self._idle[i] += diff
                    self._charged[i] += diff
                    self._power[i] = self._measured_power[i]
                elif dt > 0:
                    self._power[i] = max(0.0, self._measured_power[i] + diff / dt)

    # -- introspection -----------------------------------------------------

    @property
    def in_flight(self) -> int:
        return self._n

    def totals(self) -> Totals:
        """Cumulative joules per component, for metrics and tests."""
        with self._lock:
            return Totals(
                known=tuple(self._known),
                attributed=tuple(self._attributed),
                unattributed=tuple(self._idle),
                measured=tuple(self._measured),
                power=tuple(self._measured_power),
            )


@dataclass(frozen=True)
class Totals:
    known: tuple[bool, ...]
    attributed: tuple[float, ...]
    unattributed: tuple[float, ...]
    measured: tuple[float, ...]
    power: tuple[float, ...]

    def get(self, field: str, component: str) -> float | None:
        i = COMPONENTS.index(component)
        if not self.known[i]:
            return None
        value: float = getattr(self, field)[i]
        return value
