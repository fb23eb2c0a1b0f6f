"""SCI per request and the books in grams, on a clock the test drives.

The figures are checked against hand calculations and against the power
source's own readings, never against numbers derived from the books
themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carbonspan import EnergyReading
from carbonspan.attribution.window import Window
from carbonspan.carbon.embodied import HOURS_PER_YEAR
from carbonspan.config import Settings
from carbonspan.otel import attributes as a
from carbonspan.otel.instrumentation import Instrumentation
from carbonspan.otel.metric_queue import route_key
from carbonspan.otel.reporter import Valuation
from carbonspan.testing import ConstantPowerSource
from support.fakes import Clock, Recorded


class SharedSource(ConstantPowerSource):
    """Constant watts, and a scripted share of the machine for each interval
    (reading i says the interval it ends had the share `shares[i]`)."""

    def __init__(self, shares: list[float], **watts: Any) -> None:
        super().__init__(**watts)
        self.shares = shares

    def read(self) -> EnergyReading:
        reading = super().read()
        share = self.shares[min(self.reads - 1, len(self.shares) - 1)]
        return replace(reading, share=share)


class Steps:
    """A provider whose value changes at every refresh."""

    name = "steps"

    def __init__(self, values: list[float]) -> None:
        self.values = values
        self.calls = 0

    def current(self) -> float:
        value = self.values[self.calls % len(self.values)]
        self.calls += 1
        return value


class Failing:
    name = "failing"

    def __init__(self, good: list[float] | None = None) -> None:
        self.good = list(good or [])
        self.calls = 0

    def current(self) -> float:
        self.calls += 1
        if self.good:
            return self.good.pop(0)
        raise ConnectionError("the grid operator's API is down")


class Harness:
    """An instrumentation on a simulated clock: the test takes every reading,
    and the providers are asked in the test's thread."""

    def __init__(self, source: ConstantPowerSource, clock: Clock, **kw: Any) -> None:
        self.clock = clock
        self.source = Recorded(source)
        self.inst = Instrumentation(
            Settings.load({"power_source": self.source, **kw}, {})
        )
        self.inst.grid.refresher.threaded = False
        self.inst.accounts.embodied.refresher.threaded = False
        # What was in force after each reading (for the next interval).
        self.readings: list[tuple[float, float | None, float]] = []

    def tick(self) -> None:
        self.inst.sampler.sample()
        reading = self.source.last
        assert reading is not None and reading.time == self.inst.ledger.last_time
        factors = self.inst.accounts.factors
        self.readings.append((reading.time, reading.cpu, factors.intensity.g_per_kwh))

    def prime(self, seconds: float) -> None:
        """Two readings `seconds` apart: requests have figures from here."""
        self.tick()
        self.clock.now += seconds
        self.tick()

    def ticks(self, n: int, every: float) -> None:
        """`n` readings, `every` seconds apart (the clock moves after each)."""
        for _ in range(n):
            self.tick()
            self.clock.now += every

    def request(self, seconds: float) -> dict[str, Any]:
        """A request alone for `seconds`: its span attributes."""
        window = self.open()
        self.clock.now += seconds
        got = self.close(window)
        assert got is not None
        return got

    def open(self) -> Window:
        return self.inst.ledger.open(self.clock.now)

    def close(self, window: Window, attributed: bool = True) -> dict[str, Any] | None:
        """The span attributes of the request, valued now as the reporter
        values it (None for an excluded request, or before any reading)."""
        m = self.inst.ledger.close(window, self.clock.now, attributed)
        if not attributed or m.total is None:
            return None
        factors, key = self.inst.accounts.factors, route_key("/", "GET", 200)
        valuation = Valuation(m, m.total, factors, self.clock.now, key)
        return self.inst.reporter.spans.for_span(valuation)

    def close_all(self) -> None:
        self.inst.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


MakeHarness = Callable[..., Harness]


@pytest.fixture
def harness(clock: Clock) -> Iterator[MakeHarness]:
    """Harnesses on the test's clock, closed at teardown."""
    made: list[Harness] = []

    def make(source: ConstantPowerSource, **kw: Any) -> Harness:
        made.append(Harness(source, clock, **kw))
        return made[-1]

    yield make
    for h in made:
        h.close_all()


# 1 J at 360 g/kWh is 1e-4 g. 876.6 kg over one year of 8766 h is 1/36 g/s.
G_PER_J = 1e-4
G_PER_S = 1 / 36


