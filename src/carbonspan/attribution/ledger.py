"""The attribution ledger: splits measured energy between concurrent requests.

With n(t) requests in flight, the ledger integrates B(t) = integral of 1/n ds
(a request open on [b, e] holds B(e) - B(b) seconds of shared time) and, per
component, C = sum of P_j x (B_j - B_{j-1}) over the sampler's ticks, P_j
being the interval's busy power; a ring of the last ticks (`ticks.TickRing`)
prices any window in O(1). A request still open at a tick gets the interval's
measured joules; only the tail after the last tick is a guess (its policy's,
`policies`), corrected into the unattributed account at the next tick, so
that at every tick

    closed requests' J + open requests' J + unattributed J == measured J

exactly. docs/attribution.md derives it.
"""

from __future__ import annotations

import threading
from itertools import takewhile
from typing import TYPE_CHECKING

from carbonspan.attribution.measurement import Measurement
from carbonspan.attribution.policies import AttributionPolicy, Interval, TimeShare
from carbonspan.attribution.readings import Fault, ReadingDeltas
from carbonspan.attribution.ticks import TickRing
from carbonspan.attribution.totals import Times, Totals
from carbonspan.attribution.window import ZERO, Stretches, Window, measure
from carbonspan.numbers import is_finite
from carbonspan.power.source import COMPONENTS, EnergyReading

if TYPE_CHECKING:
    from carbonspan.attribution.cpu_clock import CpuClock

#: Ticks kept for windows still open: 8192 ticks is 13.6 min at 0.1 s.
RING = 8192


