"""CodeCarbon's CPU power models behind one small interface, `CpuMeter`:
RAPL, its load model, its constant model, and a constant fallback when its
detection fails.

Every use of CodeCarbon's private API is in the last section of this module,
checked against codecarbon 3.3.2; each falls back on public behaviour if it
moves.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

from carbonspan.emissions import JOULES_PER_KWH

CPU_FALLBACK = (
    "carbonspan: CPU detection failed; CPU energy falls back on a constant half "
    "of the TDP, CodeCarbon's constant model (codecarbon.measurement.cpu=tdp)"
)


#: CodeCarbon's load model: the machine's CPU draws TDP x (IDLE_SHARE +
#: (1 - IDLE_SHARE) x load^3) (codecarbon 3.3, `CPU._get_power_from_cpu_load`).
IDLE_SHARE = 0.1


class CpuMeter(Protocol):
    """The machine's CPU power model, integrated over an interval."""

    def start(self) -> None: ...
    def joules(self, dt: float) -> float: ...
    def busy_watts(self) -> float | None: ...
    def idle_watts(self) -> float | None: ...
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
        return float(energy.kWh) * JOULES_PER_KWH

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
        return tdp * (IDLE_SHARE + (1 - IDLE_SHARE) * load**3)

    def idle_watts(self) -> float | None:
        """What CodeCarbon's CPU model draws at no load: 10% of the TDP under
        `cpu_load`, the constant under `tdp`; None where RAPL measures."""
        tdp = _model_tdp(self.hw)
        if tdp is None or self.method == "rapl":
            return None
        return tdp * (IDLE_SHARE if self.method == "cpu_load" else ConstantCpu.SHARE)

    def machine_times(self) -> Any:
        return _load_meter_times(self.hw)


class ConstantCpu:
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
    def fallback(cls) -> tuple[ConstantCpu, str, str | None]:
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

    def idle_watts(self) -> float | None:
        return self.watts

    def machine_times(self) -> Any:
        return None


def detect_cpu() -> tuple[_CodeCarbonCpu, str, str | None]:
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