def test_sci_of_lone_and_overlapping_requests_by_hand(
    clock: Clock, harness: MakeHarness
) -> None:
    h = harness(
        ConstantPowerSource(cpu=10.0, clock=clock),
        carbon_intensity=360.0, embodied_emissions=876.6, hardware_lifetime=1.0,
    )  # fmt: skip
    h.prime(1.0)
    got = h.request(1.0)  # A: alone for 1 s, 10 J.
    assert got[a.ENERGY_TOTAL] == pytest.approx(10.0, rel=1e-12)
    assert got[a.EMISSIONS] == pytest.approx(10.0 * G_PER_J, rel=1e-12)
    assert got[a.EMBODIED] == pytest.approx(1.0 * G_PER_S, rel=1e-12)
    assert got[a.SCI] == pytest.approx(10.0 * G_PER_J + G_PER_S, rel=1e-12)
    assert got[a.SCI] == got[a.EMISSIONS] + got[a.EMBODIED]
    h.tick()
    # B from 0 to 2 s, C from 1 to 2 s: B reserves 1.5 s, C 0.5 s.
    b = h.open()
    clock.now += 1.0
    h.tick()
    c = h.open()
    clock.now += 1.0
    h.tick()
    got_b, got_c = h.close(b), h.close(c)
    assert got_b is not None and got_c is not None
    assert got_b[a.ENERGY_TOTAL] == pytest.approx(15.0, rel=1e-12)
    assert got_c[a.ENERGY_TOTAL] == pytest.approx(5.0, rel=1e-12)
    assert got_b[a.EMBODIED] == pytest.approx(1.5 * G_PER_S, rel=1e-12)
    assert got_c[a.EMBODIED] == pytest.approx(0.5 * G_PER_S, rel=1e-12)
    assert got_b[a.SCI] == pytest.approx(15 * G_PER_J + 1.5 * G_PER_S, rel=1e-12)
    assert got_c[a.SCI] == pytest.approx(5 * G_PER_J + 0.5 * G_PER_S, rel=1e-12)
    assert got_b[a.CARBON_INTENSITY] == 360.0
    # 4 s elapsed since the embodied rate was in force: 4/36 g, of which
    # 3 s went to requests (1 + 1.5 + 0.5) and 1 s of idle time is
    # unattributed.
    h.tick()
    accounts = h.inst.accounts
    assert accounts.embodied_total == pytest.approx(4 * G_PER_S, rel=1e-12)
    assert accounts.embodied_attributed == pytest.approx(3 * G_PER_S, rel=1e-12)
    assert accounts.embodied_unattributed == pytest.approx(1 * G_PER_S, rel=1e-12)


def test_a_process_is_charged_its_share_of_the_machine(
    clock: Clock, harness: MakeHarness
) -> None:
    h = harness(
        SharedSource([0.0, 0.25], cpu=10.0, clock=clock),
        embodied_emissions=876.6, hardware_lifetime=1.0,
    )  # fmt: skip
    h.tick()
    w = h.open()
    clock.now += 1.0
    h.tick()  # the interval's share, 0.25, is the share requests are charged
    clock.now += 1.0
    got = h.close(w)
    assert got is not None
    assert got[a.EMBODIED] == pytest.approx(2.0 * 0.25 * G_PER_S, rel=1e-12)


def test_without_a_source_of_embodied_emissions_there_are_none(
    clock: Clock, harness: MakeHarness
) -> None:
    h = harness(ConstantPowerSource(cpu=10.0, clock=clock))
    h.prime(1.0)
    got = h.request(0.5)
    assert got[a.ENERGY_TOTAL] == pytest.approx(5.0)
    assert a.EMBODIED not in got and a.SCI not in got
    h.tick()
    assert h.inst.accounts.embodied_total == 0.0
    assert h.inst.accounts.factors.embodied_rate is None


# --- conservation, property-based ----------------------------------------------

events = st.lists(
    st.tuples(
        st.sampled_from(["open", "open", "exclude", "close", "tick", "wait"]),
        st.floats(min_value=0.0, max_value=0.2),
    ),
    min_size=1,
    max_size=120,
)
shares = st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=30)
intensities = st.lists(
    st.floats(min_value=0.0, max_value=900.0), min_size=1, max_size=6
)


