"""Per-request CPU clocks, for the `cpu_time` attribution policy.

A request's clock counts the CPU time its own code uses:

- on the event loop: every step of the request's task below the middleware,
  and every step of the tasks it creates (`create_task`, `gather`,
  `TaskGroup`), which inherit its context and so its clock;
- in worker threads: every function run through `anyio.to_thread.run_sync`,
  which is how Starlette and FastAPI run sync handlers and dependencies.

Each step is timed with `time.thread_time()`, so time the thread spends
waiting, or that other threads use, is not counted.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Generator
from contextvars import ContextVar
from time import thread_time
from typing import Any

_current: ContextVar[CpuClock | None] = ContextVar("carbonspan_cpu_clock", default=None)


class CpuClock:
    """CPU seconds used on behalf of one request."""

    __slots__ = ("_lock", "loop_seconds", "thread_seconds")

    def __init__(self) -> None:
        self.loop_seconds = 0.0  # only the event loop's thread adds here
        self.thread_seconds = 0.0  # worker threads add here, under the lock
        self._lock = threading.Lock()

    @property
    def seconds(self) -> float:
        return self.loop_seconds + self.thread_seconds

    def add_thread(self, seconds: float) -> None:
        with self._lock:
            self.thread_seconds += seconds


class Timed(Coroutine[Any, Any, Any]):
    """A coroutine whose every step is charged to a clock."""

    __slots__ = ("_clock", "_coro")

    def __init__(self, coro: Any, clock: CpuClock) -> None:
        self._coro = coro
        self._clock = clock

    def send(self, value: Any) -> Any:
        start = thread_time()
        try:
            return self._coro.send(value)
        finally:
            self._clock.loop_seconds += thread_time() - start

    def throw(self, *args: Any) -> Any:
        start = thread_time()
        try:
            return self._coro.throw(*args)
        finally:
            self._clock.loop_seconds += thread_time() - start

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[Any, None, Any]:
        return self

    def __iter__(self) -> Timed:
        return self

    def __next__(self) -> Any:
        return self.send(None)


def run(clock: CpuClock, coro: Any) -> Timed:
    """Run `coro` (awaited by the caller) with its steps charged to `clock`."""
    return Timed(coro, clock)


def ensure_task_factory() -> None:
    """Make the running loop wrap tasks created under a request's clock."""
    loop = asyncio.get_running_loop()
    previous = loop.get_task_factory()
    if getattr(previous, "_carbonspan", False):
        return

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        clock = _current.get()
        if clock is not None and not isinstance(coro, Timed):
            coro = Timed(coro, clock)
        if previous is not None:
            return previous(loop, coro, **kwargs)
        return asyncio.Task(coro, loop=loop, **kwargs)

    factory._carbonspan = True  # type: ignore[attr-defined]
    loop.set_task_factory(factory)


class _ThreadPatch:
    original: Callable[..., Any] | None = None
    users = 0
    lock = threading.Lock()


def _timed_in_thread(func: Callable[..., Any], clock: CpuClock) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        start = thread_time()
        try:
            return func(*args)
        finally:
            clock.add_thread(thread_time() - start)

    return call


def patch_threads() -> None:
    """Time functions run through `anyio.to_thread.run_sync` under a clock."""
    import anyio.to_thread

    with _ThreadPatch.lock:
        _ThreadPatch.users += 1
        if _ThreadPatch.original is not None:
            return
        original = anyio.to_thread.run_sync

        async def run_sync(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            clock = _current.get()
            if clock is not None:
                func = _timed_in_thread(func, clock)
            return await original(func, *args, **kwargs)

        _ThreadPatch.original = original
        setattr(anyio.to_thread, "run_sync", run_sync)  # noqa: B010


def unpatch_threads() -> None:
    import anyio.to_thread

    with _ThreadPatch.lock:
        _ThreadPatch.users -= 1
        if _ThreadPatch.users > 0 or _ThreadPatch.original is None:
            return
        setattr(anyio.to_thread, "run_sync", _ThreadPatch.original)  # noqa: B010
        _ThreadPatch.original = None


def set_clock(clock: CpuClock | None) -> Any:
    """Make `clock` the current request's clock; returns a token for reset."""
    return _current.set(clock)


def reset_clock(token: Any) -> None:
    _current.reset(token)
