"""NVIDIA GPUs through NVML (the `pynvml` CodeCarbon loads): energy per interval,
whole devices or one process's share."""

from __future__ import annotations

import logging
from typing import Any

from carbonspan import codecarbon_api as cc

_log = logging.getLogger(__name__)


class NvmlGpus:
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
    def detect(cls) -> NvmlGpus | None:
        """The machine's NVIDIA GPUs, or None where there are none or NVML fails."""
        try:
            nvml = cc.pynvml()
            if nvml is None:
                return None
            nvml.nvmlInit()
            count = nvml.nvmlDeviceGetCount()
            if count == 0:
                return None
            handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            names = [_decoded(nvml.nvmlDeviceGetName(h)) for h in handles]
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
        """J drawn over the last `dt` seconds: by all devices, or by `pid`'s share."""
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


def _decoded(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