@settings(max_examples=200, deadline=None)
@given(
    events=events,
    shares=shares,
    values=intensities,
    kg=st.floats(min_value=1.0, max_value=5000.0),
    years=st.floats(min_value=0.5, max_value=10.0),
    early=st.booleans(),
)
def test_attributed_plus_unattributed_equals_the_elapsed_time_and_energy(
    events: list[tuple[str, float]],
    shares: list[float],
    values: list[float],
    kg: float,
    years: float,
    early: bool,
) -> None:
    """Embodied: TE x elapsed / lifespan x RS, interval by interval. Operational:
    each interval's joules x the intensity then in force, under an intensity
    that changes at every refresh and a share of the machine that changes at
    every reading."""
    clock = Clock()
    source = SharedSource(shares, cpu=12.0, ram=3.0, clock=clock)
    h = Harness(
        source, clock, embodied_emissions=kg, hardware_lifetime=years,
        intensity_provider=Steps(values), intensity_refresh=0.3,
    )  # fmt: skip
    try:
        opened: list[tuple[Window, bool]] = []
        if early:  # before the first reading: its share is unattributed
            opened.append((h.open(), True))
        h.tick()
        charged = embodied = 0.0
        for kind, dt in events:
            clock.now += dt
            if kind in ("open", "exclude"):
                opened.append((h.open(), kind == "open"))
            elif kind == "close" and opened:
                window, counted = opened.pop(0)
                got = h.close(window, counted)
                if got is not None:
                    # What the span says is what the books count.
                    assert got[a.EMISSIONS] == pytest.approx(
                        got[a.ENERGY_TOTAL] / 3.6e6 * got[a.CARBON_INTENSITY],
                        rel=1e-12,
                    )
                    assert got[a.SCI] == got[a.EMISSIONS] + got[a.EMBODIED]
                    charged += got[a.EMISSIONS]
                    embodied += got[a.EMBODIED]
            elif kind == "tick":
                h.tick()
        for window, counted in opened:
            clock.now += 0.01
            got = h.close(window, counted)
            if got is not None:
                charged += got[a.EMISSIONS]
                embodied += got[a.EMBODIED]
        for _ in range(60):  # settle the ledger's tail corrections
            clock.now += 0.5
            h.tick()
        accounts = h.inst.accounts
        rate = kg * 1000 / (years * HOURS_PER_YEAR * 3600)
        # The truth, from the readings: interval j ran under the share the
        # source gave at reading j, and the intensity in force after j - 1.
        elapsed_truth = energy_truth = 0.0
        for j in range(1, len(h.readings)):
            t0, cpu0, in_force = h.readings[j - 1]
            t1, cpu1, _ = h.readings[j]
            share = shares[min(j, len(shares) - 1)]
            elapsed_truth += rate * share * (t1 - t0)
            joules = (cpu1 or 0.0) - (cpu0 or 0.0)
            joules *= 15.0 / 12.0  # ram at 3 W beside cpu at 12 W
            energy_truth += joules * in_force / 3.6e6
        assert accounts.embodied_total == pytest.approx(
            elapsed_truth, rel=1e-9, abs=1e-12
        )
        assert accounts.embodied_attributed == pytest.approx(
            embodied, rel=1e-9, abs=1e-12
        )
        assert accounts.embodied_attributed + accounts.embodied_unattributed == (
            pytest.approx(elapsed_truth, rel=1e-9, abs=1e-12)
        )
        assert accounts.measured == pytest.approx(energy_truth, rel=1e-9, abs=1e-12)
        assert accounts.attributed == pytest.approx(charged, rel=1e-9, abs=1e-12)
        assert accounts.attributed + accounts.unattributed == pytest.approx(
            energy_truth, rel=1e-9, abs=1e-12
        )
    finally:
        h.close_all()


def test_a_constant_share_leaves_idle_and_excluded_time_unattributed(
    clock: Clock, harness: MakeHarness
) -> None:
    h = harness(
        ConstantPowerSource(cpu=10.0, clock=clock),
        embodied_emissions=876.6, hardware_lifetime=1.0,
    )  # fmt: skip
    h.prime(0.2)  # a first interval measured: requests have figures from here
    clock.now += 0.3  # idle 0.3 s
    w1 = h.open()
    clock.now += 0.2
    w2 = h.open()  # excluded: shares 0.1 s with w1, then 0.2 s alone
    clock.now += 0.2
    h.close(w1)
    clock.now += 0.2
    assert h.close(w2, attributed=False) is None
    clock.now += 0.5  # idle
    h.tick()
    accounts = h.inst.accounts
    idle = 0.2 + 0.3 + 0.5
    excluded = 0.1 + 0.2
    assert accounts.embodied_unattributed == pytest.approx(
        (idle + excluded) * G_PER_S, rel=1e-12
    )
    assert accounts.embodied_attributed == pytest.approx(0.3 * G_PER_S, rel=1e-12)


# --- intensity that follows the grid --------------------------------------------


