"""One daemon thread per process that reads the power source into the ledger.

The sampler is the only reader of its source (CodeCarbon's hardware objects
keep state between calls). Samplers are shared: every instrumentation in a
process that uses the same source settings leases the same one, and the
thread stops when the last lease is released.

The thread starts when the server does (ASGI lifespan startup) or at the first
request, never at import: a process that only imports the app (a gunicorn
master with --preload, a CLI script, a subprocess under
`opentelemetry-instrument`) never runs one.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

from carbonspan import forks
from carbonspan.power.source import EnergyReading, HardwareInfo, PowerSource
from carbonspan.throttle import Throttle

if TYPE_CHECKING:
    from carbonspan.attribution.ledger import Ledger

_log = logging.getLogger(__name__)

#: A read that takes this long (seconds) is logged as a fault: meanwhile,
#: requests are charged at the last measured power.
SLOW_READ = 1.0
#: Seconds between the first reading and the second. Until two readings have
#: measured an interval, requests carry no figures: keep that stretch short.
FIRST_GAP = 0.01

# Each kind of fault (see `Ledger.tick`): what it is, and what carbonspan does.
_IGNORED = "the value is ignored; the next valid one covers the gap"
_FAULTS = {
    "slow": (
        "a reading was slow",
        "meanwhile requests were charged at the last measured power, "
        "corrected when the reading arrived",
    ),
    "bad_time": ("a reading had no valid monotonic time", "the reading is ignored"),
    "invalid": ("a reading was not a finite number of joules", _IGNORED),
    "negative": ("a reading had negative cumulative joules", _IGNORED),
    "backwards": (
        "a cumulative reading went backwards (counter reset or wraparound)",
        "the interval's energy is not counted; measuring goes on from the new value",
    ),
}
_FAILED = (
    "reading failed",
    "requests go on, and their figures resume when it recovers",
)


class PowerSampler:
    """Reads `source` every `interval` seconds and ticks `ledger` with it."""

    def __init__(self, source: PowerSource, interval: float, ledger: Ledger) -> None:
        self.source = source
        self.interval = interval
        self.ledger = ledger
        self._read_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._throttle = Throttle()
        self.errors = 0  # reads that raised
        self.reads = 0  # reads that succeeded
        self.faults: dict[str, int] = {}  # fault kind -> how many so far
        self.info = HardwareInfo()
        #: Called by the thread after each reading (the metrics' deferred
        #: records); failures are logged like the source's.
        self.after_tick: list[Callable[[], Any]] = []
        #: Called with the reading after each successful tick, by whichever
        #: thread took it (the emissions accounts).
        self.on_tick: list[Callable[[EnergyReading], Any]] = []
        _live.add(self)
        forks.track(self, forks.SOURCES)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def started(self) -> bool:
        """Whether start() was called (and not undone by stop() or a fork)."""
        return self._thread is not None

    def start(self) -> None:
        if self.running:
            return
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="carbonspan-sampler", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def sample(self) -> bool:
        """Read the source once and tick the ledger; False if the read failed."""
        with self._read_lock:
            began = time.monotonic()
            try:
                reading = self.source.read()
                info = self.info if self.info.measurement else self.source.describe()
                faults = self.ledger.tick(reading)
            except Exception as exc:
                self._report(exc)
                return False
            took = time.monotonic() - began
            if took >= SLOW_READ and self.reads:  # the first read may detect hardware
                self._warn("slow", f"took {took:.1f} s")
            self.reads += 1
            for kind, detail in faults:
                self._warn(kind, detail)
            if info is not self.info and info.busy_watts:
                self.ledger.prior(info.busy_watts)
            self.info = info  # after the tick: known hardware means readings
            ticked = not any(kind == "bad_time" for kind, _ in faults)
            if ticked:
                for callback in list(self.on_tick):
                    self._call(callback, "keeping the emissions accounts", reading)
            return True

    def _call(self, callback: Callable[..., object], what: str, *args: object) -> None:
        """A tick hook: what it raises is logged at most once a minute."""
        try:
            callback(*args)
        except Exception as exc:
            if self._throttle.allow(what):
                _log.warning(
                    "carbonspan: %s failed. Logged at most once a minute.",
                    what,
                    exc_info=exc,
                )

    def _run(self) -> None:
        stop = self._stop
        interval = min(FIRST_GAP, self.interval)  # then the second, soon
        while not stop.is_set():
            began = time.monotonic()
            self.sample()
            for callback in list(self.after_tick):
                self._call(callback, "recording the queued request metrics")
            stop.wait(max(0.0, interval - (time.monotonic() - began)))
            interval = self.interval

    def _report(self, exc: BaseException) -> None:
        self.errors += 1
        self._warn(f"error {type(exc).__name__}", f"{exc!r}", exc)

    def _warn(self, kind: str, detail: str, exc: BaseException | None = None) -> None:
        """Log a fault of `kind`: the first one, then at most once a minute."""
        count = self.faults[kind] = self.faults.get(kind, 0) + 1
        if not self._throttle.allow(kind):
            return
        what, effect = _FAULTS.get(kind, _FAILED)
        _log.warning(
            "carbonspan: power source %r: %s (%s; %d so far); %s. "
            "Logged at most once a minute.",
            self.source,
            what,
            detail,
            count,
            effect,
            exc_info=exc,
        )

    def _after_fork_in_child(self) -> None:
        # The thread did not survive the fork. Like the first time, the
        # child's first request (or lifespan startup) starts a new one.
        self._thread = None
        self._read_lock = threading.Lock()
        self._throttle = Throttle()  # the child logs its own faults
        self.ledger.reset()
        if self.info.busy_watts:
            self.ledger.prior(self.info.busy_watts)


_live: weakref.WeakSet[PowerSampler] = weakref.WeakSet()


_held: list[threading.Lock] = []


def _before_fork() -> None:
    # Wait for any read in progress, so the child never inherits a source (or
    # CodeCarbon object) whose internal locks were held mid-read. A fork from
    # inside a read (a subprocess of the source) must not wait for itself.
    me = threading.current_thread()
    for sampler in list(_live):
        if sampler._thread is not me:
            sampler._read_lock.acquire()
            _held.append(sampler._read_lock)


def _after_fork_in_parent() -> None:
    while _held:
        _held.pop().release()


def _after_fork_in_child() -> None:
    _held.clear()  # the samplers renew their locks themselves


class _Registry:
    """Shared samplers by key, reference-counted."""

    def __init__(self) -> None:
        self._entries: dict[Hashable, tuple[PowerSampler, int]] = {}

    def lease(self, key: Hashable, make: Callable[[], PowerSampler]) -> PowerSampler:
        with forks.locks[_REGISTRY_LOCK]:
            sampler, count = self._entries.get(key, (None, 0))
            if sampler is None:
                sampler = make()
            self._entries[key] = (sampler, count + 1)
        return sampler

    def release(self, sampler: PowerSampler) -> None:
        with forks.locks[_REGISTRY_LOCK]:
            for key, (entry, count) in list(self._entries.items()):
                if entry is sampler:
                    if count > 1:
                        self._entries[key] = (entry, count - 1)
                        return
                    del self._entries[key]
                    break
        sampler.stop()


_REGISTRY_LOCK = "sampler.registry"
forks.lock(_REGISTRY_LOCK)
_registry = _Registry()
lease = _registry.lease
release = _registry.release


def _stop_all() -> None:
    # At interpreter exit: a daemon thread still reading the hardware while
    # the interpreter tears its modules down can crash the process (seen on
    # Python 3.13.0, exit status -11).
    for sampler in list(_live):
        sampler.stop(timeout=1.0)


atexit.register(_stop_all)

forks.around(_before_fork, _after_fork_in_parent, _after_fork_in_child)
