"""`CodeCarbonPowerSource`: CodeCarbon's CPU and RAM models (and RAPL), with
NVML for GPUs, integrated into cumulative joules, whole machine or this
process's share."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import psutil

from carbonspan import codecarbon_api as cc
from carbonspan.power.cpu import CPU_FALLBACK, ConstantCpu, CpuMeter, detect_cpu
from carbonspan.power.nvml import NvmlGpus
from carbonspan.power.proc_stat import MachineCpuTimes
from carbonspan.power.process_share import IDLE_POWER, CpuSplit, memory_share
from carbonspan.power.source import EnergyReading, HardwareInfo, SourceScope

_log = logging.getLogger(__name__)

CONSTANT_PROCESS = (
    "carbonspan: CodeCarbon's constant CPU model cannot tell what this process "
    "draws (its power is the same at any load); CPU energy is not measured "
    "under scope='process' (scope='machine' charges the whole machine's)"
)
CONSTANT_MACHINE = (
    "carbonspan: CodeCarbon has neither RAPL nor its CPU load model here (it "
    "cannot read the CPU load); CPU energy is its constant model, half the TDP "
    "whatever the load (codecarbon.measurement.cpu=tdp)"
)
RAM_REFRESH = 30.0  # seconds between two asks of CodeCarbon's RAM model


class CodeCarbonPowerSource:
    """CodeCarbon's hardware readings, integrated into cumulative joules.

    Hardware detection (about 2 s cold, mostly py-cpuinfo) runs on the first
    `read()`, which the sampler calls from its own thread, never on a request.
    It never touches the network.

    With ``scope="process"`` the machine's power is scaled by this process's
    share: CPU by its CPU time over the machine's busy CPU time (the dynamic
    power interval by interval, the idle power over the last minute: see
    `CpuSplit`), RAM by its resident memory over the machine's used memory,
    GPU by NVML's per-process utilisation where the driver offers it. With
    ``scope="machine"`` the whole machine is charged.
    """

    def __init__(self, scope: SourceScope = "process", *, gpu: bool = True) -> None:
        if scope not in ("process", "machine"):
            raise ValueError(
                f"scope: {scope!r} is not accepted; use 'process' or 'machine'"
            )
        self.scope: SourceScope = scope
        self._want_gpu = gpu
        self._ready = False
        self._cpu: CpuMeter = ConstantCpu(0.0)
        self._ram: Any = None  # CodeCarbon's RAM model
        self._gpu: NvmlGpus | None = None
        self._info = HardwareInfo()
        self._last_time = 0.0
        self._total: dict[str, float] = {}
        self._pid = os.getpid()
        self._process = psutil.Process(self._pid)
        self._last_proc_cpu = 0.0
        self._last_machine_busy = 0.0
        self._ram_w = 0.0
        self._ram_at = -RAM_REFRESH
        self._share = 0.0
        self._share_at = -1.0
        self._split = CpuSplit(None, None)
        self._cpu_share: float | None = None  # the last interval's, see below
        self._machine = MachineCpuTimes()
        self._machine_times = True  # the machine's CPU times can be read
        self._failing: set[str] = set()  # components whose failure was logged

    # -- detection --------------------------------------------------------

    def _detect(self) -> None:
        measurement: dict[str, str] = {}
        cpu_model: str | None = None
        try:
            self._cpu, measurement["cpu"], cpu_model = detect_cpu(self._machine)
            if measurement["cpu"] == "tdp" and self.scope == "machine":
                _log.warning(CONSTANT_MACHINE)
        except Exception:
            _log.warning(CPU_FALLBACK, exc_info=True)
            self._cpu, measurement["cpu"], cpu_model = ConstantCpu.fallback()
        try:
            self._ram = cc.ram_model()
            measurement["ram"] = "model"
        except Exception:
            _log.warning(
                "RAM detection failed; RAM energy is not measured", exc_info=True
            )
        gpu_model: str | None = None
        gpu_count: int | None = None
        if self._want_gpu:
            self._gpu = NvmlGpus.detect()
            if self._gpu is not None:
                measurement["gpu"] = "nvml"
                gpu_model, gpu_count = self._gpu.model, self._gpu.count
        now = time.monotonic()
        self._last_time = now
        self._total = {name: 0.0 for name in measurement}
        self._last_proc_cpu, self._last_machine_busy = self._cpu_times()
        try:
            self._cpu.start()
        except Exception:
            _log.warning(CPU_FALLBACK, exc_info=True)
            self._cpu, measurement["cpu"], cpu_model = ConstantCpu.fallback()
        busy, idle = self._cpu.busy_watts(), self._cpu.idle_watts()
        if self.scope == "process":
            core = busy - idle if busy is not None and idle is not None else None
            self._split = CpuSplit(idle, core)
            busy = core  # what a busy core adds: all the process causes
            if measurement.get("cpu") == "tdp":
                # A constant power is all idle power: none of it is the process's.
                _log.warning(CONSTANT_PROCESS)
                del measurement["cpu"], self._total["cpu"]
                busy = None
        self._info = HardwareInfo(
            cpu_model=cpu_model,
            gpu_model=gpu_model,
            gpu_count=gpu_count,
            measurement=measurement,
            busy_watts={"cpu": busy} if busy is not None else {},
            idle_watts={"cpu": idle} if idle is not None else {},
            idle_power=IDLE_POWER[self.scope],
        )
        self._ready = True

    # -- PowerSource -----------------------------------------------------

    def read(self) -> EnergyReading:
        """Cumulative joules; one reader at a time (the sampler)."""
        if not self._ready:
            self._detect()
            return self._reading(self._last_time)
        if os.getpid() != self._pid:  # forked: measure the child from here on
            self._pid = os.getpid()
            self._process = psutil.Process(self._pid)
            self._last_proc_cpu, self._last_machine_busy = self._cpu_times()
        now = time.monotonic()
        dt = now - self._last_time
        self._last_time = now
        if dt > 0:
            self._integrate(dt)
        return self._reading(now)

    def describe(self) -> HardwareInfo:
        return self._info

    # -- internals ---------------------------------------------------------

    def _reading(self, at: float) -> EnergyReading:
        # The share of the machine charged to the process in the interval, by
        # the rule for CPU energy: its CPU time over the machine's busy CPU
        # time (0 before an interval was measured); the whole machine under
        # scope="machine". Embodied emissions use it as SCI's resources
        # reserved over total resources.
        share = None if self.scope == "machine" else (self._cpu_share or 0.0)
        return EnergyReading(
            time=at,
            cpu=self._total.get("cpu"),
            gpu=self._total.get("gpu"),
            ram=self._total.get("ram"),
            share=share,
        )

    def _integrate(self, dt: float) -> None:
        # Each component on its own: one that fails (a GPU driver gone, a
        # /proc file unreadable) adds nothing for the interval, and the
        # others are still measured.
        for name, joules in (
            ("cpu", self._cpu_joules),
            ("ram", self._ram_joules),
            ("gpu", self._gpu_joules),
        ):
            if name not in self._total:
                continue
            try:
                self._total[name] += joules(dt)
            except Exception:
                if name not in self._failing:
                    self._failing.add(name)
                    _log.warning(
                        "carbonspan: measuring %s energy failed; it is counted as "
                        "0 J while this goes on (logged once)",
                        name,
                        exc_info=True,
                    )

    def _cpu_joules(self, dt: float) -> float:
        joules = self._cpu.joules(dt)
        proc_cpu, machine_busy = self._cpu_times(self._cpu.machine_busy())
        if self.scope == "process":
            used = proc_cpu - self._last_proc_cpu
            busy = machine_busy - self._last_machine_busy
            joules = self._split.process_joules(joules, dt, used, busy)
            self._cpu_share = self._split.share
        self._last_proc_cpu, self._last_machine_busy = proc_cpu, machine_busy
        return joules

    def _ram_joules(self, dt: float) -> float:
        watts = self._ram_watts()
        if self.scope == "process":
            watts *= self._memory_share()
        return watts * dt

    def _gpu_joules(self, dt: float) -> float:
        assert self._gpu is not None
        return self._gpu.joules(dt, os.getpid() if self.scope == "process" else None)

    def _memory_share(self) -> float:
        # RSS over the machine's used memory moves slowly, and reading it
        # costs two /proc files: refresh it once a second.
        now = time.monotonic()
        if now - self._share_at >= 1.0:
            self._share_at = now
            self._share = memory_share(self._process)
        return self._share

    def _ram_watts(self) -> float:
        # CodeCarbon's machine RAM model depends on the installed memory only:
        # ask it again every RAM_REFRESH seconds, not at every read.
        now = time.monotonic()
        if now - self._ram_at >= RAM_REFRESH:
            self._ram_at = now
            self._ram_w = cc.ram_watts(self._ram)
        return self._ram_w

    def _cpu_times(self, machine_busy: float | None = None) -> tuple[float, float]:
        """This process's CPU seconds, and the machine's busy CPU seconds.

        `machine_busy` is the machine's busy seconds if the CPU model has
        just read them. Where they cannot be read, the machine's capacity
        (logical CPUs x monotonic seconds) stands in for its busy time from
        then on: the process is charged its share of the whole machine.
        """
        # The process's CPU clock (ns resolution), not `os.times()`, which
        # counts in 10 ms clock ticks: a 5 ms request read 0 or 10 ms.
        own = time.process_time()
        if machine_busy is not None:
            return own, machine_busy
        if self._machine_times:
            try:
                return own, self._machine.read()[0]
            except Exception:
                self._machine_times = False
                _log.warning(
                    "carbonspan: the machine's CPU times cannot be read; the "
                    "process's CPU share is taken of the machine's capacity",
                    exc_info=True,
                )
        return own, (os.cpu_count() or 1) * time.monotonic()