def test_each_request_uses_the_intensity_in_force_when_it_ran(
    clock: Clock, harness: MakeHarness
) -> None:
    provider = Steps([100.0, 400.0, 250.0])
    h = harness(
        ConstantPowerSource(cpu=36.0, clock=clock),
        carbon_intensity=50.0, intensity_provider=provider, intensity_refresh=1.0,
    )  # fmt: skip
    assert h.inst.intensity.g_per_kwh == 50.0  # until the provider answers
    h.tick()  # asks the provider: 100, in force from the next reading
    assert h.inst.intensity.g_per_kwh == 50.0
    clock.now += 0.5
    h.tick()
    assert h.inst.intensity.g_per_kwh == 100.0
    first = h.request(0.5)
    assert first[a.CARBON_INTENSITY] == 100.0
    assert first[a.LOCATION_SOURCE] == "steps"
    assert first[a.EMISSIONS] == pytest.approx(18.0 / 3.6e6 * 100.0, rel=1e-12)
    h.tick()  # 1 s after the first ask: asks again (400)
    long = h.open()  # open across the change
    clock.now += 0.5
    h.tick()  # 400 in force: what `long` holds so far is revalued
    clock.now += 0.5
    second = h.close(long)
    assert second is not None
    assert second[a.CARBON_INTENSITY] == 400.0
    assert second[a.EMISSIONS] == pytest.approx(36.0 / 3.6e6 * 400.0, rel=1e-12)
    h.tick()
    accounts = h.inst.accounts
    # The process's grams: each interval's joules at its own intensity.
    truth = 36.0 / 3.6e6 * 0.5 * (50 + 100 + 100 + 400)
    assert accounts.measured == pytest.approx(truth, rel=1e-12)
    assert accounts.attributed == pytest.approx(
        first[a.EMISSIONS] + second[a.EMISSIONS], rel=1e-12
    )
    assert accounts.attributed + accounts.unattributed == pytest.approx(
        truth, rel=1e-12
    )
    # `long` drew 0.5 s at 100 g/kWh but was valued at 400: the difference is
    # taken from the unattributed account.
    idle = 36.0 / 3.6e6 * 0.5 * 50
    revalued = 36.0 / 3.6e6 * 0.5 * (100 - 400)
    assert accounts.unattributed == pytest.approx(idle + revalued, rel=1e-12)


def test_a_failing_provider_keeps_the_last_good_value_with_a_warning(
    clock: Clock, harness: MakeHarness, caplog: pytest.LogCaptureFixture
) -> None:
    provider = Failing(good=[300.0])
    h = harness(
        ConstantPowerSource(cpu=36.0, clock=clock),
        carbon_intensity=50.0, intensity_provider=provider, intensity_refresh=0.1,
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="carbonspan.carbon.grid"):
        h.ticks(6, every=0.2)
    assert provider.calls == 6
    assert h.inst.grid.failures == 5
    assert h.inst.intensity.g_per_kwh == 300.0  # the last good answer
    warnings = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(warnings) == 1  # then at most once a minute
    assert "300 g/kWh" in warnings[0].getMessage()
    assert h.request(0.1)[a.CARBON_INTENSITY] == 300.0


def test_a_provider_that_never_answers_leaves_the_offline_factor(
    clock: Clock, harness: MakeHarness
) -> None:
    h = harness(
        ConstantPowerSource(cpu=36.0, clock=clock),
        country_iso_code="FRA", intensity_provider=Failing(),
        intensity_refresh=0.1,
    )  # fmt: skip
    h.ticks(3, every=0.2)
    got = h.request(0.1)
    # The country's factor, labelled as such: nothing invented.
    assert got[a.LOCATION_SOURCE] == "country"
    assert got[a.CARBON_INTENSITY] == h.inst.grid.fallback.g_per_kwh
    assert got[a.EMISSIONS] == pytest.approx(
        got[a.ENERGY_TOTAL] / 3.6e6 * got[a.CARBON_INTENSITY], rel=1e-12
    )


@pytest.mark.parametrize("answer", [float("nan"), -5.0, float("inf")])
def test_a_provider_answer_that_is_not_an_intensity_is_refused(
    clock: Clock, harness: MakeHarness, answer: float
) -> None:
    h = harness(
        ConstantPowerSource(cpu=36.0, clock=clock),
        carbon_intensity=80.0,
        intensity_provider=Steps([answer]), intensity_refresh=0.1,
    )  # fmt: skip
    h.ticks(3, every=0.2)
    assert h.inst.grid.failures >= 2
    assert h.inst.intensity.g_per_kwh == 80.0
