"""Fake hardware, a clock a test moves by hand, and a recorder of readings.

Everything else is real in the tests that use these: the sampler thread, the
ledger, the app and the OpenTelemetry SDK. Only what is hardware (a power
meter, an NVIDIA driver) or time is faked. `Recorded` fakes nothing: it keeps
what a real source returned, the truth a test checks the ledger's books
against.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from carbonspan import EnergyReading, HardwareInfo, PowerSource
from carbonspan.testing import ConstantPowerSource


class Clock:
    """A monotonic clock the test moves by hand (`clock.now += seconds`)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Recorded:
    """A power source (`source`, a real one inside) that keeps every reading it
    returned: what the source itself said, independently of what the ledger
    made of it. `at(time)` is the reading taken at `time`."""

    def __init__(self, source: PowerSource) -> None:
        self.source = source
        self.readings: list[EnergyReading] = []
        self.by_time: dict[float, EnergyReading] = {}

    def read(self) -> EnergyReading:
        reading = self.source.read()
        self.by_time.setdefault(reading.time, reading)
        self.readings.append(reading)
        return reading

    def describe(self) -> HardwareInfo:
        return self.source.describe()

    @property
    def first(self) -> EnergyReading | None:
        return self.readings[0] if self.readings else None

    @property
    def last(self) -> EnergyReading | None:
        return self.readings[-1] if self.readings else None

    @property
    def reads(self) -> int:
        """The inner source's reads, where it counts them."""
        return int(getattr(self.source, "reads", len(self.readings)))

    def at(self, time: float | None) -> EnergyReading:
        """The reading the source returned at `time`."""
        assert time is not None, "no reading yet"
        return self.by_time[time]

    def joules(self, component: str, since: float | None, until: float | None) -> float:
        """J `component` drew between the readings at `since` and `until`,
        by the source's own cumulative counts."""
        first, last = self.at(since), self.at(until)
        return float(getattr(last, component) - getattr(first, component))


class BrokenSource(ConstantPowerSource):
    """Raises while `broken` is set, else behaves as a constant source."""

    def __init__(self) -> None:
        super().__init__(cpu=5.0)
        self.broken = True
        self.failures = 0

    def read(self) -> EnergyReading:
        if self.broken:
            self.failures += 1
            raise OSError("power meter unplugged")
        return super().read()


class BlockingSource(ConstantPowerSource):
    """Constant watts; while `block` is set, read() blocks until `release` is set
    (or `timeout` seconds pass). With `once`, the read that blocks clears
    `block`, so only that one waits."""

    def __init__(
        self,
        cpu: float = 5.0,
        ram: float | None = None,
        *,
        block: bool = True,
        once: bool = False,
        timeout: float = 30.0,
    ) -> None:
        super().__init__(cpu=cpu, ram=ram)
        self.block = block
        self.once = once
        self.timeout = timeout
        self.entered = threading.Event()
        self.release = threading.Event()

    def read(self) -> EnergyReading:
        if self.block:
            if self.once:
                self.block = False
            self.entered.set()
            self.release.wait(self.timeout)
        return super().read()


@dataclass(kw_only=True, eq=False)
class FakeNvml:
    """The pynvml calls carbonspan makes (through CodeCarbon), for fake GPUs.

    By default: two H100s, each counting 5 J more at every energy read and
    drawing 100 W, with this process on 30 of the 40 SM-utilisation points and
    a quarter of the GPU memory (another process has the rest). `idle()`: one
    GPU counting 50 mJ a read at 10 W, with no process on it.

    `energy_counter` or `per_process` False: those calls are not supported.
    `broken` (settable while running): the energy and power calls fail as on
    a lost GPU. `init_error`: nvmlInit() fails with that message.
    """

    devices: int = 2
    name: str | bytes = b"NVIDIA H100 80GB HBM3"
    mj_per_read: int = 5000
    milliwatts: int = 100_000
    processes: bool = True
    energy_counter: bool = True
    per_process: bool = True
    init_error: str | None = None
    broken: bool = field(default=False, init=False)
    mj: list[int] = field(init=False)
    other_pid: int = field(default_factory=lambda: os.getpid() + 1, init=False)

    def __post_init__(self) -> None:
        self.mj = [0] * self.devices

    @classmethod
    def idle(cls, *, init_error: str | None = None) -> FakeNvml:
        return cls(
            devices=1,
            name="NVIDIA Fake",
            mj_per_read=50,
            milliwatts=10_000,
            processes=False,
            init_error=init_error,
        )

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise RuntimeError(self.init_error)

    def nvmlDeviceGetCount(self) -> int:
        return self.devices

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetName(self, handle: int) -> str | bytes:
        return self.name

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        if self.broken:
            raise RuntimeError("NVML_ERROR_GPU_IS_LOST")
        if not self.energy_counter:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")
        self.mj[handle] += self.mj_per_read
        return self.mj[handle]

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        if self.broken:
            raise RuntimeError("NVML_ERROR_GPU_IS_LOST")
        return self.milliwatts

    def nvmlDeviceGetProcessUtilization(self, handle: int, since: int) -> list[Any]:
        if not self.per_process:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")
        if not self.processes:
            return [SimpleNamespace(pid=0, smUtil=0, timeStamp=since)]
        return [
            SimpleNamespace(pid=os.getpid(), smUtil=30, timeStamp=since + 1),
            SimpleNamespace(pid=self.other_pid, smUtil=10, timeStamp=since + 1),
        ]

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[Any]:
        if not self.processes:
            return []
        return [
            SimpleNamespace(pid=os.getpid(), usedGpuMemory=1 << 30),
            SimpleNamespace(pid=self.other_pid, usedGpuMemory=3 << 30),
        ]


def install_nvml(
    monkeypatch: pytest.MonkeyPatch, fake: FakeNvml, *, available: bool = True
) -> FakeNvml:
    """CodeCarbon finds `fake` as pynvml on an NVIDIA system, or (`available`
    False) finds no NVIDIA system and no pynvml."""
    from codecarbon.core import gpu_nvidia

    monkeypatch.setattr(gpu_nvidia, "PYNVML_AVAILABLE", available)
    monkeypatch.setattr(gpu_nvidia, "is_nvidia_system", lambda: available)
    monkeypatch.setattr(gpu_nvidia, "pynvml", fake)
    return fake
