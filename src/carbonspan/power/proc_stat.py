"""The machine's CPU seconds, busy and in all, from the first line of
/proc/stat, read through a descriptor kept open.

The sampler reads them at every tick, for CodeCarbon's load model and for
this process's share of the CPU. Opening the file each time, as psutil does,
costs several times what reading it does (docs/performance.md, the sampler).
Where /proc/stat cannot be read (not Linux), psutil reads the times.
"""

from __future__ import annotations

import contextlib
import os

import psutil

_PATH = "/proc/stat"
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class MachineCpuTimes:
    """The machine's CPU seconds since boot: `read()` gives (busy, total).

    Busy is total less idle and iowait; guest time is already in user and
    nice time, so it is not counted twice (psutil's rule, and CodeCarbon's).
    """

    __slots__ = ("_fd", "_file")

    def __init__(self) -> None:
        self._fd: int | None = None
        self._file: tuple[int, int] | None = None  # its (device, inode)
        self._open()

    def _open(self) -> None:
        try:
            self._fd = os.open(_PATH, os.O_RDONLY)
            stat = os.fstat(self._fd)
            self._file = (stat.st_dev, stat.st_ino)
        except (OSError, AttributeError):
            self._fd = None

    def read(self) -> tuple[float, float]:
        """(busy, total) CPU seconds of the machine, all CPUs together.

        Raises what psutil raises where neither /proc/stat nor psutil can
        read them.
        """
        for attempt in range(2):
            fd = self._fd
            if fd is None:
                break
            try:
                return _parse(os.pread(fd, 512, 0))
            except (OSError, ValueError, IndexError):
                # A descriptor closed behind our back (a daemon closing every
                # file after a fork) is opened again, once; then psutil. It
                # is dropped, not closed: its number may be another file's.
                self._fd = None
                if attempt == 0:
                    self._open()
        times = psutil.cpu_times()
        total = sum(times) - getattr(times, "guest", 0.0)
        total -= getattr(times, "guest_nice", 0.0)
        idle = times.idle + getattr(times, "iowait", 0.0)
        return float(total - idle), float(total)

    def close(self) -> None:
        """Close the descriptor, if it is still the one opened on /proc/stat
        (closed behind our back, its number may be another file's)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                stat = os.fstat(fd)
                if (stat.st_dev, stat.st_ino) == self._file:
                    os.close(fd)

    __del__ = close


def _parse(data: bytes) -> tuple[float, float]:
    """(busy, total) seconds from /proc/stat's first line: ``cpu user nice
    system idle iowait irq softirq steal guest guest_nice`` in clock ticks."""
    line = data[: data.index(b"\n")]
    name, *fields = line.split()
    if name != b"cpu" or len(fields) < 4:
        raise ValueError(f"unexpected /proc/stat line: {line[:80]!r}")
    ticks = [int(v) for v in fields[:8]]  # guest, guest_nice: in user, nice
    total = sum(ticks)
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    return (total - idle) / _TICKS, total / _TICKS
