"""Where joules come from: the PowerSource protocol and CodeCarbon's hardware.

A power source reports *cumulative* joules per component since it started, at a
`time.monotonic()` instant. Everything downstream (sampler, ledger) only ever
takes differences of these readings, so a source is free to integrate power
itself (models) or to read a hardware energy counter (RAPL, NVML).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Literal, Protocol, runtime_checkable

import psutil

_log = logging.getLogger(__name__)

Scope = Literal["process", "machine"]
COMPONENTS = ("cpu", "gpu", "ram")
RAM_REFRESH = 30.0  # seconds between two asks of CodeCarbon's RAM model


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
    """

    cpu_model: str | None = None
    gpu_model: str | None = None
    gpu_count: int | None = None
    measurement: dict[str, str] = field(default_factory=dict)
    busy_watts: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class PowerSource(Protocol):
    """Anything that can report cumulative joules per component."""

    def read(self) -> EnergyReading:
        """Cumulative joules since the source started, per component."""
        ...

    def describe(self) -> HardwareInfo:
        """Hardware models and the measurement method per component."""
        ...


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

    def __init__(self, scope: Scope = "process", *, gpu: bool = True) -> None:
        if scope not in ("process", "machine"):
            raise ValueError(
                f"scope: {scope!r} is not accepted; use 'process' or 'machine'"
            )
        self.scope: Scope = scope
        self._want_gpu = gpu
        self._ready = False
        self._cpu: Any = None
        self._ram: Any = None
        self._gpu: _NvmlGpu | None = None
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
            self._gpu = _NvmlGpu.detect()
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
        busy = _busy_cpu_watts(self._cpu, measurement["cpu"])
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
        _, energy = self._cpu.measure_power_and_energy(last_duration=dt)
        joules = float(energy.kWh) * 3.6e6
        proc_cpu, machine_busy = self._cpu_times(_load_meter_times(self._cpu))
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

        Where psutil cannot read the machine's CPU times, its capacity
        (logical CPUs x monotonic seconds) stands in for its busy time from
        then on: the process is charged its share of the whole machine.
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


def _detect_cpu() -> tuple[Any, str, str | None]:
    """CodeCarbon's CPU object in machine mode, and how it measures."""
    from codecarbon.core import cpu as cc_cpu
    from codecarbon.core.util import count_physical_cpus, is_linux_os
    from codecarbon.external.hardware import CPU, MODE_CPU_LOAD

    if is_linux_os() and cc_cpu.is_rapl_available():
        hw = CPU.from_utils(".", "intel_rapl", tracking_mode="machine")
        return hw, "rapl", cpu_model()
    model, tdp = _cpu_tdp(cc_cpu)
    max_power = tdp * count_physical_cpus() if tdp is not None else None
    mode, label = (MODE_CPU_LOAD, "cpu_load")
    if not cc_cpu.is_psutil_available():
        mode, label = ("constant", "tdp")
    hw = CPU.from_utils(".", mode, model, max_power, tracking_mode="machine")
    return hw, label, model


def _busy_cpu_watts(cpu: Any, method: str) -> float | None:
    """What CodeCarbon's CPU model says one busy core draws, on an idle machine.

    A process that serves one request at a time keeps one core busy: under
    `cpu_load` the machine's load is then 1/N of its N CPUs, and CodeCarbon's
    machine model gives TDP x (0.1 + 0.9 x load^3) (codecarbon 3.3,
    `CPU._get_power_from_cpu_load`); under the constant model it is half the
    TDP at any load. RAPL measures: no model to ask.
    """
    if isinstance(cpu, _ConstantCpu):
        return cpu.watts
    tdp = getattr(cpu, "_tdp", None)  # CodeCarbon's CPU keeps its TDP here
    if method != "cpu_load" or not isinstance(tdp, (int, float)) or tdp <= 0:
        return None
    load = 1.0 / (os.cpu_count() or 1)
    return float(tdp) * (0.1 + 0.9 * load**3)


_CPU_FALLBACK = (
    "carbonspan: CPU detection failed; CPU energy falls back on a constant half "
    "of the TDP, CodeCarbon's constant model (codecarbon.measurement.cpu=tdp)"
)


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
            from codecarbon.core import cpu as cc_cpu

            model = cpu_model()
            table = cc_cpu.TDP.__new__(cc_cpu.TDP)
            power = table._get_cpu_power_from_registry(model) if model else None
            tdp = float(power) if power else None
        except Exception:
            pass
        if tdp is None:
            tdp = (os.cpu_count() or 1) * cls.WATTS_PER_CPU
        return cls(tdp), "tdp", model

    def start(self) -> None:
        pass

    def measure_power_and_energy(self, last_duration: float) -> tuple[Any, Any]:
        kwh = self.watts * last_duration / 3.6e6
        return None, SimpleNamespace(kWh=kwh)


