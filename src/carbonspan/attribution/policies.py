"""Attribution policies: how a tick's measured joules are split between requests.

    ledger = Ledger(CpuTime())          # or TimeShare(), the default
    POLICIES["cpu_time"]                # the class, by its setting's name

The ledger (see `carbonspan.attribution.ledger`) measures, for every
interval between two
ticks, the joules each component drew and how long requests were in flight,
and keeps each request's shared time. A policy decides the rest:

- how much of an interval was idle power, which no request is charged for
  (learned by a `PowerModel` per component);
- what a request closing before the next tick is charged for its tail, a
  guess that the next tick corrects into the unattributed account;
- for `cpu_time`, how the CPU joules are split by CPU time instead of time.

A policy is an object given to the ledger, which calls it under its lock;
the `attribution` setting names one in `POLICIES`, as the OpenTelemetry SDK
names its samplers in the environment.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Protocol

from carbonspan.attribution.estimator import PowerModel, Ratio
from carbonspan.power.source import COMPONENTS

if TYPE_CHECKING:
    from carbonspan.attribution.cpu_clock import CpuClock
    from carbonspan.attribution.window import Window

#: Below this many CPU seconds in an interval, cpu_time splits by time: less
#: than the clocks resolve, and joules per CPU second would be meaningless.
MIN_CPU = 1e-6
#: How strongly the busy power guides the first joules-per-CPU-second guess,
#: in CPU seconds: a few requests' worth of CPU outweigh it.
CPU_PRIOR = 0.005


class Interval(NamedTuple):
    """One component's interval between two ticks, as the ledger measured it."""

    power: float  # J per shared second while requests were in flight
    busy_joules: float  # the joules drawn while requests were in flight
    tails: float  # shared seconds of the requests that closed during it
    guessed: float  # what those requests were charged for them (J)
    b: float  # the shared-time integral at the tick


class AttributionPolicy(Protocol):
    """What the ledger asks of a policy. Every call is made under its lock.
    `label`, `opened`, `resumed` and `closed` are called for `timed`
    policies only."""

    name: str
    timed: bool  # whether each request needs a CPU clock
    #: The components the policy charges itself; the ledger charges the
    #: others by time share.
    custom: frozenset[str]

    def label(self, window: Window) -> str:
        """The policy that charged `window` (its span's `codecarbon.attribution`)."""
        ...

    def opened(self, window: Window, clock: CpuClock | None) -> None:
        """A request opened `window`; `clock` counts its CPU time, if timed."""
        ...

    def resumed(self, window: Window) -> None:
        """`window` is in flight again after a wait on its client."""
        ...

    def closed(self, window: Window) -> None:
        """`window` closed (or paused); its tail since the last tick awaits
        the next one."""
        ...

    def reset(self) -> None:
        """Forget everything learned and every window (after a fork)."""
        ...

    def charge(
        self, name: str, window: Window, measured: float, tail: float, rate: float
    ) -> tuple[float, float] | None:
        """What `window` is charged on a `custom` component so far, and how
        much of that is a guess; None if no guess can be made yet.

        `measured` is its time share of the ended intervals, `tail` its shared
        seconds since the last tick, `rate` the watts time share would guess
        the tail with.
        """
        ...

    def rate(self, name: str) -> float | None:
        """Watts to guess the tail of a request that began after the last
        tick with; None until a guess can be made."""
        ...

    def prior(self, name: str, watts: float) -> None:
        """The source's own estimate of `name`'s power while requests run."""
        ...

    def idle_joules(self, name: str, idle: float, busy: float, joules: float) -> float:
        """Learn from an interval; the part of its joules that was idle power."""
        ...

    def settle(self, name: str, interval: Interval) -> float:
        """End an interval: returns the correction, for the unattributed
        account, of what the tails that closed during it were guessed."""
        ...


class TimeShare:
    """Each request in flight is charged P(t)/n(t): its share of the time."""

    name = "time_share"
    timed = False  # needs no CPU clock per request
    custom: frozenset[str] = frozenset()

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.models = {name: PowerModel() for name in COMPONENTS}

    def label(self, window: Window) -> str:
        return self.name

    def opened(self, window: Window, clock: CpuClock | None) -> None:
        pass

    def resumed(self, window: Window) -> None:
        pass

    def closed(self, window: Window) -> None:
        pass

    def rate(self, name: str) -> float | None:
        """The learned busy power. (The ledger guesses the tail of a request
        in flight at the last tick at what requests drew in that interval.)"""
        return self.models[name].busy

    def charge(
        self, name: str, window: Window, measured: float, tail: float, rate: float
    ) -> tuple[float, float] | None:
        guess = rate * tail
        return measured + guess, guess

    def prior(self, name: str, watts: float) -> None:
        self.models[name].prior(watts)

    def idle_joules(self, name: str, idle: float, busy: float, joules: float) -> float:
        return self.models[name].observe(idle, busy, joules)

    def settle(self, name: str, interval: Interval) -> float:
        return interval.power * interval.tails - interval.guessed


