"""The ledger's arithmetic against the power source's own readings."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carbonspan import EnergyReading, Measurement
from carbonspan.attribution.ledger import Ledger
from carbonspan.attribution.window import Window
from carbonspan.testing import ConstantPowerSource, ScriptedPowerSource
from support.fakes import Clock, Recorded


class Primed:
    """A ledger that has read twice, `first` seconds apart, a source whose
    components draw `watts` (the test turns them: `p.watts["cpu"] = 30.0`),
    on a clock the test moves (`p.clock.now`)."""

    def __init__(self, first: float = 1.0, **watts: float) -> None:
        self.watts = watts
        self.clock = Clock()
        draws = {c: self.draw(c) for c in watts}
        self.source = Recorded(
            ScriptedPowerSource(**draws, resolution=math.inf, clock=self.clock)
        )
        self.ledger = Ledger()
        self.tick()
        self.clock.now += first
        self.tick()

    def draw(self, component: str) -> Callable[[float], float]:
        return lambda _t: self.watts[component]

    def tick(self) -> None:
        self.ledger.tick(self.source.read())

    def open(self, after: float = 0.0) -> Window:
        return self.ledger.open(self.clock.now + after)

    def close(self, window: Window, after: float = 0.0) -> Measurement:
        return self.ledger.close(window, self.clock.now + after)

    def balanced(self) -> None:
        """Attributed + unattributed CPU joules are what the source counted."""
        assert cpu_books(self.ledger) == pytest.approx(
            measured(self.ledger, self.source)
        )


def cpu_books(ledger: Ledger) -> float:
    """The CPU joules the ledger attributed, and did not."""
    totals = ledger.totals()
    return totals.attributed[0] + totals.unattributed[0]


def measured(ledger: Ledger, source: Recorded, component: str = "cpu") -> float:
    """Joules between the ledger's first and last reading, by the source's own
    numbers."""
    return source.joules(component, ledger.first_time, ledger.last_time)


def test_one_request_alone_gets_the_power_times_its_duration() -> None:
    p = Primed(first=0.1, cpu=10.0)
    m = p.close(p.open(0.02), 0.07)
    assert m.cpu == pytest.approx(0.5)
    assert m.gpu is None and m.ram is None
    assert m.total == pytest.approx(0.5)
    assert m.power("cpu") == pytest.approx(10.0)
    assert m.concurrency == pytest.approx(1.0)


def test_a_measurement_is_a_complete_frozen_dataclass_with_its_units() -> None:
    p = Primed(first=0.1, cpu=10.0, ram=4.0)
    a = p.open(0.01)
    b = p.open(0.03)
    m = p.close(a, 0.05)
    # Every field is set (replace() reads them all) and equal to what the
    # dataclass's own __init__ builds from them.
    assert dataclasses.replace(m) == m
    assert m == Measurement(**dataclasses.asdict(m))
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.cpu = 0.0  # type: ignore[misc]
    # 20 ms alone at 10 W, then 20 ms shared with b: 0.2 + 0.1 J of CPU.
    assert m.duration == pytest.approx(0.04) and m.active == pytest.approx(0.04)
    assert m.cpu == pytest.approx(0.3) and m.ram == pytest.approx(0.12)
    assert m.gpu is None and m.gpu_power is None
    assert m.total == pytest.approx(0.42)
    assert m.concurrency == pytest.approx(0.04 / 0.03)
    # The process's power, not the request's share of it.
    assert m.cpu_power == pytest.approx(10.0) and m.power("cpu") == m.cpu_power
    assert m.ram_power == pytest.approx(4.0)
    p.close(b, 0.06)


def test_overlapping_requests_split_the_power() -> None:
    p = Primed(cpu=12.0, ram=6.0)
    a = p.open()  # alone for 1 s, then shares 1 s with b
    b = p.open(1.0)
    ma = p.close(a, 2.0)
    mb = p.close(b, 3.0)  # shares 1 s with a, then alone 1 s
    assert ma.cpu == pytest.approx(12.0 + 6.0)
    assert mb.cpu == pytest.approx(6.0 + 12.0)
    assert ma.ram == pytest.approx(6.0 + 3.0)
    assert ma.concurrency == pytest.approx(2 / 1.5)


def test_power_change_is_corrected_at_the_tick_onto_open_windows() -> None:
    p = Primed(cpu=10.0)  # the ledger now believes 10 W
    w = p.open()
    p.watts["cpu"] = 30.0  # the source jumps; the ledger learns it at the next tick
    p.clock.now += 1.0
    p.tick()
    assert p.close(w).cpu == pytest.approx(30.0)


def test_power_drop_is_taken_back_from_windows_still_open() -> None:
    p = Primed(first=0.1, cpu=10.0)  # believes 10 W
    p.watts["cpu"] = 0.0
    w = p.open(0.05)  # runs entirely at 0 W
    p.clock.now += 0.1
    p.tick()  # learns 0 W while the window is open
    assert p.close(w, 0.2).cpu == 0.0
    p.balanced()


def test_power_drop_after_a_window_closed_stays_its_residual() -> None:
    p = Primed(cpu=30.0)  # believes 30 W
    w = p.open()
    p.watts["cpu"] = 10.0
    m = p.close(w, 0.5)  # closes before the tick: 30 W it is
    assert m.cpu == pytest.approx(15.0)
    p.clock.now += 1.0
    p.tick()
    # The correction lands in the unattributed account; the sum is exact.
    assert p.ledger.totals().attributed[0] == pytest.approx(15.0)
    p.balanced()


def test_a_window_never_reports_less_than_zero() -> None:
    p = Primed(cpu=100.0)  # believes 100 W
    early = p.open()
    p.watts["cpu"] = 0.0
    late = p.open(0.9)  # opens just before a large correction
    p.clock.now += 1.0
    p.tick()
    assert p.close(late, 0.1).cpu == 0.0
    assert p.close(early, 0.1).cpu == 0.0
    p.balanced()


def test_components_not_measured_stay_none_and_nan_is_ignored() -> None:
    ledger = Ledger()
    ledger.tick(EnergyReading(time=1.0, cpu=0.0, gpu=None, ram=0.0))
    ledger.tick(EnergyReading(time=2.0, cpu=5.0, gpu=None, ram=float("nan")))
    ledger.tick(EnergyReading(time=3.0, cpu=10.0, gpu=None, ram=2.0))
    w = ledger.open(3.0)
    m = ledger.close(w, 4.0)
    assert m.gpu is None
    assert m.cpu == pytest.approx(5.0)
    assert m.ram is not None and m.ram >= 0


def test_requests_before_the_first_reading_carry_no_energy() -> None:
    ledger = Ledger()
    w = ledger.open(1.0)
    m = ledger.close(w, 2.0)
    assert m.total is None


# --- the conservation invariant, property-based --------------------------------

events = st.lists(
    st.tuples(
        st.sampled_from(["open", "close", "tick", "wait"]),
        st.floats(min_value=0.0, max_value=0.2),
    ),
    min_size=1,
    max_size=120,
)
powers = st.lists(st.floats(min_value=0.0, max_value=500.0), min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(events=events, cpu=powers, ram=powers)
def test_attributed_plus_unattributed_equals_measured(
    events: list[tuple[str, float]], cpu: list[float], ram: list[float]
) -> None:
    """Any sequence of opens, closes and ticks, under any piecewise power."""
    clock = Clock()
    settling = False  # then every component draws its top power

    def stepped(levels: list[float]) -> Callable[[float], float]:
        top = max(levels)
        return lambda t: (
            top if settling else levels[min(int(t / 0.25), len(levels) - 1)]
        )

    source = Recorded(
        ScriptedPowerSource(
            cpu=stepped(cpu), ram=stepped(ram), resolution=0.005, clock=clock
        )
    )
    ledger = Ledger()
    ledger.tick(source.read())
    open_windows = []
    charged = {"cpu": 0.0, "ram": 0.0}
    for kind, dt in events:
        clock.now += dt
        if kind == "open":
            open_windows.append(ledger.open(clock.now))
        elif kind == "close" and open_windows:
            m = ledger.close(open_windows.pop(0), clock.now)
            if m.total is not None:
                assert m.cpu is not None and m.cpu >= 0
                assert m.ram is not None and m.ram >= 0
                charged["cpu"] += m.cpu
                charged["ram"] += m.ram
        elif kind == "tick":
            ledger.tick(source.read())
    for w in open_windows:
        clock.now += 0.01
        m = ledger.close(w, clock.now)
        charged["cpu"] += m.cpu or 0.0
        charged["ram"] += m.ram or 0.0
    # Settle: idle ticks at the top power pay back any over-estimate, which is
    # at most the top power over the longest stretch without a tick (24 s).
    settling = True
    for _ in range(60):
        clock.now += 0.5
        ledger.tick(source.read())
    totals = ledger.totals()
    for i, name in enumerate(("cpu", "ram")):
        index = (0, 2)[i]
        assert totals.attributed[index] == pytest.approx(
            charged[name], rel=1e-9, abs=1e-9
        )
        got = charged[name] + totals.unattributed[index]
        truth = measured(ledger, source, name)
        assert got == pytest.approx(truth, rel=1e-9, abs=1e-9)


def test_a_window_older_than_the_ring_is_charged_from_the_oldest_kept_tick() -> None:
    clock = Clock()
    source = Recorded(ConstantPowerSource(cpu=10.0, clock=clock))
    ledger = Ledger(ring=4)
    ledger.tick(source.read())
    w = ledger.open(clock.now)
    for _ in range(10):
        clock.now += 1.0
        ledger.tick(source.read())
    m = ledger.close(w, clock.now + 0.5)
    # Its first interval is forgotten, and charged at the power it knew then.
    assert m.cpu == pytest.approx(10.0 * 10.5)
    assert cpu_books(ledger) == pytest.approx(
        measured(ledger, source) + 10.0 * 0.5  # the tail since the last tick, unread
    )


def test_a_late_tick_does_not_inflate_the_next_guess() -> None:
    """A request moved the ledger past a reading's time before its tick ran.

    Regression: the guess for the next tails was the joules over the ledger's
    own advance since the last tick. After a late tick that advance can be a
    millisecond, and a request closing next was charged at 100x the power the
    source drew (seen in loaded gunicorn workers, whose sampler thread waits
    for the GIL between reading and ticking).
    """
    ledger = Ledger()
    ledger.tick(EnergyReading(time=0.0, cpu=0.0))
    ledger.tick(EnergyReading(time=0.1, cpu=1.0))  # 10 W
    # The source is read at 0.2 s, but before the tick runs a request opens
    # at 0.299 s, moving the ledger past the reading.
    w = ledger.open(0.299)
    ledger.tick(EnergyReading(time=0.2, cpu=2.0))
    # Next reading at 0.3 s: the ledger advanced only 1 ms since that tick.
    ledger.tick(EnergyReading(time=0.3, cpu=3.0))
    m = ledger.close(w, 0.35)
    # Still 10 W: 0.051 s in all, of which the 50 ms tail is guessed.
    assert m.cpu == pytest.approx(10.0 * 0.051, rel=0.05)
    assert ledger.totals().power[0] == pytest.approx(10.0)
