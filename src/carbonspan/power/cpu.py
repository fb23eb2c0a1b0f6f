"""CodeCarbon's CPU power models behind one small interface, `CpuMeter`:
RAPL, its load model, its constant model, and a constant fallback when its
detection fails. (What they take from CodeCarbon is in
`carbonspan.codecarbon_api`.)"""

from __future__ import annotations

import os
from typing import Any, Protocol

from carbonspan import codecarbon_api as cc

CPU_FALLBACK = (
    "carbonspan: CPU detection failed; CPU energy falls back on a constant half "
    "of the TDP, CodeCarbon's constant model (codecarbon.measurement.cpu=tdp)"
)


#: CodeCarbon's load model: the machine's CPU draws TDP x (IDLE_SHARE +
#: (1 - IDLE_SHARE) x load^3) (codecarbon 3.3, `CPU._get_power_from_cpu_load`).
IDLE_SHARE = 0.1


class CpuMeter(Protocol):
    """The machine's CPU power model, integrated over an interval."""

    def start(self) -> None:
        """Begin measuring (RAPL reads its first counter value)."""
        ...

    def joules(self, dt: float) -> float:
        """J the machine's CPU drew over the last `dt` seconds."""
        ...

    def busy_watts(self) -> float | None:
        """W with one core busy on an idle machine; None where it measures."""
        ...

    def idle_watts(self) -> float | None:
        """W at no load; None where it measures."""
        ...

    def machine_times(self) -> Any:
        """psutil's machine CPU times as just read by the model, or None."""
        ...


class CodeCarbonCpu:
    """CodeCarbon's CPU object (RAPL, its load model or its constant model)."""

    def __init__(self, hw: Any, method: str) -> None:
        self.hw = hw
        self.method = method

    def start(self) -> None:
        self.hw.start()

    def joules(self, dt: float) -> float:
        return cc.cpu_joules(self.hw, dt)

    def busy_watts(self) -> float | None:
        """What CodeCarbon's CPU model says one busy core draws, on an idle
        machine.

        A process that serves one request at a time keeps one core busy:
        under `cpu_load` the machine's load is then 1/N of its N CPUs, and
        CodeCarbon's machine model gives TDP x (0.1 + 0.9 x load^3). RAPL
        measures: no model to ask.
        """
        tdp = cc.model_tdp(self.hw)
        if self.method != "cpu_load" or tdp is None:
            return None
        load = 1.0 / (os.cpu_count() or 1)
        return tdp * (IDLE_SHARE + (1 - IDLE_SHARE) * load**3)

    def idle_watts(self) -> float | None:
        """What CodeCarbon's CPU model draws at no load: 10% of the TDP under
        `cpu_load`, the constant under `tdp`; None where RAPL measures."""
        tdp = cc.model_tdp(self.hw)
        if tdp is None or self.method == "rapl":
            return None
        return tdp * (IDLE_SHARE if self.method == "cpu_load" else cc.CONSTANT_SHARE)

    def machine_times(self) -> Any:
        return cc.load_meter_times(self.hw)


class ConstantCpu:
    """CodeCarbon's constant CPU model, without CodeCarbon: half the TDP, always.

    The fallback when CodeCarbon's CPU detection fails. The TDP is CodeCarbon's
    for the CPU model where its table can still be read, otherwise its default
    of 4 W per logical CPU.
    """

    def __init__(self, tdp: float) -> None:
        self.watts = tdp * cc.CONSTANT_SHARE

    @classmethod
    def fallback(cls) -> tuple[ConstantCpu, str, str | None]:
        model = cpu_model()
        tdp = cc.registry_tdp(model) if model else None
        if tdp is None:
            tdp = (os.cpu_count() or 1) * cc.WATTS_PER_CPU
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


def detect_cpu() -> tuple[CodeCarbonCpu, str, str | None]:
    """CodeCarbon's CPU object in machine mode, and how it measures."""
    method = cc.cpu_method()
    model = cpu_model()
    if method == "rapl":
        return CodeCarbonCpu(cc.cpu_hardware(method, "", None), method), method, model
    tdp = cc.registry_tdp(model) if model else None
    logical, physical = cc.cpu_counts()
    if model and tdp is None:  # CodeCarbon's own fallback for a model it lacks
        tdp = logical * cc.watts_per_cpu()
    max_power = tdp * physical if tdp is not None else None
    hw = cc.cpu_hardware(method, model or "Unknown", max_power)
    return CodeCarbonCpu(hw, method), method, model or "Unknown"


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
    return cc.detected_cpu_model()
