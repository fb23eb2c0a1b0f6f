"""The plug-in point: the `PowerSource` protocol and the values that cross it.

A power source reports *cumulative* joules per component since it started, at
a `time.monotonic()` instant. Everything downstream (sampler, ledger) only ever
takes differences of these readings, so a source is free to integrate power
itself (models) or to read a hardware energy counter (RAPL, NVML).

`Measurement` is what the ledger makes of those readings for one request: the
object a `measurement_hook` receives.
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
    """

    time: float
    cpu: float | None = None
    gpu: float | None = None
    ram: float | None = None


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
    process does; see `carbonspan.codecarbon_source.CpuSplit`).
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


@dataclass(frozen=True, slots=True)
class Measurement:
    """What one request was charged.

    - `duration` (s): from the request's start to the close of its window,
      which comes just before its final response body is sent.
    - `active` (s): `duration` less the seconds it waited on its client (a
      body trickling in, a slow reader): those are not charged.
    - `cpu`, `gpu`, `ram` (J): the energy charged per component; `None`
      where the component is not measured, or before the first reading.
    - `concurrency`: the mean number of requests that shared the process's
      power while this one was active (1.0 alone).
    - `attribution`: the policy that charged it, `time_share` or `cpu_time`
      (a `cpu_time` request outside asyncio falls back on `time_share`).
    - `cpu_power`, `gpu_power`, `ram_power` (W): the process's mean power on
      that component while the request was active; `None` where the
      component is not measured.

    `total` (J) is the sum of the measured components, `None` if none is.
    """

    duration: float
    active: float
    cpu: float | None = None
    gpu: float | None = None
    ram: float | None = None
    concurrency: float = 1.0
    attribution: str = "time_share"
    cpu_power: float | None = None
    gpu_power: float | None = None
    ram_power: float | None = None

    @property
    def total(self) -> float | None:
        """J: the sum of the measured components, `None` if none is."""
        total = None
        for joules in (self.cpu, self.gpu, self.ram):
            if joules is not None:
                total = joules if total is None else total + joules
        return total

    def power(self, component: str) -> float | None:
        """W: the process's mean power on `component` ("cpu", "gpu" or "ram")."""
        watts: float | None = getattr(self, f"{component}_power")
        return watts


@dataclass(frozen=True)
class EnergyTotals:
    """What one sampler has measured since it started, and how it was shared
    out: joules per measured component ("cpu", "gpu", "ram"; a component that
    is not measured has no key). Under `scope="process"` the source reports
    this process's share of the machine, under `scope="machine"` all of it.

    - `measured` (J): what the power source reported, up to its last reading.
    - `attributed` (J): charged to requests that have closed, up to now.
    - `unattributed` (J): drawn with no request in flight, by excluded
      requests, and the corrections of requests' tails, up to the last
      reading. It can dip below 0 where tails were guessed too high.
    - `open` (J): held at the last reading by the requests open then.
    - `power` (W): the source's mean power over the last interval.
    - `in_flight`: the requests open now.

    At a reading, measured == attributed + unattributed + open. Between two
    readings, the requests that closed since are in `attributed` already,
    and still in `open` as of the last reading.
    """

    measured: dict[str, float]
    attributed: dict[str, float]
    unattributed: dict[str, float]
    open: dict[str, float]
    power: dict[str, float]
    in_flight: int


__all__ = [
    "COMPONENTS",
    "EnergyReading",
    "EnergyTotals",
    "HardwareInfo",
    "Measurement",
    "PowerSource",
    "SourceScope",
]
