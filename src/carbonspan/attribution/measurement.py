"""`Measurement`: what one request was charged, the object a
`measurement_hook` receives (`carbonspan.attribution.window.measure` builds
it)."""

from __future__ import annotations

from dataclasses import dataclass


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
