"""`CodeCarbonPowerSource`: CodeCarbon's CPU and RAM models (and RAPL), with
NVML for GPUs, integrated into cumulative joules.

Every use of CodeCarbon's private API is in the last section of this module,
checked against codecarbon 3.3.2 (each has a fallback if it moves).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Protocol

import psutil

from carbonspan.nvml import NvmlGpus
from carbonspan.source import EnergyReading, HardwareInfo, SourceScope

_log = logging.getLogger(__name__)

RAM_REFRESH = 30.0  # seconds between two asks of CodeCarbon's RAM model
_CPU_FALLBACK = (
    "carbonspan: CPU detection failed; CPU energy falls back on a constant half "
    "of the TDP, CodeCarbon's constant model (codecarbon.measurement.cpu=tdp)"
)


class CodeCarbonPowerSource:
    """CodeCarbon's hardware readings, integrated into cumulative joules.

    Hardware detection (about 2 s cold, mostly py-cpuinfo) runs on the first
    `read()`, which the sampler calls from its own thread, never on a request.
    It never touches the network.

    With ``scope="process"`` the machine's power is scaled by this process's
    share: CPU by its CPU time over the machine's busy CPU time, RAM by its
    resident memory over the machine's used memory, GPU by NVML's per-process
    utilisation where the driver offers it. With ``scope="machine"`` the whole
    machine is charged.
    """

    def __init__(self, scope: SourceScope = "process", *, gpu: bool = True) -> None:
        if scope not in ("process", "machine"):
            raise ValueError(
                f"scope: {scope!r} is not accepted; use 'process' or 'machine'"
            )
        self.scope: SourceScope = scope
        self._want_gpu = gpu
        self._ready = False
        self._cpu: _CpuMeter = _ConstantCpu(0.0)
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
        self._cpu_share: float | None = None  # the last interval's, see below
        self._machine_times = True  # psutil reads the machine's CPU times
        self._failing: set[str] = set()  # components whose failure was logged

    # -- detection --------------------------------------------------------

    def _detect(self) -> None:
        measurement: dict[str, str] = {}
        cpu_model: str | None = None
        try:
            self._cpu, measurement["cpu"], cpu_model = _detect_cpu()
        except Exception:
            _log.warning(_CPU_FALLBACK, exc_info=True)
            self._cpu, measurement["cpu"], cpu_model = _ConstantCpu.fallback()
        try:
            from codecarbon.external.ram import RAM

            self._ram = RAM(tracking_mode="machine")
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
            _log.warning(_CPU_FALLBACK, exc_info=True)
            self._cpu, measurement["cpu"], cpu_model = _ConstantCpu.fallback()
        busy = self._cpu.busy_watts()
        self._info = HardwareInfo(
            cpu_model=cpu_model,
            gpu_model=gpu_model,
            gpu_count=gpu_count,
            measurement=measurement,
            busy_watts={"cpu": busy} if busy is not None else {},
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

    def reserved_share(self) -> float | None:
        """The share of the machine charged to the process in the last
        interval, by the rule for CPU energy: its CPU time over the machine's
        busy CPU time (1.0 under ``scope="machine"``; None before an
        interval was measured). Embodied emissions use it as SCI's
        resources reserved over total resources."""
        return 1.0 if self.scope == "machine" else self._cpu_share

    # -- internals ---------------------------------------------------------

    def _reading(self, at: float) -> EnergyReading:
        return EnergyReading(
            time=at,
            cpu=self._total.get("cpu"),
            gpu=self._total.get("gpu"),
            ram=self._total.get("ram"),
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
        proc_cpu, machine_busy = self._cpu_times(self._cpu.machine_times())
        if self.scope == "process":
            busy = machine_busy - self._last_machine_busy
            used = proc_cpu - self._last_proc_cpu
            share = min(max(used / busy, 0.0), 1.0) if busy > 0 else 0.0
            joules *= share
            self._cpu_share = share
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
            self._share = _memory_share(self._process)
        return self._share

    def _ram_watts(self) -> float:
        # CodeCarbon's machine RAM model depends on the installed memory only:
        # ask it again every RAM_REFRESH seconds, not at every read.
        now = time.monotonic()
        if now - self._ram_at >= RAM_REFRESH:
            self._ram_at = now
            self._ram_w = float(self._ram.total_power().W)
        return self._ram_w

    def _cpu_times(self, machine: Any = None) -> tuple[float, float]:
        """This process's CPU seconds, and the machine's busy CPU seconds.

        `machine` is psutil's machine CPU times if already read. Where psutil
        cannot read them, the machine's capacity (logical CPUs x monotonic
        seconds) stands in for its busy time from then on: the process is
        charged its share of the whole machine.
        """
        proc = os.times()
        own = proc.user + proc.system
        if self._machine_times:
            try:
                if machine is None:
                    machine = psutil.cpu_times()
                idle = machine.idle + getattr(machine, "iowait", 0.0)
                total = sum(machine) - getattr(machine, "guest", 0.0)
                total -= getattr(machine, "guest_nice", 0.0)
                return own, float(total - idle)
            except Exception:
                self._machine_times = False
                _log.warning(
                    "carbonspan: psutil cannot read the machine's CPU times; the "
                    "process's CPU share is taken of the machine's capacity",
                    exc_info=True,
                )
        return own, (os.cpu_count() or 1) * time.monotonic()


class _CpuMeter(Protocol):
    """The machine's CPU power model, integrated over an interval."""

    def start(self) -> None: ...
    def joules(self, dt: float) -> float: ...
    def busy_watts(self) -> float | None: ...
    def machine_times(self) -> Any: ...


