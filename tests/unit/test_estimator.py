"""Short requests are charged what they physically cost, not the idle power.

The power sources here are scripted from the requests themselves: the process
draws 2 W idle and 30 W more while a request runs, so every request's true
cost is known exactly. The clock is simulated, so the figures are exact too.
"""

from __future__ import annotations

import random
import statistics

import pytest

from carbonspan import EnergyReading
from carbonspan.attribution.cpu_clock import CpuClock
from carbonspan.attribution.estimator import PowerModel
from carbonspan.attribution.ledger import Ledger
from carbonspan.attribution.policies import POLICIES, CpuTime, TimeShare
from carbonspan.config import Settings
from carbonspan.testing import ConstantPowerSource

IDLE_W, BUSY_W = 2.0, 30.0
TICK = 0.1


class Physics:
    """Cumulative joules of a process whose power follows its requests."""

    def __init__(self) -> None:
        self.busy: list[tuple[float, float]] = []  # request intervals

    def joules(self, t: float) -> float:
        extra = sum(max(0.0, min(e, t) - b) for b, e in self.busy)
        return IDLE_W * t + BUSY_W * extra

    def truth(self, b: float, e: float) -> float:
        return IDLE_W * (e - b) + BUSY_W * (e - b)


def sporadic(policy: str, seed: int, n: int = 300) -> tuple[list[float], list[float]]:
    """One request at a time, 2-20 ms each, 30-120 ms apart; ticks every 0.1 s."""
    rng = random.Random(seed)
    physics, ledger = Physics(), Ledger(POLICIES[policy]())
    requests, t = [], 0.5
    for _ in range(n):
        duration = rng.uniform(0.002, 0.020)
        requests.append((t, t + duration))
        t += duration + rng.uniform(0.030, 0.120)
    physics.busy = requests
    ticks = [k * TICK for k in range(int(t / TICK) + 2)]
    events = sorted(
        [(tk, 0, None) for tk in ticks]
        + [(b, 1, i) for i, (b, _) in enumerate(requests)]
        + [(e, 2, i) for i, (_, e) in enumerate(requests)]
    )
    reported, truth = [], []
    open_: dict[int, tuple[object, CpuClock]] = {}
    for at, kind, i in events:
        if kind == 0:
            ledger.tick(EnergyReading(time=at, cpu=physics.joules(at)))
        elif kind == 1:
            assert i is not None
            clock = CpuClock()
            open_[i] = (ledger.open(at, clock), clock)
        else:
            assert i is not None
            window, clock = open_.pop(i)
            b, e = requests[i]
            clock.add_thread(e - b)  # a CPU burner: busy all along
            m = ledger.close(window, at)  # type: ignore[arg-type]
            if m.cpu is not None and b > 1.0:  # past the first second
                reported.append(m.cpu)
                truth.append(physics.truth(b, e))
    return reported, truth


