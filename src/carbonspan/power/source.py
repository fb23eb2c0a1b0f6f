"""The plug-in point: the `PowerSource` protocol and the values that cross it.

A power source reports *cumulative* joules per component since it started, at
a `time.monotonic()` instant. Everything downstream (sampler, ledger) only ever
takes differences of these readings, so a source is free to integrate power
itself (models) or to read a hardware energy counter (RAPL, NVML).

What the ledger makes of them for one request is a
`carbonspan.attribution.measurement.Measurement`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

#: Whose energy a source reports: this process's share, or the whole machine's.
SourceScope = Literal["process", "machine"]
COMPONENTS = ("cpu", "gpu", "ram")


@dataclass(frozen=True)
class EnergyReading:
    """Cumulative joules per component at `time` (seconds, `time.monotonic()`).

    A component that is not measured is `None`, never 0.

    `share` is the process's share of the machine over the interval that
    ends here (SCI's resources reserved over total resources, for the
    embodied emissions), where the source knows it; `None`: the whole
    machine.
    """

    time: float
    cpu: float | None = None
    gpu: float | None = None
    ram: float | None = None
    share: float | None = None


@dataclass(frozen=True)
class HardwareInfo:
    """What was measured and how. `measurement` maps component -> method.

    `busy_watts` is the source's own rough estimate (W) of what a component
    draws while a request keeps the process busy, per component where it has
    one: it guides the charges of short requests until readings have taught
    carbonspan better.

    `idle_watts` is what the machine draws at no load (W), per component
    where the source's model gives it, and `idle_power` how that idle power
    is charged: ``included`` (the whole machine's, requests paying it while
    in flight) or ``excluded`` (not the process's: it is drawn whatever the
    process does; see `carbonspan.power.process_share.CpuSplit`).
    """

    cpu_model: str | None = None
    gpu_model: str | None = None
    gpu_count: int | None = None
    measurement: dict[str, str] = field(default_factory=dict)
    busy_watts: dict[str, float] = field(default_factory=dict)
    idle_watts: dict[str, float] = field(default_factory=dict)
    idle_power: str | None = None


@runtime_checkable
class PowerSource(Protocol):
    """Anything that can report cumulative joules per component."""

    def read(self) -> EnergyReading:
        """Cumulative joules since the source started, per component."""
        ...

    def describe(self) -> HardwareInfo:
        """Hardware models and the measurement method per component."""
        ...


__all__ = [
    "COMPONENTS",
    "EnergyReading",
    "HardwareInfo",
    "PowerSource",
    "SourceScope",
]
