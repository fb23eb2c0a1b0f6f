"""This process's part of the machine's energy, under ``scope="process"``:
CPU by its share of the busy CPU time (`CpuSplit`), RAM by its share of the
used memory (`memory_share`)."""

from __future__ import annotations

import psutil

#: Seconds over which a measured idle power (the lowest seen) rises back
#: toward the interval's power.
FLOOR_MEMORY = 60.0


#: How each scope charges the CPU's idle power (`HardwareInfo.idle_power`):
#: the machine's, requests paying it while in flight; or not the process's.
IDLE_POWER: dict[str, str] = {"machine": "included", "process": "excluded"}


class CpuSplit:
    """This process's part of the machine's CPU joules, under ``scope="process"``.

    The machine's CPU draws an idle power whatever runs, and a dynamic power
    above it that follows the load. A process is charged the dynamic power
    it causes, as Kepler does; the idle power is the machine's, drawn
    whether the process runs or not, and is left out (``scope="machine"``
    counts it). So a request's power depends neither on its length nor on
    whether other processes happened to be busy in its interval:

    - **dynamic** joules go by the process's share of the machine's busy CPU
      time in the interval. CodeCarbon's load model evaluates the interval's
      *mean* load, and its cubic makes a core busy for 5 ms of 100 ms read
      as almost nothing; the process's CPU seconds are therefore priced at no
      less than a busy core's dynamic power (`core_dynamic`, W per busy CPU),
      the model's own figure for one core kept busy. On a loaded machine the
      model prices a CPU second higher, and so does the split;

    `idle` is the model's idle power (W), or None where it is measured
    (RAPL): the lowest power seen lately stands in for it, rising back
    toward the interval's power over `FLOOR_MEMORY` seconds.
    """

    __slots__ = ("_floor", "core_dynamic", "idle", "share")

    def __init__(self, idle: float | None, core_dynamic: float | None) -> None:
        self.idle = idle
        self.core_dynamic = core_dynamic
        self._floor: float | None = None  # W, the measured idle power
        #: The process's share of the machine's busy CPU time in the last
        #: interval; None before one was measured.
        self.share: float | None = None

    def process_joules(
        self, joules: float, dt: float, used: float, busy: float
    ) -> float:
        """The process's part of `joules`, the machine's over `dt` seconds, in
        which it used `used` CPU seconds of the machine's `busy`."""
        used, busy = max(used, 0.0), max(busy, used, 0.0)
        share = self.share = used / busy if busy > 0 else 0.0
        idle = min(self._idle_watts(joules, dt) * dt, joules)
        dynamic = (joules - idle) * share
        if self.core_dynamic is not None:
            dynamic = max(dynamic, used * self.core_dynamic)
        return dynamic

    def _idle_watts(self, joules: float, dt: float) -> float:
        if self.idle is not None:
            return self.idle
        power = joules / dt
        floor = self._floor
        if floor is None or power < floor:
            floor = power
        else:
            floor += (power - floor) * min(dt / FLOOR_MEMORY, 1.0)
        self._floor = floor
        return floor


def memory_share(process: psutil.Process) -> float:
    vm = psutil.virtual_memory()
    used = float(vm.total - vm.available)
    if used <= 0:
        return 0.0
    return min(float(process.memory_info().rss) / used, 1.0)