def _load_meter_times(cpu: Any) -> Any:
    """The /proc/stat times CodeCarbon's load model has just read, if it has.

    Reusing them spares the sampler a second read of /proc/stat per tick.
    """
    meter = getattr(cpu, "_cpu_load_meter", None)
    times = getattr(meter, "_last_times", None)
    return times if hasattr(times, "idle") else None


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


def _cpu_tdp(cc_cpu: Any) -> tuple[str, float | None]:
    """CodeCarbon's TDP for the model, from its CPU power table, as it computes it."""
    from codecarbon.core.util import count_cpus

    model = cpu_model()
    if not model:
        return "Unknown", None
    table = cc_cpu.TDP.__new__(cc_cpu.TDP)  # its lookup, without its detection
    power = table._get_cpu_power_from_registry(model)
    if power:
        return model, float(power)
    # CodeCarbon's own fallback for a model missing from its table.
    return model, float(count_cpus() * cc_cpu.DEFAULT_POWER_PER_CORE)


def _memory_share(process: psutil.Process) -> float:
    vm = psutil.virtual_memory()
    used = float(vm.total - vm.available)
    if used <= 0:
        return 0.0
    return min(float(process.memory_info().rss) / used, 1.0)


class _NvmlGpu:
    """NVIDIA GPUs through NVML: the energy counter where the driver has one.

    With a pid, the device's energy is scaled by the pid's share of the SM
    utilisation NVML reports per process; where that is unsupported, by the
    pid's share of the memory used by processes on the device.
    """

    def __init__(self, nvml: Any, handles: list[Any], model: str) -> None:
        self._nvml = nvml
        self._handles = handles
        self.count = len(handles)
        self.model = model
        self._last_mj: list[int | None] = [self._energy_mj(h) for h in handles]
        self._last_seen = [0] * len(handles)

    @classmethod
    def detect(cls) -> _NvmlGpu | None:
        try:
            from codecarbon.core import gpu_nvidia

            if not gpu_nvidia.PYNVML_AVAILABLE or not gpu_nvidia.is_nvidia_system():
                return None
            nvml = gpu_nvidia.pynvml
            nvml.nvmlInit()
            count = nvml.nvmlDeviceGetCount()
            if count == 0:
                return None
            handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            names = [_text(nvml.nvmlDeviceGetName(h)) for h in handles]
            model = ", ".join(sorted(set(names)))
            return cls(nvml, handles, model)
        except Exception:
            _log.warning(
                "NVML detection failed; GPU energy is not measured", exc_info=True
            )
            return None

    def _energy_mj(self, handle: Any) -> int | None:
        try:
            return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(handle))
        except Exception:
            return None

    def joules(self, dt: float, pid: int | None) -> float:
        total = 0.0
        for i, handle in enumerate(self._handles):
            now_mj = self._energy_mj(handle)
            last_mj = self._last_mj[i]
            if now_mj is not None and last_mj is not None and now_mj >= last_mj:
                joules = (now_mj - last_mj) / 1000.0
            else:
                joules = self._nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0 * dt
            self._last_mj[i] = now_mj
            if pid is not None:
                joules *= self._share(i, handle, pid)
            total += joules
        return total

    def _share(self, index: int, handle: Any, pid: int) -> float:
        nvml = self._nvml
        try:
            samples = nvml.nvmlDeviceGetProcessUtilization(
                handle, self._last_seen[index]
            )
            if samples:
                self._last_seen[index] = max(s.timeStamp for s in samples)
                sm_all = float(sum(s.smUtil for s in samples))
                if sm_all > 0:
                    return (
                        float(sum(s.smUtil for s in samples if s.pid == pid)) / sm_all
                    )
        except Exception:
            pass
        try:
            procs = nvml.nvmlDeviceGetComputeRunningProcesses(handle)
        except Exception:
            return 0.0
        memory = {p.pid: (p.usedGpuMemory or 0) for p in procs}
        used = sum(memory.values())
        return memory.get(pid, 0) / used if used > 0 else 0.0


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
