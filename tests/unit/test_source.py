"""CodeCarbonPowerSource: real CPU and RAM models, NVML faked at the pynvml edge."""

from __future__ import annotations

import os
import socket
import time
from types import SimpleNamespace
from typing import Any

import pytest

from apps import burn
from carbonspan import CodeCarbonPowerSource, PowerSource
from carbonspan.testing import ConstantPowerSource, ScriptedPowerSource


class FakeNvml:
    """The pynvml calls carbonspan makes, for two GPUs."""

    def __init__(
        self, *, energy_counter: bool = True, per_process: bool = True
    ) -> None:
        self.energy_counter = energy_counter
        self.per_process = per_process
        self.mj = [0, 0]
        self.other_pid = os.getpid() + 1

    def nvmlInit(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        if not self.energy_counter:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")
        self.mj[handle] += 5000  # 5 J per read on each device
        return self.mj[handle]

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return 100_000  # mW

    def nvmlDeviceGetProcessUtilization(self, handle: int, since: int) -> list[Any]:
        if not self.per_process:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")
        return [
            SimpleNamespace(pid=os.getpid(), smUtil=30, timeStamp=since + 1),
            SimpleNamespace(pid=self.other_pid, smUtil=10, timeStamp=since + 1),
        ]

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[Any]:
        return [
            SimpleNamespace(pid=os.getpid(), usedGpuMemory=1 << 30),
            SimpleNamespace(pid=self.other_pid, usedGpuMemory=3 << 30),
        ]


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    from codecarbon.core import gpu_nvidia

    fake = FakeNvml()
    monkeypatch.setattr(gpu_nvidia, "PYNVML_AVAILABLE", True)
    monkeypatch.setattr(gpu_nvidia, "is_nvidia_system", lambda: True)
    monkeypatch.setattr(gpu_nvidia, "pynvml", fake)
    return fake


def test_gpu_energy_counter_scaled_by_the_process_share(nvml: FakeNvml) -> None:
    source = CodeCarbonPowerSource("process")
    first = source.read()
    assert first.gpu == 0.0
    info = source.describe()
    assert info.gpu_model == "NVIDIA H100 80GB HBM3"
    assert info.gpu_count == 2
    assert info.measurement["gpu"] == "nvml"
    second = source.read()
    # Two devices, 5 J each, this process has 30 of the 40 SM-utilisation points.
    assert second.gpu == pytest.approx(2 * 5.0 * 0.75)


def test_gpu_machine_scope_takes_the_whole_device(nvml: FakeNvml) -> None:
    source = CodeCarbonPowerSource("machine")
    source.read()
    assert source.read().gpu == pytest.approx(10.0)


def test_gpu_falls_back_on_power_and_memory_share(nvml: FakeNvml) -> None:
    nvml.energy_counter = False
    nvml.per_process = False
    source = CodeCarbonPowerSource("process")
    source.read()
    time.sleep(0.05)
    reading = source.read()
    assert reading.gpu is not None
    # 100 W on each of 2 devices, for this process's quarter of the GPU memory.
    elapsed = 0.05
    assert reading.gpu >= 2 * 100.0 * elapsed * 0.25 * 0.99
    assert reading.gpu <= 2 * 100.0 * 1.0 * 0.25


def test_broken_nvml_leaves_gpu_unmeasured(monkeypatch: pytest.MonkeyPatch) -> None:
    from codecarbon.core import gpu_nvidia

    class Broken(FakeNvml):
        def nvmlInit(self) -> None:
            raise RuntimeError("driver/library version mismatch")

    monkeypatch.setattr(gpu_nvidia, "PYNVML_AVAILABLE", True)
    monkeypatch.setattr(gpu_nvidia, "is_nvidia_system", lambda: True)
    monkeypatch.setattr(gpu_nvidia, "pynvml", Broken())
    source = CodeCarbonPowerSource()
    assert source.read().gpu is None
    assert "gpu" not in source.describe().measurement
    assert source.read().cpu is not None


def test_no_network_is_touched(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        raise OSError("network is off in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    source = CodeCarbonPowerSource()
    source.read()
    source.read()
    assert calls == []


def test_process_scope_is_a_share_of_the_machine() -> None:
    process = CodeCarbonPowerSource("process")
    machine = CodeCarbonPowerSource("machine")
    for s in (process, machine):
        s.read()
    burn(0.3)
    p, m = process.read(), machine.read()
    assert p.cpu is not None and m.cpu is not None and p.ram is not None
    assert m.ram is not None
    # Each source's load model samples /proc/stat at its own instants, so the
    # two windows differ by the microseconds between the reads: allow 25%.
    assert 0 < p.cpu <= m.cpu * 1.25
    assert 0 < p.ram < m.ram
    info = process.describe()
    assert info.measurement["cpu"] in ("rapl", "cpu_load", "tdp")
    assert info.measurement["ram"] == "model"


def test_bad_scope_is_refused() -> None:
    with pytest.raises(ValueError, match="scope"):
        CodeCarbonPowerSource("galaxy")  # type: ignore[arg-type]


def test_testing_sources_follow_the_protocol_exactly() -> None:
    now = [0.0]
    constant = ConstantPowerSource(cpu=4.0, gpu=None, ram=1.5, clock=lambda: now[0])
    assert isinstance(constant, PowerSource)
    now[0] = 2.0
    r = constant.read()
    assert (r.cpu, r.gpu, r.ram) == (8.0, None, 3.0)
    assert constant.describe().measurement == {"cpu": "fake", "ram": "fake"}
    ramp = ScriptedPowerSource(cpu=lambda t: 10.0 * t, clock=lambda: now[0])
    now[0] = 4.0
    # Watts are a function of the seconds since creation: integral of 10 t dt
    # over the 2 s since then is 5 * 2**2 = 20 J.
    assert ramp.read().cpu == pytest.approx(20.0)
