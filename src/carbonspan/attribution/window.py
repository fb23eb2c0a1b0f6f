"""What one request holds in the ledger: its `Window`, what the stretches
before its last wait on the client were charged (`Stretches`), and its
`Measurement` (`measure`)."""

from __future__ import annotations

from dataclasses import fields

from carbonspan.attribution.measurement import Measurement
from carbonspan.power.source import COMPONENTS

#: Per component: no charge known, and no joules.
UNKNOWN: dict[str, float | None] = dict.fromkeys(COMPONENTS)
ZERO = dict.fromkeys(COMPONENTS, 0.0)
#: What a window was charged: J per component (None: not measured), its
#: shared seconds, and the CPU J time share would have charged it.
Charges = tuple[dict[str, float | None], float, float | None]
#: A tick in the ledger's ring: B_j, and C_j and P_j per component.
Tick = tuple[float, dict[str, float], dict[str, float]]


class Window:
    """An open request: where the integrals stood when it (last) resumed."""

    __slots__ = ("b0", "j0", "last_tick", "past", "ready", "start", "state")

    def __init__(
        self, start: float, b0: float, j0: int, ready: bool, last_tick: Tick | None
    ) -> None:
        self.start = start
        self.b0 = b0  # B(b)
        self.j0 = j0  # the last tick before b
        self.ready = ready
        self.last_tick = last_tick  # that tick's (B, C, P), in case it is evicted
        self.state: object = None  # the policy's own, if it keeps any
        self.past: Stretches | None = None  # set once the request has waited


class Stretches:
    """What a window's stretches before its last wait were charged."""

    __slots__ = ("charges", "paused_since", "shared", "shared_cpu", "waited")

    def __init__(self) -> None:
        self.charges: dict[str, float | None] = dict(UNKNOWN)
        self.shared = 0.0  # their shared seconds
        self.shared_cpu: float | None = None  # their time-share CPU joules
        self.waited = 0.0  # seconds spent waiting, out of n(t)
        self.paused_since: float | None = None  # waiting since, if it is

    def add(
        self, charges: dict[str, float | None], shared: float, cpu: float | None
    ) -> None:
        mine = self.charges
        for name, joules in charges.items():
            if joules is not None:
                mine[name] = joules + (mine[name] or 0.0)
        self.shared += shared
        if cpu is not None:
            self.shared_cpu = cpu + (self.shared_cpu or 0.0)

    def stop(
        self,
        charges: dict[str, float | None],
        shared: float,
        cpu: float | None,
        now: float,
    ) -> None:
        """A stretch ends: the window waits on its client from `now`."""
        self.add(charges, shared, cpu)
        self.paused_since = now

    def restart(self, now: float) -> None:
        """The wait that began at `paused_since` ends at `now`."""
        assert self.paused_since is not None
        self.waited += now - self.paused_since
        self.paused_since = None

    def so_far(self) -> Charges:
        """Its charges, shared seconds and time-share CPU joules."""
        return self.charges, self.shared, self.shared_cpu

    def plus(
        self, charges: dict[str, float | None], shared: float, cpu: float | None
    ) -> Charges:
        """`so_far`, with a stretch that is still going on added."""
        total = Stretches()
        total.add(self.charges, self.shared, self.shared_cpu)
        total.add(charges, shared, cpu)
        return total.so_far()


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