class _CpuWindow:
    """cpu_time's state of one open request."""

    __slots__ = ("b_seen", "charge", "clock", "cpu_seen", "last")

    def __init__(self, clock: CpuClock | None, b0: float, fresh: bool) -> None:
        self.clock = clock
        # A new request's clock that has counted nothing yet: its CPU since
        # it began is all its own (spares reading the running step's clock).
        fresh = fresh and (clock is None or clock.fresh)
        self.cpu_seen = 0.0 if clock is None or fresh else clock.seconds
        self.b_seen = b0  # the shared-time integral at the last tick
        self.charge = 0.0  # CPU joules of the intervals that have ended
        self.last: float | None = None  # the clock at its last read

    def seen(self) -> float:
        """The request's CPU seconds so far (0 without a clock)."""
        clock = self.clock
        return clock.seconds if clock is not None else 0.0

    def used(self) -> float:
        """CPU seconds since the last tick (and the clock read, kept)."""
        seen = self.last = self.seen()
        return seen - self.cpu_seen


class CpuTime(TimeShare):
    """CPU joules by the CPU time each request used; RAM and GPU by time share.

    At each tick the interval's busy CPU joules go to the requests in flight
    in proportion to the CPU seconds each used; the CPU no request used (the
    event loop, the GC) is shared the same way, and if the requests used none
    it is split by time. A request without a clock (outside asyncio) uses no
    CPU seconds here, and is labelled `time_share`. O(open requests) a tick,
    in the sampler's thread.
    """

    name = "cpu_time"
    timed = True
    custom = frozenset(("cpu",))

    def reset(self) -> None:
        super().reset()
        self._open: dict[Window, _CpuWindow] = {}
        self._tails_cpu = 0.0  # CPU seconds of tails closed since the last tick
        self._joules_per_cpu = Ratio(memory=5.0)
        #: J per request CPU second to guess tails with; None until CPU busy
        #: power is known. Changes only where the model learns (settle, prior).
        self._per_cpu: float | None = None

    def label(self, window: Window) -> str:
        state = window.state
        if isinstance(state, _CpuWindow) and state.clock is not None:
            return self.name
        return TimeShare.name

    def opened(self, window: Window, clock: CpuClock | None) -> None:
        self._track(window, _CpuWindow(clock, window.b0, fresh=True))

    def resumed(self, window: Window) -> None:
        # Its earlier stretches' charges are the ledger's (`Stretches`): the
        # state starts again from its clock as it reads now.
        state = window.state
        clock = state.clock if isinstance(state, _CpuWindow) else None
        self._track(window, _CpuWindow(clock, window.b0, fresh=False))

    def _track(self, window: Window, state: _CpuWindow) -> None:
        window.state = state
        self._open[window] = state

    def closed(self, window: Window) -> None:
        state = self._open.pop(window, None)
        if state is not None:
            # Its clock as charged a moment ago, when the ledger priced its
            # tail (a read of a running step is a system call): what it counts
            # after its window closed is not its own.
            seen = state.last if state.last is not None else state.seen()
            self._tails_cpu += seen - state.cpu_seen

    def charge(
        self, name: str, window: Window, measured: float, tail: float, rate: float
    ) -> tuple[float, float] | None:
        state = window.state
        if not isinstance(state, _CpuWindow):
            return super().charge(name, window, measured, tail, rate)
        per_cpu = self._per_cpu
        if per_cpu is None:
            return None
        guess = per_cpu * state.used() if state.clock is not None else rate * tail
        return state.charge + guess, guess

    def _learned(self) -> None:
        busy = self.models["cpu"].busy
        self._per_cpu = (
            None if busy is None else self._joules_per_cpu.value(busy, CPU_PRIOR)
        )

    def prior(self, name: str, watts: float) -> None:
        super().prior(name, watts)
        if name == "cpu":
            self._learned()

    def settle(self, name: str, interval: Interval) -> float:
        if name != "cpu":
            return super().settle(name, interval)
        power, b = interval.power, interval.b
        busy_joules = interval.busy_joules
        # Each clock read once: what it counted since is the next interval's.
        seen = {state: state.seen() for state in self._open.values()}
        used = {state: now - state.cpu_seen for state, now in seen.items()}
        tails_cpu, self._tails_cpu = self._tails_cpu, 0.0
        total = sum(used.values()) + tails_cpu
        if total > MIN_CPU:
            k = busy_joules / total
            for state, seconds in used.items():
                state.charge += k * seconds
            exact = k * tails_cpu
            self._joules_per_cpu.observe(total, busy_joules)
        else:  # no request used measurable CPU: by time share
            for state in used:
                state.charge += power * (b - state.b_seen)
            exact = power * interval.tails
        for state, now in seen.items():
            state.cpu_seen = now
            state.b_seen = b
        self._learned()
        return exact - interval.guessed


POLICIES: dict[str, type[AttributionPolicy]] = {
    TimeShare.name: TimeShare,
    CpuTime.name: CpuTime,
}