class _CodeCarbonCpu:
    """CodeCarbon's CPU object (RAPL, its load model or its constant model)."""

    def __init__(self, hw: Any, method: str) -> None:
        self.hw = hw
        self.method = method

    def start(self) -> None:
        self.hw.start()

    def joules(self, dt: float) -> float:
        _, energy = self.hw.measure_power_and_energy(last_duration=dt)
        return float(energy.kWh) * 3.6e6

    def busy_watts(self) -> float | None:
        """What CodeCarbon's CPU model says one busy core draws, on an idle
        machine.

        A process that serves one request at a time keeps one core busy:
        under `cpu_load` the machine's load is then 1/N of its N CPUs, and
        CodeCarbon's machine model gives TDP x (0.1 + 0.9 x load^3)
        (codecarbon 3.3, `CPU._get_power_from_cpu_load`). RAPL measures: no
        model to ask.
        """
        tdp = _model_tdp(self.hw)
        if self.method != "cpu_load" or tdp is None:
            return None
        load = 1.0 / (os.cpu_count() or 1)
        return tdp * (0.1 + 0.9 * load**3)

    def machine_times(self) -> Any:
        return _load_meter_times(self.hw)


class _ConstantCpu:
    """CodeCarbon's constant CPU model, without CodeCarbon: half the TDP, always.

    The fallback when CodeCarbon's CPU detection fails. The TDP is CodeCarbon's
    for the CPU model where its table can still be read, otherwise its default
    of 4 W per logical CPU.
    """

    SHARE = 0.5  # codecarbon.external.hardware.CONSUMPTION_PERCENTAGE_CONSTANT
    WATTS_PER_CPU = 4.0  # codecarbon.core.cpu.DEFAULT_POWER_PER_CORE

    def __init__(self, tdp: float) -> None:
        self.watts = tdp * self.SHARE

    @classmethod
    def fallback(cls) -> tuple[_ConstantCpu, str, str | None]:
        model = tdp = None
        try:
            model = cpu_model()
            tdp = _registry_tdp(model) if model else None
        except Exception:
            pass
        if tdp is None:
            tdp = (os.cpu_count() or 1) * cls.WATTS_PER_CPU
        return cls(tdp), "tdp", model

    def start(self) -> None:
        pass

    def joules(self, dt: float) -> float:
        return self.watts * dt

    def busy_watts(self) -> float | None:
        return self.watts  # the same at any load

    def machine_times(self) -> Any:
        return None


def _detect_cpu() -> tuple[_CodeCarbonCpu, str, str | None]:
    """CodeCarbon's CPU object in machine mode, and how it measures."""
    from codecarbon.core import cpu as cc_cpu
    from codecarbon.core.util import count_cpus, count_physical_cpus, is_linux_os
    from codecarbon.external.hardware import CPU, MODE_CPU_LOAD

    if is_linux_os() and cc_cpu.is_rapl_available():
        hw = CPU.from_utils(".", "intel_rapl", tracking_mode="machine")
        return _CodeCarbonCpu(hw, "rapl"), "rapl", cpu_model()
    model = cpu_model()
    tdp = _registry_tdp(model) if model else None
    if model and tdp is None:  # CodeCarbon's own fallback for a model it lacks
        tdp = float(count_cpus() * cc_cpu.DEFAULT_POWER_PER_CORE)
    max_power = tdp * count_physical_cpus() if tdp is not None else None
    mode, label = (MODE_CPU_LOAD, "cpu_load")
    if not cc_cpu.is_psutil_available():
        mode, label = ("constant", "tdp")
    hw = CPU.from_utils(
        ".", mode, model or "Unknown", max_power, tracking_mode="machine"
    )
    return _CodeCarbonCpu(hw, label), label, model or "Unknown"


def cpu_model() -> str | None:
    """The CPU's brand string, read without starting a process where possible.

    CodeCarbon asks py-cpuinfo, which runs a second Python interpreter: slow,
    and under `opentelemetry-instrument` that child instruments itself too.
    On Linux /proc/cpuinfo has the same string.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    return value.strip()
    except OSError:
        pass
    try:
        from codecarbon.core.util import detect_cpu_model

        model: str | None = detect_cpu_model()
        return model
    except Exception:
        return None


def _memory_share(process: psutil.Process) -> float:
    vm = psutil.virtual_memory()
    used = float(vm.total - vm.available)
    if used <= 0:
        return 0.0
    return min(float(process.memory_info().rss) / used, 1.0)


# -- CodeCarbon's private API (checked against codecarbon 3.3.2) -------------


def _registry_tdp(model: str) -> float | None:
    """The TDP (W) of `model` in CodeCarbon's CPU power table, or None.

    `TDP._get_cpu_power_from_registry` is its lookup; `TDP()` itself would
    also run its hardware detection, hence `__new__`.
    """
    from codecarbon.core import cpu as cc_cpu

    table = cc_cpu.TDP.__new__(cc_cpu.TDP)
    power = table._get_cpu_power_from_registry(model)
    return float(power) if power else None


def _model_tdp(hw: Any) -> float | None:
    """The TDP (W) CodeCarbon's CPU object models with (`CPU._tdp`)."""
    tdp = getattr(hw, "_tdp", None)
    return float(tdp) if isinstance(tdp, (int, float)) and tdp > 0 else None


def _load_meter_times(hw: Any) -> Any:
    """The psutil CPU times CodeCarbon's load model has just read, if it has
    (`CPU._cpu_load_meter._last_times`): reusing them spares the sampler a
    second read of /proc/stat per tick."""
    meter = getattr(hw, "_cpu_load_meter", None)
    times = getattr(meter, "_last_times", None)
    return times if hasattr(times, "idle") else None