class Ledger:
    """Running integrals of shared time and measured power, ticked by the sampler."""

    def __init__(
        self, policy: AttributionPolicy | None = None, ring: int = RING
    ) -> None:
        self.policy: AttributionPolicy = policy if policy is not None else TimeShare()
        #: Whether the policy keeps per-window state (a CPU clock per request).
        self._timed = self.policy.timed
        self._ring_size = ring
        self.reset()

    def reset(self) -> None:
        """Forget everything (used after fork: the parent's requests are not ours)."""
        self._lock = threading.Lock()
        self.policy.reset()
        self._t: float | None = None  # last instant the integrals reach
        self._n = 0
        self._b = 0.0  # B(t)
        self._idle_time = self._busy_time = 0.0  # s with nothing / some in flight
        # Shared seconds of closed windows: attributed, and not (read by `times`).
        self._closed_shared = [0.0, 0.0]
        self._tick_idle = self._tick_busy = 0.0  # the two at the last tick
        self._ring = TickRing(self._ring_size, self.policy)
        self._tails = 0.0  # shared time of tails closed since the last tick
        self._guessed = dict(ZERO)  # what those tails were charged, per component
        self._readings = ReadingDeltas()
        self._known = self._readings.known
        self._unattributed = dict(ZERO)  # J
        self._attributed = dict(ZERO)  # closed, attributed J
        self._after = dict(ZERO)  # the part of it drawn after the responses
        self._measured = self._readings.measured  # sum of the valid deltas
        #: When the first valid reading and the last were taken (monotonic s).
        self.first_time: float | None = None
        self.last_time: float | None = None
        self._windows: dict[Window, None] = {}  # open, oldest first
        self._open_at_tick = dict(ZERO)  # J held by open windows at the last tick

    def open(self, now: float, clock: CpuClock | None = None) -> Window:
        """A request starts. `clock.seconds`, if given, is its CPU time."""
        with self._lock:
            self._advance(now)
            self._n += 1
            ring = self._ring
            window = Window(now, self._b, ring.j, self._t is not None, ring.last())
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
                    past.restart(now)
                charges, shared, shared_cpu = past.so_far()
            # What a request reports no figure for (opened before the first
            # reading, or excluded) counts as unattributed.
            account = (
                self._attributed if attributed and window.ready else self._unattributed
            )
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
        return measure(window, now, charges, shared, shared_cpu, label)

    def peek(self, window: Window, now: float) -> Measurement:
        """What `window` has been charged so far, without closing it."""
        with self._lock:
            self._advance(now)
            past = window.past
            if past is not None and past.paused_since is not None:
                charges, shared, shared_cpu = past.so_far()
            else:
                charges, _, shared_cpu = self._ring.charges(window, self._b)
                shared = self._b - window.b0
                if past is not None:
                    charges, shared, shared_cpu = past.plus(charges, shared, shared_cpu)
            label = self.policy.label(window) if self._timed else self.policy.name
        return measure(window, now, charges, shared, shared_cpu, label)

    def pause(self, window: Window, now: float) -> None:
        """The request waits on its client (a body, a slow reader): until
        `resume` it is charged nothing and dilutes no other request's share."""
        with self._lock:
            past = window.past
            if past is None:
                past = window.past = Stretches()
            elif past.paused_since is not None:
                return
            self._advance(now)
            charges, cpu = self._leave(window)
            past.stop(charges, self._b - window.b0, cpu, now)

    def resume(self, window: Window, now: float) -> None:
        """The request has what it waited for: it is in flight again."""
        with self._lock:
            past = window.past
            if past is None or past.paused_since is None:
                return
            self._advance(now)
            past.restart(now)
            self._n += 1
            window.b0, window.j0 = self._b, self._ring.j
            window.last_tick = self._ring.last()
            if self._timed:
                self.policy.resumed(window)

    def _leave(self, window: Window) -> tuple[dict[str, float | None], float | None]:
        """Take `window` out of n(t), under the lock: its charges since it last
        (re)entered, and the CPU joules of time share."""
        self._n -= 1
        ring = self._ring
        charges, guesses, shared_cpu = ring.charges(window, self._b)
        if self._timed:
            self.policy.closed(window)
        # Its tail: its shared time since the last tick (or since it entered).
        self._tails += self._b - (window.b0 if window.j0 == ring.j else ring.tick_b)
        for name, guess in guesses.items():
            self._guessed[name] += guess
        return charges, shared_cpu

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

    # -- the sampler's path (above, the requests'; below, the books) -------

    def prior(self, busy_watts: dict[str, float]) -> None:
        """The source's estimate of each component's power while requests run."""
        with self._lock:
            for name, watts in busy_watts.items():
                self.policy.prior(name, watts)
            self._ring.rates_changed()

    def tick(self, reading: EnergyReading) -> tuple[Fault, ...]:
        """Take a new cumulative reading from the power source. Returns what
        was wrong with it, as (kind, detail) pairs for the sampler to log:
        ``bad_time`` (the reading is ignored), or a component's ``invalid``,
        ``negative`` or ``backwards`` value (see `ReadingDeltas.delta`)."""
        at = reading.time
        if not is_finite(at):
            return (("bad_time", f"time={at!r}"),)
        faults: list[Fault] = []
        with self._lock:
            if self.first_time is None:
                self.first_time = at
            if self._t is None:
                self._t = at
            else:
                self._advance(at)
            first = self.last_time is None
            gap = at - self.last_time if self.last_time is not None else 0.0
            self.last_time = at
            shared = self._b - self._ring.tick_b
            idle = self._idle_time - self._tick_idle
            busy = self._busy_time - self._tick_busy
            # The seconds the integrals advanced since the last tick. A request
            # may have moved them past the reading's own time (a late tick):
            # the joules are spread over the longer of this span and the
            # readings' gap, and what does not fit the span is unattributed.
            span = idle + busy
            spread = max(span, gap)
            powers: dict[str, float] = {}
            ring, readings, guessed, b = (
                self._ring,
                self._readings,
                self._guessed,
                self._b,
            )
            for name in COMPONENTS:
                drawn = readings.delta(
                    name, getattr(reading, name), at, gap, first, faults
                )
                if drawn is None:
                    continue
                delta, drawn_over = drawn
                power = ring.busy_power(name, delta, drawn_over, idle, busy, spread)
                powers[name] = power
                self._unattributed[name] += delta - power * busy
                done = Interval(power, power * busy, self._tails, guessed[name], b)
                self._unattributed[name] += self.policy.settle(name, done)
                guessed[name] = 0.0
            self._tails = 0.0
            measured, attributed = self._measured, self._attributed
            for name in COMPONENTS:  # what the invariant leaves to open windows
                left = measured[name] - attributed[name] - self._unattributed[name]
                self._open_at_tick[name] = left
            ring.tick(self._b, powers, shared, self._known)
            self._tick_idle, self._tick_busy = self._idle_time, self._busy_time
        return tuple(faults)

    @property
    def in_flight(self) -> int:  # requests open now
        return self._n

    def open_since(self, before: float) -> int:
        """How many requests still open began before `before` (monotonic s)."""
        with self._lock:  # oldest first
            return sum(1 for _ in takewhile(lambda w: w.start < before, self._windows))

    def times(self) -> Times:
        """Seconds integrated since the first reading."""
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
            return Totals(
                known=tuple(self._known.values()),
                attributed=tuple(self._attributed.values()),
                unattributed=tuple(self._unattributed.values()),
                measured=tuple(self._measured.values()),
                power=tuple(self._readings.drawn.values()),
                open=tuple(self._open_at_tick.values()),
                after_response=tuple(self._after.values()),
            )
