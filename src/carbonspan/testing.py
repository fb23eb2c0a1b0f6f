"""Deterministic power sources, so tests and users can check the arithmetic.

`ScriptedPowerSource` and `ConstantPowerSource` integrate their watts exactly
over `time.monotonic()`, so the energy they report between two readings is
known in closed form. `ProcessCpuPowerSource` draws power that follows the
process's own CPU clock, so each request's true figure is known from the CPU
seconds it used.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from carbonspan.power.source import EnergyReading, HardwareInfo

Watts = Callable[[float], float]


class ScriptedPowerSource:
    """Power per component follows a function of the seconds since creation.

    Each function maps elapsed seconds to watts. The energy is integrated with
    the trapezoid rule at sub-steps of `resolution` seconds between readings:
    exact for constant and linear power; a step of power is smeared over one
    sub-step, so an error of at most (step in W) x resolution / 2 joules.
    """

    def __init__(
        self,
        cpu: Watts | None = None,
        gpu: Watts | None = None,
        ram: Watts | None = None,
        *,
        resolution: float = 0.001,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._watts = {"cpu": cpu, "gpu": gpu, "ram": ram}
        self._resolution = resolution
        self._clock = clock
        self._start = clock()
        self._last = 0.0
        self._total = {name: 0.0 for name, fn in self._watts.items() if fn}
        self._lock = threading.Lock()
        self.reads = 0

    def read(self) -> EnergyReading:
        with self._lock:
            now = self._clock()
            elapsed = now - self._start
            for name in self._total:
                self._total[name] += self.energy_between(name, self._last, elapsed)
            self._last = max(self._last, elapsed)
            self.reads += 1
            return EnergyReading(
                time=now,
                cpu=self._total.get("cpu"),
                gpu=self._total.get("gpu"),
                ram=self._total.get("ram"),
            )

    def energy_between(self, component: str, t0: float, t1: float) -> float:
        """Joules the component draws between two elapsed times (seconds)."""
        fn = self._watts[component]
        if fn is None or t1 <= t0:
            return 0.0
        steps = max(1, math.ceil((t1 - t0) / self._resolution))
        h = (t1 - t0) / steps
        inner = sum(fn(t0 + k * h) for k in range(1, steps))
        return h * ((fn(t0) + fn(t1)) / 2 + inner)

    def describe(self) -> HardwareInfo:
        return HardwareInfo(
            cpu_model="fake" if self._watts["cpu"] else None,
            gpu_model="fake" if self._watts["gpu"] else None,
            gpu_count=1 if self._watts["gpu"] else None,
            measurement={name: "fake" for name in self._total},
        )


class ConstantPowerSource(ScriptedPowerSource):
    """Constant watts per component; a component left `None` is not measured."""

    def __init__(
        self,
        cpu: float | None = None,
        gpu: float | None = None,
        ram: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            cpu=_constant(cpu),
            gpu=_constant(gpu),
            ram=_constant(ram),
            resolution=math.inf,
            clock=clock,
        )
        self.watts = {"cpu": cpu, "gpu": gpu, "ram": ram}


def _constant(watts: float | None) -> Watts | None:
    if watts is None:
        return None
    return lambda _elapsed: watts


class ProcessCpuPowerSource:
    """CPU power that follows this process's own CPU clock.

    ``P = base_watts + watts_per_cpu x the process's CPU utilisation``: the
    cumulative CPU joules are ``base_watts x elapsed seconds + watts_per_cpu x
    the process's CPU seconds`` (`time.process_time()`, every thread), so a
    request's true figure lies between its own work's CPU seconds and the
    process's CPU seconds while it was served, each x `watts_per_cpu`, plus
    `base_watts` x its duration.
    """

    def __init__(self, base_watts: float = 2.0, watts_per_cpu: float = 30.0) -> None:
        self.base_watts = base_watts
        self.watts_per_cpu = watts_per_cpu
        self._start = time.monotonic()
        self._cpu0 = time.process_time()
        self.reads = 0

    def read(self) -> EnergyReading:
        now, cpu = time.monotonic(), time.process_time()
        self.reads += 1
        return EnergyReading(
            time=now,
            cpu=self.base_watts * (now - self._start)
            + self.watts_per_cpu * (cpu - self._cpu0),
        )

    def describe(self) -> HardwareInfo:
        return HardwareInfo(cpu_model="fake", measurement={"cpu": "fake"})
