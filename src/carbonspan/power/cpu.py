"""CodeCarbon's CPU power models behind one small interface, `CpuMeter`:
RAPL, its load model, its constant model, and a constant fallback when its
detection fails. (What they take from CodeCarbon is in
`carbonspan.codecarbon_api`.)"""

from __future__ import annotations

import os
from typing import Any, Protocol

from carbonspan import codecarbon_api as cc
from carbonspan.power.proc_stat import MachineCpuTimes

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

    def machine_busy(self) -> float | None:
        """The machine's busy CPU seconds as the model has just read them
        (None: it reads none)."""
        ...


def load_watts(tdp: float, load: float) -> float:
    """CodeCarbon's load model: W the machine's CPU draws at `load` (0-1)."""
    return tdp * (IDLE_SHARE + (1 - IDLE_SHARE) * load**3)


class LoadModel:
    """CodeCarbon's load model (`cpu_load`), on CodeCarbon's TDP, evaluated
    over each interval on the machine's CPU times as `MachineCpuTimes`
    reads them: the interval's load is its busy CPU seconds over all CPU
    seconds, as CodeCarbon's load meter computes it. Asking CodeCarbon's CPU
    object instead would read /proc/stat through psutil and build its power
    and energy objects at every tick, the larger part of the sampler's cost
    (docs/decisions.md, 79)."""

    def __init__(self, tdp: float, machine: MachineCpuTimes) -> None:
        self.tdp = tdp
        self._machine = machine
        self._busy = self._total = 0.0

    def start(self) -> None:
        self._busy, self._total = self._machine.read()

    def joules(self, dt: float) -> float:
        busy, total = self._machine.read()
        spent, elapsed = busy - self._busy, total - self._total
        self._busy, self._total = busy, total
        load = min(max(spent / elapsed, 0.0), 1.0) if elapsed > 0 else 0.0
        return load_watts(self.tdp, load) * dt

    def busy_watts(self) -> float | None:
        """What the model says one busy core draws, on an idle machine.

        A process that serves one request at a time keeps one core busy: the
        machine's load is then 1/N of its N CPUs.
        """
        return load_watts(self.tdp, 1.0 / (os.cpu_count() or 1))

    def idle_watts(self) -> float | None:
        """What the model draws at no load: 10% of the TDP."""
        return load_watts(self.tdp, 0.0)

    def machine_busy(self) -> float | None:
        return self._busy


class CodeCarbonCpu:
    """CodeCarbon's CPU object: RAPL or its constant model (`tdp`), or its
    load model where CodeCarbon gives no TDP to evaluate it on."""

    def __init__(self, hw: Any, method: str) -> None:
        self.hw = hw
        self.method = method

    def start(self) -> None:
        self.hw.start()

    def joules(self, dt: float) -> float:
        return cc.cpu_joules(self.hw, dt)

    def busy_watts(self) -> float | None:
        """None: RAPL measures, and the other models are not known to be
        evaluated on a TDP here."""
        return None

    def idle_watts(self) -> float | None:
        """The constant under `tdp`; None where RAPL measures."""
        tdp = cc.model_tdp(self.hw)
        if tdp is None or self.method != "tdp":
            return None
        return tdp * cc.CONSTANT_SHARE

    def machine_busy(self) -> float | None:
        return None


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

    def machine_busy(self) -> float | None:
        return None


def detect_cpu(
    machine: MachineCpuTimes,
) -> tuple[CpuMeter, str, str | None]:
    """The machine's CPU model, as CodeCarbon detects it, and how it measures."""
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
    modelled = cc.model_tdp(hw)  # the TDP CodeCarbon's object models with
    meter: CpuMeter = (
        LoadModel(modelled, machine)
        if method == "cpu_load" and modelled is not None
        else CodeCarbonCpu(hw, method)
    )
    return meter, method, model or "Unknown"


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
