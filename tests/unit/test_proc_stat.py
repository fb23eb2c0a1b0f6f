"""The machine's CPU times, read from /proc/stat through a kept descriptor,
agree with psutil's, and survive what can go wrong with the descriptor."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import psutil
import pytest

from carbonspan.power import proc_stat
from carbonspan.power.proc_stat import MachineCpuTimes


def psutil_busy_total() -> tuple[float, float]:
    t = psutil.cpu_times()
    total = sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
    return total - t.idle - getattr(t, "iowait", 0.0), total


def stat_descriptors() -> set[int]:
    """This process's descriptors open on /proc/stat."""
    found = set()
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own, now closed
            if os.readlink(f"/proc/self/fd/{name}") == "/proc/stat":
                found.add(int(name))
    return found


def opened() -> tuple[MachineCpuTimes, int]:
    """A reader, and the descriptor it keeps on /proc/stat."""
    for _ in range(5):  # another thread may open the file meanwhile (psutil)
        before = stat_descriptors()
        times = MachineCpuTimes()
        new = stat_descriptors() - before
        if len(new) == 1:
            return times, new.pop()
        times.close()
    raise AssertionError("no one descriptor kept on /proc/stat")


def assert_agrees(times: MachineCpuTimes) -> None:
    before = psutil_busy_total()
    busy, total = times.read()
    after = psutil_busy_total()
    # Read between two psutil readings, each figure lies between theirs.
    assert before[0] - 1e-9 <= busy <= after[0] + 1e-9
    assert before[1] - 1e-9 <= total <= after[1] + 1e-9
    assert 0.0 <= busy <= total


def test_the_times_agree_with_psutils_and_move_forward() -> None:
    times = MachineCpuTimes()
    assert_agrees(times)
    busy0, total0 = times.read()
    x = 0
    for i in range(2_000_000):  # some CPU time for the machine's busy count
        x += i
    busy1, total1 = times.read()
    assert busy1 >= busy0 and total1 > total0
    times.close()


def test_a_descriptor_closed_behind_its_back_is_opened_again() -> None:
    times, fd = opened()
    os.close(fd)  # as a daemon closing every file after a fork does
    assert_agrees(times)
    times.close()


def test_without_proc_stat_psutil_reads_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proc_stat, "_PATH", "/nonexistent/stat")
    calls = []
    cpu_times = psutil.cpu_times

    def counted() -> Any:
        calls.append(1)
        return cpu_times()

    times = MachineCpuTimes()
    with monkeypatch.context() as patched:
        patched.setattr(psutil, "cpu_times", counted)
        times.read()
    assert calls == [1]  # the read went to psutil
    assert_agrees(times)


def test_an_unexpected_first_line_falls_back_on_psutil(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    times = MachineCpuTimes()

    def garbled(fd: int, n: int, offset: int) -> bytes:
        return b"intr 1 2 3\n"

    monkeypatch.setattr(os, "pread", garbled)
    assert_agrees(times)


def test_where_nothing_can_read_them_the_error_is_the_callers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(proc_stat, "_PATH", "/nonexistent/stat")

    def broken(*_: Any) -> Any:
        raise RuntimeError("no CPU times here")

    monkeypatch.setattr(psutil, "cpu_times", broken)
    with pytest.raises(RuntimeError):
        MachineCpuTimes().read()


def test_closing_never_closes_a_file_that_took_its_descriptors_number() -> None:
    times, fd = opened()
    os.close(fd)  # closed behind its back...
    other = os.open(os.devnull, os.O_RDONLY)  # ...and the number reused
    try:
        assert other == fd
        times.close()
        os.fstat(other)  # still open: not ours to close
    finally:
        os.close(other)
