"""The attribution ledger: splits measured energy between concurrent requests.

At any instant the process draws power P(t) and n(t) requests are in flight.
The ledger keeps one running integral, B(t) = integral of 1/n(s) ds over the
instants when n(s) > 0, so a request open on [b, e] holds B(e) - B(b) seconds
of "shared time" (a request alone holds its duration).

Power comes from the sampler's ticks: for each interval between two ticks the
source says how many joules each component drew. The policy (see
`carbonspan.policies`) says how many of them were idle power, drawn while no
request was in flight; the rest was drawn while requests were, at a mean of
P_j watts over those busy seconds. A request is charged

    sum over the intervals j it overlaps of P_j * (its shared time in j)

which the ledger gets in O(1) from a second running integral per component,
C_j = sum of P_i * (B_i - B_{i-1}) over the ticks so far, and a bounded ring of
the last ticks' (B_j, C_j, P_j). A request still open at a tick therefore gets
the interval's *measured* joules, not a guess.

Only the tail of a request after the last tick is unknown when it closes: the
policy guesses it from the power it learned requests draw. At the next tick
the difference between that guess and the measured joules goes to the
unattributed account, so that at every tick

    sum of closed requests' J + open requests' J + unattributed J == measured J

exactly. The unattributed account (idle power, excluded requests, those
corrections) can dip when power falls; every request's charge is >= 0.
"""

from __future__ import annotations

import math
import numbers
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from carbonspan import policies
from carbonspan.policies import Interval, TimeShare
from carbonspan.source import COMPONENTS, EnergyReading, Measurement

if TYPE_CHECKING:
    from carbonspan.cputime import CpuClock

#: Ticks kept for windows still open: 8192 ticks is 13.6 min at 0.1 s.
RING = 8192
#: An interval's busy power is pulled towards the learned one as if that had
#: been seen for this fraction of the interval's idle seconds: a few busy
#: milliseconds in an idle interval say little, a busy interval says it all.
SHRINK = 0.05
_ZERO = dict.fromkeys(COMPONENTS, 0.0)
_UNKNOWN: dict[str, float | None] = dict.fromkeys(COMPONENTS)
# A tick in the ring: B_j, and C_j and P_j per component.
_Tick = tuple[float, dict[str, float], dict[str, float]]
#: What was wrong with a reading: (kind, detail), see `Ledger.tick`.
Fault = tuple[str, str]


class Window:
    """An open request: where the integrals stood when it (last) resumed."""

    __slots__ = ("b0", "j0", "last_tick", "past", "ready", "start", "state")

    def __init__(
        self, start: float, b0: float, j0: int, ready: bool, last_tick: _Tick | None
    ) -> None:
        self.start = start
        self.b0 = b0  # B(b)
        self.j0 = j0  # the last tick before b
        self.ready = ready
        self.last_tick = last_tick  # that tick's (B, C, P), in case it is evicted
        self.state: Any = None  # the policy's own, if it keeps any
        self.past: _Past | None = None  # set once the request has waited


class _Past:
    """What a window's stretches before its last wait were charged."""

    __slots__ = ("charges", "paused_since", "shared", "shared_cpu", "waited")

    def __init__(self) -> None:
        self.charges: dict[str, float | None] = dict(_UNKNOWN)
        self.shared = 0.0  # their shared seconds
        self.shared_cpu: float | None = None  # their time-share CPU joules
        self.waited = 0.0  # seconds spent waiting, out of n(t)
        self.paused_since: float | None = None  # waiting since, if it is

    def add(
        self, charges: dict[str, float | None], shared: float, cpu: float | None
    ) -> None:
        mine = self.charges
        for name, joules in charges.items():
            if joules is not None:
                mine[name] = joules + (mine[name] or 0.0)
        self.shared += shared
        if cpu is not None:
            self.shared_cpu = cpu + (self.shared_cpu or 0.0)


