"""The attribution ledger: splits measured energy between concurrent requests.

Policy ``time_share``: at any instant the process draws power P(t) and n(t)
requests are in flight; each is charged P(t)/n(t).

The ledger keeps one running integral, B(t) = integral of 1/n(s) ds over the
instants when n(s) > 0, so a request open on [b, e] holds B(e) - B(b) seconds
of "shared time". Power comes from the sampler's ticks: for each interval
between two ticks the source says how many joules were drawn, so the mean
power P_j of interval j is known exactly once it ends. A request is charged

    sum over the intervals j it overlaps of P_j * (its shared time in j)

which the ledger gets in O(1) from a second running integral per component,
C_j = sum of P_i * (B_i - B_{i-1}) over the ticks so far, and a bounded ring of
the last ticks' (B_j, C_j, P_j). A request that is still open after its last
interval's tick therefore gets the interval's *measured* power, not a guess.

Only the tail of a request after the last tick, before the next one, is
unknown when it closes: that part is charged at the last interval's power.
At the next tick the difference between that guess and the measured power of
the interval goes to the unattributed account, so that at every tick

    sum of closed requests' J + open requests' J + unattributed J == measured J

exactly. What the closed tails were mis-charged is the residual error, which
docs/attribution.md measures. The unattributed account (idle time, excluded
requests, those corrections) can dip when power falls; every request's charge
is >= 0.
"""

from __future__ import annotations

import math
import numbers
import threading
from dataclasses import dataclass
from typing import Any

from carbonspan.source import COMPONENTS, EnergyReading

_N = len(COMPONENTS)
#: Ticks kept for windows still open: 8192 ticks is 13.6 min at 0.1 s.
RING = 8192
_ZERO = (0.0,) * _N
POLICIES = ("time_share", "cpu_time")
#: Below this many CPU seconds in an interval, cpu_time falls back on time_share:
#: less than the clocks resolve, and joules per CPU second would be meaningless.
MIN_CPU = 1e-6
_Tick = tuple[float, tuple[float, ...], tuple[float, ...]]  # B_j, C_j, P_j
#: What was wrong with a reading: (kind, detail), see `Ledger.tick`.
Fault = tuple[str, str]


class Measurement:
    """What one request was charged. Joules are `None` where not measured.

    `total` is the sum of the measured components (None if none is), and
    `concurrency` the mean number of requests that shared the power.
    """

    __slots__ = (
        "_shared_cpu",
        "attribution",
        "concurrency",
        "cpu",
        "duration",
        "gpu",
        "ram",
        "total",
    )

    def __init__(
        self,
        duration: float,
        cpu: float | None,
        gpu: float | None,
        ram: float | None,
        concurrency: float,
        attribution: str = "time_share",
        shared_cpu: float | None = None,
    ) -> None:
        self.duration = duration
        self.cpu = cpu
        self.gpu = gpu
        self.ram = ram
        self.concurrency = concurrency
        self.attribution = attribution
        total = None
        for joules in (cpu, gpu, ram):
            if joules is not None:
                total = joules if total is None else total + joules
        self.total: float | None = total
        # Under cpu_time: the CPU joules time share would have charged, which
        # is what the process's mean CPU power is derived from.
        self._shared_cpu = cpu if shared_cpu is None else shared_cpu

    def power(self, component: str) -> float | None:
        """The process's mean watts on `component` while the request ran.

        The mean is weighted by the request's share of each instant, so its
        joules are this power divided by the mean concurrency: with one
        request alone it is simply joules / duration.
        """
        joules: float | None = (
            self._shared_cpu if component == "cpu" else getattr(self, component)
        )
        if joules is None or self.duration <= 0:
            return None
        return joules * self.concurrency / self.duration

    def __repr__(self) -> str:
        return (
            f"Measurement(duration={self.duration!r}, cpu={self.cpu!r}, "
            f"gpu={self.gpu!r}, ram={self.ram!r}, concurrency={self.concurrency!r}, "
            f"attribution={self.attribution!r})"
        )


