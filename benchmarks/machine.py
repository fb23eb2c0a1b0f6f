"""How busy the rest of the machine was while the benchmark ran (Linux).

The VM is shared: other processes and the host (steal time) take CPU. The
benchmark reads the machine's CPU counters from /proc/stat around a run,
subtracts the CPU its own processes used, and prints what is left, so that a
run measured on a busy machine can be told from a quiet one.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Snapshot:
    wall: float  # time.monotonic()
    busy: float  # CPU seconds the whole machine spent busy (steal not included)
    steal: float  # CPU seconds the host took from this VM
    own: float  # CPU seconds of this process and its waited-for children


def snapshot() -> Snapshot | None:
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    hz = float(os.sysconf("SC_CLK_TCK"))
    values = [float(v) / hz for v in fields[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice
    values += [0.0] * (10 - len(values))
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    return Snapshot(
        wall=time.monotonic(),
        busy=user + nice + system + irq + softirq,
        steal=steal,
        own=_own_cpu(),
    )


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def others(
    before: Snapshot | None, after: Snapshot | None, extra_own_s: float = 0.0
) -> dict[str, float] | None:
    """Mean % of one core used by everything but us, and stolen by the host.

    `extra_own_s`: CPU seconds our other processes (the servers) used.
    """
    if before is None or after is None or after.wall <= before.wall:
        return None
    wall = after.wall - before.wall
    own = after.own - before.own + extra_own_s
    return {
        "wall_s": wall,
        "own_core_percent": own / wall * 100.0,
        "others_core_percent": max(0.0, after.busy - before.busy - own) / wall * 100.0,
        "steal_core_percent": (after.steal - before.steal) / wall * 100.0,
        "cores": float(os.cpu_count() or 1),
    }


def describe(load: dict[str, float] | None) -> str:
    if load is None:
        return "machine load: not known (no /proc/stat)"
    return (
        f"machine load over {load['wall_s']:.0f} s: this benchmark "
        f"{load['own_core_percent']:.0f}% of a core, other processes "
        f"{load['others_core_percent']:.0f}%, stolen by the host "
        f"{load['steal_core_percent']:.1f}% (of {load['cores']:.0f} cores, "
        f"{load['cores'] * 100:.0f}% in all)"
    )
