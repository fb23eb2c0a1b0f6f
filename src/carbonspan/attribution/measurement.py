"""`Measurement`, what one request was charged (the object a
`measurement_hook` receives), and `measure`, which the ledger builds it with."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from carbonspan.attribution.window import Window


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


def measure(
    window: Window,
    now: float,
    charges: dict[str, float | None],
    shared: float,
    shared_cpu: float | None,
    label: str,
) -> Measurement:
    duration = now - window.start
    if not window.ready:
        return Measurement(duration, duration, attribution=label)
    past = window.past
    active = duration
    if past is not None:  # the seconds it waited were not in flight
        active -= past.waited
        if past.paused_since is not None:
            active -= now - past.paused_since
    concurrency = active / shared if shared > 0 else 1.0
    cpu, gpu, ram = charges["cpu"], charges["gpu"], charges["ram"]
    # Mean power: its joules times the concurrency over its active
    # seconds. Under cpu_time, CPU power comes from what time share would
    # have charged (`shared_cpu`): the process's power, not its share.
    cpu_w = gpu_w = ram_w = None
    if active > 0:
        per_second = concurrency / active
        if shared_cpu is None:
            shared_cpu = cpu
        if shared_cpu is not None:
            cpu_w = shared_cpu * per_second
        if gpu is not None:
            gpu_w = gpu * per_second
        if ram is not None:
            ram_w = ram * per_second
    m = _new(Measurement)
    _duration(m, duration)
    _active(m, active)
    _cpu(m, cpu)
    _gpu(m, gpu)
    _ram(m, ram)
    _concurrency(m, concurrency)
    _attribution(m, label)
    _cpu_power(m, cpu_w)
    _gpu_power(m, gpu_w)
    _ram_power(m, ram_w)
    return m


# The frozen dataclass's own __init__ sets each field through
# object.__setattr__: 1.1 us for a Measurement on the request path. Its slots'
# descriptors set them in half that (same object, equal to one built by
# __init__; tests/unit/test_ledger.py checks).
_new = object.__new__
_set = {f.name: getattr(Measurement, f.name).__set__ for f in fields(Measurement)}
_duration, _active, _cpu, _gpu, _ram = (
    _set[name] for name in ("duration", "active", "cpu", "gpu", "ram")
)
_concurrency, _attribution = _set["concurrency"], _set["attribution"]
_cpu_power, _gpu_power, _ram_power = (
    _set[name] for name in ("cpu_power", "gpu_power", "ram_power")
)
