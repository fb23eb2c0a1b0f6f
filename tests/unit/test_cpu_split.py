"""The process's part of the machine's CPU energy under scope="process":
dynamic power by CPU share, no idle power, a busy core's price at least."""

from __future__ import annotations

import logging

import pytest

from carbonspan import CodeCarbonPowerSource
from carbonspan.power.process_share import CpuSplit
from support.checks import carbonspan_warnings

TDP = 8.0  # W: CodeCarbon's load model, TDP x (0.1 + 0.9 x load^3), 2 CPUs
CPUS = 2
IDLE = 0.1 * TDP
CORE = TDP * (0.1 + 0.9 / CPUS**3) - IDLE  # what one busy core adds: 0.9 W
DT = 0.1  # s, one tick


def machine_joules(busy_cpu_seconds: float) -> float:
    load = busy_cpu_seconds / (CPUS * DT)
    return TDP * (0.1 + 0.9 * load**3) * DT


@pytest.mark.parametrize("cpu", [0.002, 0.005, 0.02, 0.05, 0.1])
def test_a_lone_burst_is_charged_a_busy_cores_dynamic_power(cpu: float) -> None:
    # The process alone on the machine, busy for `cpu` seconds of the tick:
    # charged what a busy core adds, per CPU second, whatever the length,
    # and none of the machine's idle power.
    split = CpuSplit(IDLE, CORE)
    joules = split.process_joules(machine_joules(cpu), DT, cpu, cpu)
    assert joules == pytest.approx(cpu * CORE, rel=1e-9)


def test_idle_neighbours_do_not_move_the_charge() -> None:
    # Other processes busy in the same tick, below a core in all: the
    # process's share shrinks, its price per CPU second does not.
    alone, shared = CpuSplit(IDLE, CORE), CpuSplit(IDLE, CORE)
    a = alone.process_joules(machine_joules(0.005), DT, 0.005, 0.005)
    b = shared.process_joules(machine_joules(0.06), DT, 0.005, 0.06)
    assert a == pytest.approx(b, rel=1e-9)


def test_a_loaded_machine_is_split_by_cpu_share() -> None:
    # Both CPUs busy all tick (load 1): the machine's dynamic power (7.2 W),
    # by CPU share; two such processes add up to the machine less its idle.
    halves = [CpuSplit(IDLE, CORE) for _ in range(2)]
    machine = machine_joules(CPUS * DT)
    parts = [s.process_joules(machine, DT, DT, CPUS * DT) for s in halves]
    assert parts[0] == pytest.approx((machine - IDLE * DT) / 2, rel=1e-9)
    assert sum(parts) == pytest.approx(machine - IDLE * DT, rel=1e-9)


def test_measured_power_learns_its_idle_floor() -> None:
    # RAPL-like: 10 W idle (unknown to the split) plus 30 W per busy CPU.
    split = CpuSplit(None, None)
    for _ in range(20):  # idle ticks teach the floor
        assert split.process_joules(10.0 * DT, DT, 0.0, 0.0) == 0.0
    joules = split.process_joules(10.0 * DT + 30.0 * 0.04, DT, 0.01, 0.04)
    # The floor rises toward a busy tick's power over a minute: 10.02 W here.
    assert joules == pytest.approx(30.0 * 0.04 * 0.25, rel=0.01)
    assert joules < 30.0 * 0.04 * 0.25
    assert split.share == pytest.approx(0.25, rel=1e-9)


def test_a_constant_cpu_model_is_not_a_process_figure(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Without psutil's CPU times CodeCarbon falls back on its constant model:
    # all of it idle power, none of it the process's.
    from codecarbon.core import cpu as cc_cpu

    monkeypatch.setattr(cc_cpu, "is_psutil_available", lambda: False)
    monkeypatch.setattr(cc_cpu, "is_rapl_available", lambda: False)
    process = CodeCarbonPowerSource("process")
    machine = CodeCarbonPowerSource("machine")
    with caplog.at_level(logging.WARNING, logger="carbonspan"):
        p, m = process.read(), machine.read()
    assert p.cpu is None and p.ram is not None
    assert m.cpu is not None
    assert "cpu" not in process.describe().measurement
    assert process.describe().idle_power == "excluded"
    assert machine.describe().idle_power == "included"
    assert any(
        "constant CPU model" in r.getMessage() for r in carbonspan_warnings(caplog)
    )