@pytest.mark.parametrize("policy", ["time_share", "cpu_time"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sporadic_short_requests_get_what_they_cost(policy: str, seed: int) -> None:
    reported, truth = sporadic(policy, seed)
    assert len(reported) > 200
    assert sum(reported) / sum(truth) == pytest.approx(1.0, abs=0.1)
    ratios = [r / t for r, t in zip(reported, truth, strict=True)]
    assert 0.8 <= statistics.median(ratios) <= 1.2
    assert min(reported) > 0  # never a zero: the source always drew power


def test_the_model_tells_idle_from_busy_power() -> None:
    rng = random.Random(7)
    model = PowerModel()
    for _ in range(200):
        busy = rng.uniform(0.0, 0.03) if rng.random() < 0.7 else 0.0
        idle = TICK - busy
        model.observe(idle, busy, IDLE_W * idle + (IDLE_W + BUSY_W) * busy)
    assert model.idle == pytest.approx(IDLE_W, rel=1e-3)
    assert model.busy == pytest.approx(IDLE_W + BUSY_W, rel=1e-3)


def test_no_data_no_guess_then_the_first_mean_then_the_sources_prior() -> None:
    model = PowerModel()
    assert model.busy is None and model.idle is None
    assert model.observe(0.1, 0.0, 0.5) == 0.5  # an idle interval is all idle
    assert model.idle == pytest.approx(5.0) and model.busy == pytest.approx(5.0)
    model.prior(40.0)  # the source's own estimate, before any busy interval
    assert model.busy == pytest.approx(40.0) and model.idle == pytest.approx(5.0)


def test_a_start_up_interval_does_not_raise_the_prior_for_good() -> None:
    # The sampler's first interval (hardware detection) draws more than the
    # source's busy prior; once idle intervals anchor the idle power, the
    # busy power is the prior again, not that first interval's mean.
    model = PowerModel()
    model.prior(0.9)
    model.observe(0.01, 0.0, 0.0102)  # 1.02 W over the first 10 ms
    assert model.busy == pytest.approx(1.02)  # at least the idle power
    for _ in range(10):  # idle ticks at 0.013 W
        model.observe(0.1, 0.0, 0.0013)
    assert model.idle < 0.05  # the first interval still weighs a little
    assert model.busy == pytest.approx(0.9)


def test_nanoseconds_of_busy_time_do_not_make_a_busy_power() -> None:
    # A counter of 5 mJ resolution, and a tick that comes 1e-13 s after a
    # request opened: fitted exactly, the interval's joules over those
    # nanoseconds would read as 1e12 W, and the next requests' tails with it.
    model = PowerModel()
    model.observe(0.25, 0.0, 0.0025)
    model.observe(0.125, 1e-13, 0.125)
    assert model.busy is not None and model.busy < 2.0
    # A few milliseconds of busy time are evidence enough: 2 W idle, 32 W busy.
    model = PowerModel()
    for busy in (0.0, 0.002, 0.0, 0.003, 0.001):
        idle = TICK - busy
        model.observe(idle, busy, IDLE_W * idle + (IDLE_W + BUSY_W) * busy)
    assert model.busy == pytest.approx(IDLE_W + BUSY_W, rel=1e-6)


def test_a_step_of_busy_power_is_followed() -> None:
    rng = random.Random(3)
    model = PowerModel()
    for watts in (32.0, 12.0, 60.0):
        for _ in range(2400):  # 4 minutes at each level
            busy = rng.uniform(0.0, TICK)
            idle = TICK - busy
            model.observe(idle, busy, IDLE_W * idle + watts * busy)
        assert model.busy == pytest.approx(watts, rel=0.05)
        assert model.idle == pytest.approx(IDLE_W, rel=0.05)


def test_an_idle_hour_does_not_forget_what_requests_draw() -> None:
    model = PowerModel()
    for _ in range(50):
        model.observe(0.08, 0.02, IDLE_W * 0.08 + 32.0 * 0.02)
    for _ in range(36_000):  # an hour of idle ticks
        model.observe(TICK, 0.0, IDLE_W * TICK)
    assert model.busy == pytest.approx(32.0, rel=1e-3)


def test_a_figure_is_absent_until_an_interval_is_measured_never_zero() -> None:
    source_time = [0.0]
    source = ConstantPowerSource(cpu=10.0, ram=3.0, clock=lambda: source_time[0])
    ledger = Ledger()
    ledger.tick(source.read())  # the first reading: a baseline only
    w = ledger.open(0.01)
    m = ledger.close(w, 0.02)
    assert m.cpu is None and m.ram is None and m.total is None
    source_time[0] = 0.05
    ledger.tick(source.read())
    w = ledger.open(0.06)
    m = ledger.close(w, 0.08)
    assert m.cpu == pytest.approx(0.2) and m.ram == pytest.approx(0.06)
    # What the unmeasured request drew is unattributed, not lost.
    source_time[0] = 0.1
    ledger.tick(source.read())
    totals = ledger.totals()
    assert totals.attributed[0] + totals.unattributed[0] == pytest.approx(1.0)


def test_zero_joules_only_where_the_source_measured_zero() -> None:
    ledger = Ledger()
    for k in range(5):  # the GPU draws nothing, the CPU does
        ledger.tick(EnergyReading(time=k * TICK, cpu=k * 1.0, gpu=0.0))
    w = ledger.open(0.45)
    m = ledger.close(w, 0.47)
    assert m.gpu == 0.0 and m.cpu is not None and m.cpu > 0


@pytest.mark.parametrize("name", ["time_share", "cpu_time"])
def test_policies_are_looked_up_by_name(name: str) -> None:
    policy = POLICIES[name]()
    assert policy.name == name
    ledger = Ledger(policy)
    assert ledger.policy is policy
    assert isinstance(policy, TimeShare)  # cpu_time shares RAM and GPU by time
    assert policy.timed is (name == "cpu_time") is isinstance(policy, CpuTime)
    assert Settings.load({"attribution": name}, environ={}).attribution == name


def test_the_ledger_shares_by_time_unless_given_a_policy() -> None:
    assert isinstance(Ledger().policy, TimeShare)
    assert not Ledger().policy.timed


def test_an_unknown_policy_names_the_accepted_ones() -> None:
    with pytest.raises(
        ValueError, match=r"attribution: 'fair'.*one of time_share, cpu_time"
    ):
        Settings.load({"attribution": "fair"}, environ={})
    assert set(POLICIES) == {"time_share", "cpu_time"}


def test_power_that_does_not_follow_the_requests_is_not_theirs() -> None:
    """Steps of power no request caused: busy power stays the idle power."""
    rng = random.Random(11)
    model = PowerModel()
    for k in range(1200):
        watts = 5.0 if (k // 5) % 2 else 40.0  # steps every 0.5 s
        busy = rng.uniform(0.002, 0.02)
        model.observe(TICK - busy, busy, watts * TICK)
    assert model.busy is not None and model.idle is not None
    assert model.busy == pytest.approx(model.idle, rel=0.15)


@pytest.mark.parametrize("policy", ["time_share", "cpu_time"])
def test_a_paused_request_is_charged_nothing_while_it_waits(policy: str) -> None:
    """Two requests for 1 s; one waits on its client for the middle 0.6 s."""
    ledger = Ledger(POLICIES[policy]())
    for k in range(3):  # 10 W, known from two idle intervals
        ledger.tick(EnergyReading(time=k * TICK, cpu=10.0 * k * TICK))
    working, waiting = CpuClock(), CpuClock()
    t0 = 2 * TICK
    w_work = ledger.open(t0, working)
    w_wait = ledger.open(t0, waiting)
    for k in range(1, 11):  # ticks every 0.1 s over the second
        now = t0 + k * TICK
        working.add_thread(0.05)  # the working request computes
        waiting.add_thread(0.0 if 2 < k <= 8 else 0.05)
        ledger.tick(EnergyReading(time=now, cpu=10.0 * now))
        if k == 2:
            ledger.pause(w_wait, now)  # its client is slow from here
        elif k == 8:
            ledger.resume(w_wait, now)
    m_wait = ledger.close(w_wait, t0 + 1.0)
    m_work = ledger.close(w_work, t0 + 1.0)
    assert m_wait.cpu is not None and m_work.cpu is not None
    # In flight together 0.4 s (2 J each by either policy), the worker alone
    # 0.6 s (6 J): the waiting request pays nothing for its wait.
    assert m_wait.cpu == pytest.approx(2.0, rel=0.05)
    assert m_work.cpu == pytest.approx(8.0, rel=0.05)
    assert m_wait.active == pytest.approx(0.4) and m_wait.duration == pytest.approx(1.0)
    totals = ledger.totals()
    assert totals.attributed[0] + totals.unattributed[0] == pytest.approx(
        totals.measured[0]
    )