class Ledger:
    """Running integrals of shared time and measured power, ticked by the sampler."""

    def __init__(self, ring: int = RING, policy: str = "time_share") -> None:
        policies.make(policy)  # a clear error before anything else
        self._ring_size = ring
        self.policy_name = policy
        self.reset()

    def reset(self) -> None:
        """Forget everything (used after fork: the parent's requests are not ours)."""
        self._lock = threading.Lock()
        self.policy: TimeShare = policies.make(self.policy_name)
        self._timed = self.policy.timed
        self._t: float | None = None  # last instant the integrals reach
        self._n = 0
        self._b = 0.0  # B(t)
        self._idle_time = 0.0  # seconds with nothing in flight
        self._busy_time = 0.0  # seconds with something in flight
        # Shared seconds of closed windows: attributed, and not (read by `times`).
        self._closed_shared = [0.0, 0.0]
        self._tick_busy = 0.0  # busy seconds at the last tick
        self._j = -1  # index of the last tick
        self._tick_b = 0.0  # B at the last tick
        self._tick_idle = 0.0  # idle seconds at the last tick
        self._c = dict(_ZERO)  # C at the last tick, per component
        self._ring: list[_Tick | None] = [None] * self._ring_size
        self._tails = 0.0  # shared time of tails closed since the last tick
        self._guessed = dict(_ZERO)  # what those tails were charged, per component
        self._known: dict[str, bool] = dict.fromkeys(COMPONENTS, False)
        self._names: tuple[str, ...] = ()  # the known components
        # Watts to guess a tail with, per component (None: no guess yet).
        self._rates: dict[str, float | None] = dict.fromkeys(COMPONENTS)
        self._tail_rates: tuple[tuple[str, float], ...] = ()  # known, with a rate
        self._idle = dict(_ZERO)  # unattributed J
        self._attributed = dict(_ZERO)  # closed, attributed J
        self._after = dict(_ZERO)  # the part of it drawn after the responses
        self._measured = dict(_ZERO)  # sum of the source's valid deltas
        self._drawn = dict(_ZERO)  # the last interval's mean power (W)
        self._last: dict[str, float | None] = dict.fromkeys(COMPONENTS)
        self._last_at: dict[str, float | None] = dict.fromkeys(COMPONENTS)
        self._last_time: float | None = None
        self._windows: dict[Window, None] = {}  # open, oldest first
        self._open_at_tick = dict(_ZERO)  # J held by open windows at the last tick
        self.first_reading: EnergyReading | None = None
        self.last_reading: EnergyReading | None = None

    # -- request path ------------------------------------------------------

    def open(self, now: float, clock: CpuClock | None = None) -> Window:
        """A request starts. `clock.seconds`, if given, is its CPU time."""
        with self._lock:
            self._advance(now)
            self._n += 1
            j = self._j
            last_tick = self._ring[j % self._ring_size] if j >= 0 else None
            window = Window(now, self._b, j, self._t is not None, last_tick)
            self._windows[window] = None
            if self._timed:  # only a policy with clocks keeps per-window state
                self.policy.opened(window, clock)
            return window

    def close(
        self,
        window: Window,
        now: float,
        attributed: bool = True,
        reported: Measurement | None = None,
    ) -> Measurement:
        """The request is over. If its figures were `reported` earlier (on its
        span, before its response ended), what it drew since (work left
        behind, such as background tasks) is attributed too, and counted
        apart in `Totals.after_response`: the spans plus that add up exactly
        to the attributed energy."""
        with self._lock:
            self._advance(now)
            self._windows.pop(window, None)
            past = window.past
            if past is None:
                charges, shared_cpu = self._leave(window)
                shared = self._b - window.b0
            else:
                if past.paused_since is None:
                    last, cpu = self._leave(window)
                    past.add(last, self._b - window.b0, cpu)
                else:  # closed while waiting
                    past.waited += now - past.paused_since
                    past.paused_since = None
                charges, shared, shared_cpu = past.charges, past.shared, past.shared_cpu
            # What a request reports no figure for (opened before the first
            # reading, or excluded) counts as unattributed.
            account = self._attributed if attributed and window.ready else self._idle
            # Its shared time, for the embodied emissions: attributed where
            # the request reports figures.
            figures = account is self._attributed and (
                charges["cpu"] is not None
                or charges["gpu"] is not None
                or charges["ram"] is not None
            )
            self._closed_shared[0 if figures else 1] += shared
            for name, joules in charges.items():
                if joules is not None:
                    account[name] += joules
                    if reported is not None and account is self._attributed:
                        self._after[name] += joules - (getattr(reported, name) or 0.0)
            label = self.policy.label(window) if self._timed else self.policy.name
        return self._measurement(window, now, charges, shared, shared_cpu, label)

    def peek(self, window: Window, now: float) -> Measurement:
        """What `window` has been charged so far, without closing it."""
        with self._lock:
            self._advance(now)
            past = window.past
            if past is not None and past.paused_since is not None:
                charges, shared, shared_cpu = past.charges, past.shared, past.shared_cpu
            else:
                charges, _, shared_cpu = self._charges(window)
                shared = self._b - window.b0
                if past is not None:
                    total = _Past()
                    total.add(past.charges, past.shared, past.shared_cpu)
                    total.add(charges, shared, shared_cpu)
                    charges, shared = total.charges, total.shared
                    shared_cpu = total.shared_cpu
            label = self.policy.label(window) if self._timed else self.policy.name
        return self._measurement(window, now, charges, shared, shared_cpu, label)

    def pause(self, window: Window, now: float) -> None:
        """The request waits on its client (a body to arrive, a slow reader):
        until `resume`, it is not in flight, so it is charged nothing and
        dilutes no other request's share."""
        with self._lock:
            past = window.past
            if past is None:
                past = window.past = _Past()
            elif past.paused_since is not None:
                return
            self._advance(now)
            charges, cpu = self._leave(window)
            past.add(charges, self._b - window.b0, cpu)
            past.paused_since = now

    def resume(self, window: Window, now: float) -> None:
        """The request has what it waited for: it is in flight again."""
        with self._lock:
            past = window.past
            if past is None or past.paused_since is None:
                return
            self._advance(now)
            past.waited += now - past.paused_since
            past.paused_since = None
            self._n += 1
            j = self._j
            window.b0, window.j0 = self._b, j
            window.last_tick = self._ring[j % self._ring_size] if j >= 0 else None
            if self._timed:
                state = window.state
                self.policy.opened(window, getattr(state, "clock", None))

    def _leave(self, window: Window) -> tuple[dict[str, float | None], float | None]:
        """Take `window` out of n(t): what it was charged since it last
        (re)entered, and the CPU joules of time share. Under the lock."""
        self._n -= 1
        charges, guesses, shared_cpu = self._charges(window)
        if self._timed:
            self.policy.closed(window)
        if window.j0 == self._j:
            self._tails += self._b - window.b0
        else:
            self._tails += self._b - self._tick_b
        for name, guess in guesses.items():
            self._guessed[name] += guess
        return charges, shared_cpu

    def _charges(
        self, window: Window
    ) -> tuple[dict[str, float | None], dict[str, float], float | None]:
        """Per component: the charge (None where unknown) and its guessed part;
        and the CPU joules of time share, which the CPU power comes from."""
        b, j0 = self._b, window.j0
        charges: dict[str, float | None] = dict(_UNKNOWN)
        guesses: dict[str, float] = {}
        if j0 == self._j and not self.policy.custom:
            # No tick since it opened: all of it is the tail (the common case
            # of a short request, so it gets its own few lines).
            tail = b - window.b0
            for name, watts in self._tail_rates:
                charges[name] = guesses[name] = watts * tail
            return charges, guesses, None
        if j0 == self._j:
            tail = b - window.b0
            head, c1, p1 = 0.0, self._c, _ZERO
            last: dict[str, float] | None = None
        else:
            tail = b - self._tick_b
            # It was in flight during the last interval: what requests drew
            # then is the best guess of what it draws now.
            last = self._ring[self._j % self._ring_size][2]  # type: ignore[index]
            if window.ready and self._j - j0 <= self._ring_size:
                b1, c1, p1 = self._ring[(j0 + 1) % self._ring_size]  # type: ignore[misc]
                head = b1 - window.b0
            elif window.ready and window.last_tick is not None:
                # Open so long that the tick after it opened is forgotten: its
                # first interval is charged at the power known when it opened.
                b1, c1, p1 = window.last_tick
                head = b1 - window.b0  # <= 0: takes back the C before it opened
            else:  # opened before the first tick: C counts from that tick
                head, c1, p1 = 0.0, _ZERO, _ZERO
        c, rates, custom = self._c, self._rates, self.policy.custom
        shared_cpu = None
        for name in self._names:  # the components measured so far
            measured = p1.get(name, 0.0) * head + c[name] - c1[name]
            rate = last.get(name) if last is not None else None
            if rate is None:
                rate = rates[name]
                if rate is None:
                    continue
            guess = rate * tail
            if name in custom:
                shared_cpu = measured + guess  # what time share would charge
                charged = self.policy.charge(name, window, measured, tail, rate)
                if charged is not None:
                    charges[name], guesses[name] = charged
            else:  # (>= 0: C differences can round a hair below zero)
                charges[name], guesses[name] = max(measured + guess, 0.0), guess
        return charges, guesses, shared_cpu

    def _rates_changed(self) -> None:
        rates = self._rates = {name: self.policy.rate(name) for name in COMPONENTS}
        self._tail_rates = tuple(
            (name, rate) for name in self._names if (rate := rates[name]) is not None
        )

    def _measurement(
        self,
        window: Window,
        now: float,
        charges: dict[str, float | None],
        shared: float,
        shared_cpu: float | None,
        label: str,
    ) -> Measurement:
        duration = now - window.start
        if not window.ready:
            return Measurement(duration, duration, attribution=label)
        past = window.past
        active = duration
        if past is not None:  # the seconds it waited were not in flight
            active -= past.waited
            if past.paused_since is not None:
                active -= now - past.paused_since
        concurrency = active / shared if shared > 0 else 1.0
        cpu, gpu, ram = charges["cpu"], charges["gpu"], charges["ram"]
        # Mean power: its joules times the concurrency over its active
        # seconds. Under cpu_time, CPU power comes from what time share would
        # have charged (`shared_cpu`): the process's power, not its share.
        cpu_w = gpu_w = ram_w = None
        if active > 0:
            per_second = concurrency / active
            if shared_cpu is None:
                shared_cpu = cpu
            if shared_cpu is not None:
                cpu_w = shared_cpu * per_second
            if gpu is not None:
                gpu_w = gpu * per_second
            if ram is not None:
                ram_w = ram * per_second
        return Measurement(
            duration, active, cpu, gpu, ram, concurrency, label, cpu_w, gpu_w, ram_w
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

    def prior(self, busy_watts: dict[str, float]) -> None:
        """The source's estimate of each component's power while requests run."""
        with self._lock:
            for name, watts in busy_watts.items():
                self.policy.prior(name, watts)
            self._rates_changed()

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
            idle = self._idle_time - self._tick_idle
            busy = self._busy_time - self._tick_busy
            # The seconds the integrals advanced since the last tick. A request
            # may have moved them past the reading's own time (a late tick):
            # the joules are spread over the longer of this span and the
            # readings' gap, and what does not fit the span is unattributed.
            span = idle + busy
            spread = max(span, gap)
            powers: dict[str, float] = {}
            for name in COMPONENTS:
                since = self._last_at[name]
                delta = self._delta(name, getattr(reading, name), at, first, faults)
                if delta is None:
                    continue
                # The seconds this delta was drawn over: more than the gap if
                # the component's last values were invalid.
                drawn_over = at - since if since is not None else gap
                self._measured[name] += delta
                self._drawn[name] = delta / drawn_over if drawn_over > 0 else 0.0
                joules = delta * span / spread if spread > 0 else 0.0
                # Learn on the readings' own clock: the idle and busy parts of
                # the span, scaled to the seconds the delta was drawn over.
                scale = drawn_over / span if span > 0 else 0.0
                idle_joules = self.policy.idle_joules(
                    name, idle * scale, busy * scale, delta
                )
                idle_joules *= joules / delta if delta > 0 else 0.0
                # The busy power, pulled towards the learned one (see SHRINK):
                # over a few busy milliseconds the interval's own figure is
                # mostly noise. A measured 0 J stays 0.
                learned = self.policy.rate(name) or 0.0
                busy_joules = joules - idle_joules
                pull = SHRINK * idle
                power = (
                    (busy_joules + learned * pull) / (busy + pull)
                    if busy > 0 and joules > 0
                    else 0.0
                )
                powers[name] = power
                self._c[name] += power * shared
                self._idle[name] += delta - power * busy
                self._idle[name] += self.policy.settle(
                    name,
                    Interval(
                        power, power * busy, self._tails, self._guessed[name], self._b
                    ),
                )
                self._guessed[name] = 0.0
            self._tails = 0.0
            for name in COMPONENTS:  # what the invariant leaves to open windows
                self._open_at_tick[name] = (
                    self._measured[name] - self._attributed[name] - self._idle[name]
                )
            self._names = tuple(name for name in COMPONENTS if self._known[name])
            self._rates_changed()
            self._tick_b, self._tick_idle = self._b, self._idle_time
            self._tick_busy = self._busy_time
            self._j += 1
            self._ring[self._j % self._ring_size] = (self._b, dict(self._c), powers)
        return tuple(faults)

    def _delta(
        self,
        name: str,
        value: float | None,
        at: float,
        first: bool,
        faults: list[Fault],
    ) -> float | None:
        """The joules `name` drew since its last valid value, if any."""
        if value is None:
            return None  # not measured
        if not _is_number(value):
            faults.append(("invalid", f"{name}={value!r}"))
            return None  # no information: the next valid value covers it
        if value < 0:
            faults.append(("negative", f"{name}={value!r}"))
            return None
        previous, since = self._last[name], self._last_at[name]
        self._last[name], self._last_at[name] = value, at
        if previous is None or first:  # the first value: a baseline
            return None
        delta = value - previous
        if delta < 0:  # the counter reset or wrapped around
            faults.append(("backwards", f"{name}: {previous!r} -> {value!r}"))
            return None
        if not math.isfinite(delta):
            faults.append(("invalid", f"{name}={value!r}"))
            self._last[name], self._last_at[name] = previous, since
            return None
        self._known[name] = True
        return delta

    # -- introspection -----------------------------------------------------

    @property
    def in_flight(self) -> int:
        return self._n

    def open_since(self, before: float) -> int:
        """How many requests still open began before `before` (monotonic s)."""
        with self._lock:
            count = 0
            for window in self._windows:  # oldest first
                if window.start >= before:
                    break
                count += 1
            return count

    def times(self) -> Times:
        """Seconds the ledger has integrated since its first reading."""
        with self._lock:
            return Times(
                idle=self._idle_time,
                busy=self._busy_time,
                attributed=self._closed_shared[0],
                unattributed=self._closed_shared[1],
                in_flight=self._n,
            )

    def totals(self) -> Totals:
        """Cumulative joules per component, for metrics and tests."""
        with self._lock:
            known = self._known
            return Totals(
                known=tuple(known[c] for c in COMPONENTS),
                attributed=tuple(self._attributed[c] for c in COMPONENTS),
                unattributed=tuple(self._idle[c] for c in COMPONENTS),
                measured=tuple(self._measured[c] for c in COMPONENTS),
                power=tuple(self._drawn[c] for c in COMPONENTS),
                open=tuple(self._open_at_tick[c] for c in COMPONENTS),
                after_response=tuple(self._after[c] for c in COMPONENTS),
            )


def _is_number(value: object) -> bool:
    """A finite real number (numpy's included), not a bool."""
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


@dataclass(frozen=True)
class Totals:
    known: tuple[bool, ...]
    attributed: tuple[float, ...]
    unattributed: tuple[float, ...]
    measured: tuple[float, ...]
    power: tuple[float, ...]
    #: J held by the requests still open at the last tick: measured -
    #: attributed - unattributed then (the ledger's invariant).
    open: tuple[float, ...] = (0.0, 0.0, 0.0)
    #: The part of `attributed` drawn by requests after their responses had
    #: gone (and their spans ended): `attributed` = their spans' J + this.
    after_response: tuple[float, ...] = (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class Times:
    """Seconds integrated by the ledger: with no request in flight (`idle`),
    with some (`busy`), and the shared time of the windows closed so far,
    charged to requests (`attributed`) or not (`unattributed`: excluded, or
    opened before the first reading). Under time share, the shared time of
    every window, closed or open, adds up to `busy`."""

    idle: float
    busy: float
    attributed: float
    unattributed: float
    in_flight: int
