"""What a window's shared time costs: the ring of the last ticks' integrals,
and the watts that price a request's tail after the last tick.

At each tick j the ring keeps (B_j, C_j, P_j): the shared-time integral, the
running integral C of power times shared time per component, and the busy
power of the interval that ended there. A window that opened after tick j0 is
charged C's growth since its first tick, its head before that tick at that
interval's power, and its tail after the last tick at a guess (see
`carbonspan.attribution.ledger` for the whole algorithm).
"""

from __future__ import annotations

from carbonspan.attribution.policies import AttributionPolicy
from carbonspan.attribution.window import UNKNOWN, ZERO, Tick, Window
from carbonspan.power.source import COMPONENTS

#: An interval's busy power is pulled towards the learned one as if that had
#: been seen for this fraction of the interval's idle seconds: a few busy
#: milliseconds in an idle interval say little, a busy interval says it all.
SHRINK = 0.05


class TickRing:
    """The ring of ticks and the tail rates, under the ledger's lock."""

    def __init__(self, size: int, policy: AttributionPolicy) -> None:
        self.size = size
        self.policy = policy
        self.j = -1  # index of the last tick
        self.tick_b = 0.0  # B at the last tick
        self.c = dict(ZERO)  # C at the last tick, per component
        self.ring: list[Tick | None] = [None] * size
        self.names: tuple[str, ...] = ()  # the components measured so far
        # Watts to guess a tail with, per component (None: no guess yet).
        self.rates: dict[str, float | None] = dict.fromkeys(COMPONENTS)
        self.tail_rates: tuple[tuple[str, float], ...] = ()  # known, with a rate

    def last(self) -> Tick | None:
        """The last tick's (B, C, P), if any."""
        j = self.j
        return self.ring[j % self.size] if j >= 0 else None

    def busy_power(
        self,
        name: str,
        delta: float,
        drawn_over: float,
        idle: float,
        busy: float,
        spread: float,
    ) -> float:
        """W: the busy power of an interval of `idle` and `busy` seconds in
        which `name` drew `delta` joules over `drawn_over` seconds, the part
        of them that fits the interval being the share idle + busy of
        `spread` (see `Ledger.tick`). The policy learns its idle power from
        it first. The busy power is pulled towards the learned one (see
        SHRINK): over a few busy milliseconds the interval's own figure is
        mostly noise. A measured 0 J stays 0."""
        span = idle + busy
        joules = delta * span / spread if spread > 0 else 0.0
        # Learn on the readings' own clock: the idle and busy parts of the
        # span, scaled to the seconds the delta was drawn over.
        scale = drawn_over / span if span > 0 else 0.0
        idle_joules = self.policy.idle_joules(name, idle * scale, busy * scale, delta)
        idle_joules *= joules / delta if delta > 0 else 0.0
        if busy <= 0 or joules <= 0:
            return 0.0
        learned = self.policy.rate(name) or 0.0
        pull = SHRINK * idle
        return (joules - idle_joules + learned * pull) / (busy + pull)

    def tick(
        self, b: float, powers: dict[str, float], shared: float, known: dict[str, bool]
    ) -> None:
        """A tick at B = `b`: the interval's `powers` over its `shared` time."""
        c = self.c
        for name, power in powers.items():
            c[name] += power * shared
        self.names = tuple(name for name in COMPONENTS if known[name])
        self.rates_changed()
        self.tick_b = b
        self.j += 1
        self.ring[self.j % self.size] = (b, dict(c), powers)

    def charges(
        self, window: Window, b: float
    ) -> tuple[dict[str, float | None], dict[str, float], float | None]:
        """Per component: the charge (None where unknown) and its guessed part;
        and the CPU joules of time share, which the CPU power comes from."""
        j0 = window.j0
        charges: dict[str, float | None] = dict(UNKNOWN)
        guesses: dict[str, float] = {}
        custom = self.policy.custom
        shared_cpu = None
        if j0 == self.j:
            # No tick since it opened: all of it is the tail, at the learned
            # rates (the common case of a short request).
            tail = b - window.b0
            for name, watts in self.tail_rates:
                guess = watts * tail
                if name in custom:
                    shared_cpu = guess  # what time share would charge
                    charged = self.policy.charge(name, window, 0.0, tail, watts)
                    if charged is not None:
                        charges[name], guesses[name] = charged
                else:
                    charges[name] = guesses[name] = guess
            return charges, guesses, shared_cpu
        tail = b - self.tick_b
        # It was in flight during the last interval: what requests drew then
        # is the best guess of what it draws now.
        last = self.ring[self.j % self.size][2]  # type: ignore[index]
        if window.ready and self.j - j0 <= self.size:
            b1, c1, p1 = self.ring[(j0 + 1) % self.size]  # type: ignore[misc]
            head = b1 - window.b0
        elif window.ready and window.last_tick is not None:
            # Open so long that the tick after it opened is forgotten: its
            # first interval is charged at the power known when it opened.
            b1, c1, p1 = window.last_tick
            head = b1 - window.b0  # <= 0: takes back the C before it opened
        else:  # opened before the first tick: C counts from that tick
            head, c1, p1 = 0.0, ZERO, ZERO
        c, rates = self.c, self.rates
        for name in self.names:  # the components measured so far
            measured = p1.get(name, 0.0) * head + c[name] - c1[name]
            rate = last.get(name)
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

    def rates_changed(self) -> None:
        """The policy has learned: the watts to guess tails with change."""
        rates = self.rates = {name: self.policy.rate(name) for name in COMPONENTS}
        self.tail_rates = tuple(
            (name, rate) for name in self.names if (rate := rates[name]) is not None
        )