class Window:
    """An open request: where the integrals stood when it opened."""

    __slots__ = (
        "b0",
        "b_seen",
        "clock",
        "cpu_charge",
        "cpu_seen",
        "j0",
        "last_tick",
        "ready",
        "start",
    )

    def __init__(
        self, start: float, b0: float, j0: int, ready: bool, last_tick: _Tick | None
    ) -> None:
        self.start = start
        self.b0 = b0  # B(b)
        self.j0 = j0  # the last tick before b
        self.ready = ready
        self.last_tick = last_tick  # that tick's (B, C, P), in case it is evicted
        # cpu_time only: the request's CPU clock, and where it stood at the
        # last tick; the CPU joules of the intervals that have ended.
        self.clock: Any = None
        self.cpu_seen = 0.0
        self.b_seen = b0
        self.cpu_charge = 0.0


class Ledger:
    """Running integrals of shared time and measured power, ticked by the sampler."""

    def __init__(self, ring: int = RING, policy: str = "time_share") -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy: {policy!r}; use one of {', '.join(POLICIES)}")
        self._ring_size = ring
        self.policy = policy
        self._cpu_time = policy == "cpu_time"
        self.reset()

    def reset(self) -> None:
        """Forget everything (used after fork: the parent's requests are not ours)."""
        self._lock = threading.Lock()
        self._t: float | None = None  # last instant the integrals reach
        self._n = 0
        self._b = 0.0  # B(t)
        self._idle_time = 0.0  # seconds with nothing in flight
        self._busy_time = 0.0  # seconds with something in flight
        self._tick_busy = 0.0  # busy seconds at the last tick
        self._j = -1  # index of the last tick
        self._tick_b = 0.0  # B at the last tick
        self._tick_idle = 0.0  # idle seconds at the last tick
        self._c = [0.0] * _N  # C at the last tick, per component
        self._power = [0.0] * _N  # P of the last interval: the guess for the tail
        self._ring: list[_Tick | None] = [None] * self._ring_size
        self._tails = 0.0  # shared time of tails closed since the last tick
        self._known = [False] * _N
        self._idle = [0.0] * _N  # unattributed J
        self._attributed = [0.0] * _N  # closed, attributed J
        self._measured = [0.0] * _N  # sum of the source's valid deltas
        self._last: list[float | None] = [None] * _N
        self._last_time: float | None = None
        # cpu_time: the open windows, and what the tails since the last tick
        # used and were charged (J per CPU second of the last interval).
        self._open: set[Window] = set()
        self._tails_cpu = 0.0
        self._tails_guess = 0.0
        self._k: float | None = None
        self._tick_t = 0.0  # the ledger's time at the last tick
        self.first_reading: EnergyReading | None = None
        self.last_reading: EnergyReading | None = None

    # -- request path ------------------------------------------------------

    def open(self, now: float, clock: Any = None) -> Window:
        """A request starts. Under cpu_time, `clock.seconds` is its CPU time."""
        with self._lock:
            self._advance(now)
            self._n += 1
            j = self._j
            last_tick = self._ring[j % self._ring_size] if j >= 0 else None
            window = Window(now, self._b, j, self._t is not None, last_tick)
            if self._cpu_time:
                window.clock = clock
                window.cpu_seen = clock.seconds if clock is not None else 0.0
                self._open.add(window)
            return window

    def close(self, window: Window, now: float, attributed: bool = True) -> Measurement:
        with self._lock:
            self._advance(now)
            self._n -= 1
            charges = self._charges(window)
            if self._cpu_time:
                self._open.discard(window)
                self._tails_cpu += _cpu_since(window)
                self._tails_guess += charges[0] - window.cpu_charge
            if window.j0 == self._j:
                self._tails += self._b - window.b0
            else:
                self._tails += self._b - self._tick_b
            # A window opened before the first reading reports nothing, so
            # what it was charged since counts as unattributed.
            account = self._attributed if attributed and window.ready else self._idle
            account[0] += charges[0]
            account[1] += charges[1]
            account[2] += charges[2]
            shared = self._b - window.b0
        return self._measurement(window, now, charges, shared)

    def peek(self, window: Window, now: float) -> Measurement:
        """What `window` has been charged so far, without closing it."""
        with self._lock:
            self._advance(now)
            charges = self._charges(window)
            shared = self._b - window.b0
        return self._measurement(window, now, charges, shared)

    def _charges(self, window: Window) -> list[float]:
        power, b = self._power, self._b
        j0 = window.j0
        if j0 == self._j:  # no tick since it opened
            shared = b - window.b0
            charges = [power[0] * shared, power[1] * shared, power[2] * shared]
            if self._cpu_time:  # CPU by CPU time; time share kept for power()
                charges.append(charges[0])
                charges[0] = self._cpu_charge(window)
            return charges
        tail = b - self._tick_b
        c = self._c
        if window.ready and self._j - j0 <= self._ring_size:
            b1, c1, p1 = self._ring[(j0 + 1) % self._ring_size]  # type: ignore[misc]
            head = b1 - window.b0
        elif window.ready and window.last_tick is not None:
            # Open so long that the tick after it opened is forgotten: its
            # first interval is charged at the power known when it opened.
            b1, c1, p1 = window.last_tick
            head = b1 - window.b0  # <= 0: takes back the C before it opened
        else:  # opened before the first tick: C counts from that tick
            b1, c1, p1 = 0.0, _ZERO, _ZERO
            head = 0.0
        charges = [
            p1[0] * head + c[0] - c1[0] + power[0] * tail,
            p1[1] * head + c[1] - c1[1] + power[1] * tail,
            p1[2] * head + c[2] - c1[2] + power[2] * tail,
        ]
        if self._cpu_time:  # CPU by CPU time; time share kept for power()
            charges.append(charges[0])
            charges[0] = self._cpu_charge(window)
        return charges

    def _cpu_charge(self, window: Window) -> float:
        """cpu_time: the ended intervals' joules, and the tail's guess.

        The tail is guessed at the last interval's joules per CPU second, but
        never above the process's whole power over the tail: after an interval
        in which requests used almost no CPU, that rate is no guide.
        """
        power = self._power[0]
        if self._k is not None:  # J per CPU second in the last interval
            t = self._t if self._t is not None else window.start
            wall = t - max(window.start, self._tick_t)
            tail = min(self._k * _cpu_since(window), power * max(wall, 0.0))
        else:  # no request used measurable CPU then: time_share
            tail = power * (self._b - window.b_seen)
        return window.cpu_charge + tail

    def _measurement(
        self, window: Window, now: float, charges: list[float], shared: float
    ) -> Measurement:
        duration = now - window.start
        if not window.ready:
            return Measurement(duration, None, None, None, 1.0, self.policy)
        known = self._known
        return Measurement(
            duration,
            charges[0] if known[0] else None,
            charges[1] if known[1] else None,
            charges[2] if known[2] else None,
            duration / shared if shared > 0 else 1.0,
            self.policy,
            charges[3] if len(charges) > 3 and known[0] else None,
        )

    def _advance(self, now: float) -> None:
        last = self._t
        if last is None or now <= last:
            return
        self._t = now
        if self._n:
            self._b += (now - last) / self._n
            self._busy_time += now - last
        else:
            self._idle_time += now - last

    # -- sampler path ------------------------------------------------------

    def tick(self, reading: EnergyReading) -> tuple[Fault, ...]:
        """Take a new cumulative reading from the power source.

        Returns what was wrong with the reading, if anything, as (kind,
        detail) pairs for the sampler to log: ``bad_time`` (the reading is
        ignored), ``invalid`` (NaN, infinite or not a number) and ``negative``
        (cumulative joules below 0) for a component (that value is ignored:
        the next valid one covers the gap), ``backwards`` (a counter reset or
        wraparound: that interval's energy is not counted, and the counter is
        followed from its new value).
        """
        at = reading.time
        if not _is_number(at):
            return (("bad_time", f"time={at!r}"),)
        values = (reading.cpu, reading.gpu, reading.ram)
        faults: list[Fault] = []
        with self._lock:
            if self.first_reading is None:
                self.first_reading = reading
            self.last_reading = reading
            if self._t is None:
                self._t = at
            else:
                self._advance(at)
            first = self._last_time is None
            gap = at - self._last_time if self._last_time is not None else 0.0
            self._last_time = at
            shared = self._b - self._tick_b
            idle_time = self._idle_time - self._tick_idle
            # The seconds the integrals advanced since the last tick. A request
            # may have moved them past the reading's own time: the joules are
            # spread over the longer of this span and the readings' gap.
            span = idle_time + self._busy_time - self._tick_busy
            measured_power = [0.0] * _N
            # The power to guess the next tails with: joules over the readings'
            # own gap. Not over `span`, which a late tick can make tiny (a
            # request moved the ledger past this reading's time), giving a
            # power far above anything the source drew.
            drawn = list(self._power)
            for i in range(_N):
                value = values[i]
                if value is None:
                    continue  # not measured
                name = COMPONENTS[i]
                if not _is_number(value):
                    faults.append(("invalid", f"{name}={value!r}"))
                    continue  # no information: the next valid value covers it
                if value < 0:
                    faults.append(("negative", f"{name}={value!r}"))
                    continue
                previous = self._last[i]
                delta = value - previous if previous is not None else 0.0
                if delta > 0 and span > 0 and not math.isfinite(delta / span):
                    faults.append(("invalid", f"{name}={value!r}"))
                    continue
                self._known[i] = True
                self._last[i] = value
                if previous is None or first:  # the first value: a baseline
                    continue
                if delta < 0:  # the counter reset or wrapped around
                    faults.append(("backwards", f"{name}: {previous!r} -> {value!r}"))
                    continue
                self._measured[i] += delta
                drawn[i] = delta / gap if gap > 0 else 0.0
                # Spread over the ledger's span, but never above the power the
                # source drew: after a late tick the span can be far shorter
                # than the reading's gap, and the requests in it would be
                # charged the whole interval. What is left goes unattributed.
                spread = max(span, gap)
                if spread > 0:
                    measured_power[i] = delta / spread
                self._idle[i] += delta - measured_power[i] * span
            if self._cpu_time:
                busy = self._busy_time - self._tick_busy
                self._tick_cpu(measured_power[0], busy, idle_time)
            for i in range(_N):
                p = measured_power[i]
                self._c[i] += p * shared
                if i or not self._cpu_time:
                    # Idle time at the measured power, and the tails that closed
                    # at the guessed power corrected to the measured one.
                    tails = (p - self._power[i]) * self._tails
                    self._idle[i] += p * idle_time + tails
                self._power[i] = drawn[i]
            self._tails = 0.0
            self._tick_b, self._tick_idle = self._b, self._idle_time
            self._tick_t = self._t
            self._tick_busy = self._busy_time
            self._j += 1
            self._ring[self._j % self._ring_size] = (
                self._b,
                tuple(self._c),
                tuple(measured_power),
            )
        return tuple(faults)

    def _tick_cpu(self, power: float, busy: float, idle_time: float) -> None:
        """cpu_time: split the interval's busy CPU joules by CPU time used.

        O(open requests), in the sampler's thread. The joules drawn while
        requests were in flight go to them in proportion to the CPU time each
        used in the interval, the work no request did (event loop, GC) shared
        the same way; if they used none, by time share. The tails of requests
        that closed since the last tick were charged a guess: the difference
        goes to the unattributed account.
        """
        used = {w: _cpu_since(w) for w in self._open}
        total = sum(used.values()) + self._tails_cpu
        b = self._b
        if total > MIN_CPU:
            k = power * busy / total
            for w, seconds in used.items():
                w.cpu_charge += k * seconds
            exact_tails = k * self._tails_cpu
            self._k = k
        else:
            for w in used:
                w.cpu_charge += power * (b - w.b_seen)
            exact_tails = power * self._tails
            self._k = None
        for w in used:
            w.cpu_seen = w.clock.seconds if w.clock is not None else 0.0
            w.b_seen = b
        self._idle[0] += power * idle_time + exact_tails - self._tails_guess
        self._tails_cpu = self._tails_guess = 0.0

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
                power=tuple(self._power),
            )


def _is_number(value: object) -> bool:
    """A finite real number (numpy's included), not a bool."""
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _cpu_since(window: Window) -> float:
    clock = window.clock
    return clock.seconds - window.cpu_seen if clock is not None else 0.0


@dataclass(frozen=True)
class Totals:
    known: tuple[bool, ...]
    attributed: tuple[float, ...]
    unattributed: tuple[float, ...]
    measured: tuple[float, ...]
    power: tuple[float, ...]
