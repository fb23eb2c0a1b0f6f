"""Per-request CPU clocks, for the `cpu_time` attribution policy.

A request's clock counts the CPU time its own code uses, measured with
`time.thread_time()`, so time a thread spends waiting, or that other threads
use, is not counted:

- on asyncio's own event loop: every callback the loop runs in the request's
  context, which is every step of the request's task and of the tasks it
  creates (`create_task`, `gather`, `TaskGroup`: they copy its context). The
  loop's `Handle._run` is timed, so coroutines and tasks stay exactly what
  they are: native coroutines, the loop's own tasks;
- on another asyncio loop (uvloop, whose handles cannot be timed from
  Python): the steps of the request's own coroutine, and of the tasks it
  creates, through a task factory set on the loop (it hands the task to the
  loop's own factory, if any). Those tasks' coroutines are driven step by
  step from a native coroutine of carbonspan's;
- in worker threads: every function run through `anyio.to_thread.run_sync`,
  which is how Starlette and FastAPI run sync handlers and dependencies.

Outside asyncio (trio) there is no clock: the request is charged by time
share, and says so.
"""

from __future__ import annotations

import asyncio
import threading
import time
import types
from asyncio import events
from collections.abc import Awaitable, Callable, Coroutine, Generator
from contextvars import ContextVar, Token
from time import thread_time
from typing import Any

from carbonspan import forks

_current: ContextVar[CpuClock | None] = ContextVar("carbonspan_cpu_clock", default=None)


class CpuClock:
    """CPU seconds used on behalf of one request.

    `seconds` counts the step running now too, wherever it is read: a request
    whose work runs in one step (an ``async def`` that never awaits) is read
    at its final body while that step is still running.
    """

    __slots__ = ("_cpu_clock", "_lock", "native", "state", "thread", "thread_seconds")

    def __init__(self, native: bool = False) -> None:
        self.thread_seconds = 0.0  # worker threads add here, under the lock
        self._lock = threading.Lock()
        self.native = native  # the loop's callbacks are timed
        self.thread = threading.get_ident()  # the event loop's thread
        self._cpu_clock: int | None = None  # its CPU clock, read from others
        # (CPU seconds of the loop's ended steps, the loop thread's CPU clock
        # when the step running now began or None between steps). One tuple,
        # replaced whole, so that another thread reads a consistent pair.
        self.state: tuple[float, float | None] = (
            0.0,
            thread_time() if native else None,
        )

    @property
    def seconds(self) -> float:
        """CPU seconds so far, the step running now included."""
        done, mark = state = self.state
        if mark is not None:
            if threading.get_ident() == self.thread:
                done += thread_time() - mark
            else:  # the sampler's thread: read the loop thread's clock
                done = self._from_other_thread(state)
        return done + self.thread_seconds

    @property
    def fresh(self) -> bool:
        """No step of it has ended yet, and no thread has added to it."""
        return self.state[0] == 0.0 and self.thread_seconds == 0.0

    def _from_other_thread(self, state: tuple[float, float | None]) -> float:
        while True:
            done, mark = state
            if mark is None:
                return done
            try:
                if self._cpu_clock is None:
                    self._cpu_clock = time.pthread_getcpuclockid(self.thread)
                now = time.clock_gettime(self._cpu_clock)
            except (AttributeError, OSError):  # no per-thread clocks here
                return done
            if self.state is state:  # the step was still running
                return done + max(now - mark, 0.0)
            state = self.state

    def step_began(self) -> None:
        """The loop thread starts a step of this request."""
        self.state = (self.state[0], thread_time())

    def step_ended(self) -> None:
        """The loop thread ends the step it began."""
        done, mark = self.state
        if mark is not None:
            self.state = (done + thread_time() - mark, None)

    def add_thread(self, seconds: float) -> None:
        with self._lock:
            self.thread_seconds += seconds

    def run(self, coro: Awaitable[Any]) -> Any:
        """What to await for `coro` to run under this clock."""
        return coro if self.native else _stepped(coro, self)


def begin() -> tuple[CpuClock, Token[CpuClock | None]] | None:
    """A clock for the request starting now, made current; None outside asyncio."""
    loop = events._get_running_loop()
    if loop is None:
        return None
    clock = CpuClock(_Patch.handles and isinstance(loop, asyncio.BaseEventLoop))
    if not clock.native:
        _time_child_tasks(loop)
    return clock, _current.set(clock)


def end(clock: CpuClock, token: Token[CpuClock | None]) -> None:
    """The request is over: count the step running now up to here."""
    clock.step_ended()
    _current.reset(token)


@types.coroutine
def _stepped(awaitable: Awaitable[Any], clock: CpuClock) -> Generator[Any, Any, Any]:
    """Await `awaitable` as ``yield from`` would, each of its steps charged to
    `clock` (loops whose callbacks are not timed). A generator-based
    coroutine: what awaits it stays a native coroutine."""
    coro: Any = awaitable if hasattr(awaitable, "send") else awaitable.__await__()
    value: Any = None
    error: BaseException | None = None
    while True:
        clock.step_began()
        try:
            yielded = coro.send(value) if error is None else coro.throw(error)
        except StopIteration as stop:
            return stop.value
        finally:
            clock.step_ended()
        value = error = None
        try:
            value = yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # thrown in (a cancellation): pass it on
            error = exc


async def _child(coro: Coroutine[Any, Any, Any], clock: CpuClock) -> Any:
    return await _stepped(coro, clock)


def _time_child_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """On a loop whose callbacks are not timed (uvloop): a task created under
    a request's clock runs its coroutine under that clock too. The loop's own
    task factory, if it has one, still makes the task."""
    factory = loop.get_task_factory()
    if getattr(factory, "carbonspan", False):
        return

    def timed(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        context = kwargs.get("context")
        clock = context.get(_current) if context is not None else _current.get()
        if clock is not None and asyncio.iscoroutine(coro):
            coro = _child(coro, clock)
        if factory is None:
            return asyncio.Task(coro, loop=loop, **kwargs)
        return factory(loop, coro, **kwargs)

    timed.carbonspan = True  # type: ignore[attr-defined]
    loop.set_task_factory(timed)


def _timed_run(original: Callable[[events.Handle], None]) -> Callable[..., None]:
    def _run(self: events.Handle) -> None:
        context = self._context  # type: ignore[attr-defined]
        before = context.get(_current)
        if before is not None:  # `step_began`, inline: this runs every callback
            before.state = (before.state[0], thread_time())
        try:
            original(self)
        finally:
            # The clock may have been made current, or ended, in this step.
            clock = context.get(_current) or before
            if clock is not None:  # `step_ended`
                done, mark = clock.state
                if mark is not None:
                    clock.state = (done + thread_time() - mark, None)

    return _run


def _timed_in_thread(func: Callable[..., Any], clock: CpuClock) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        start = thread_time()
        try:
            return func(*args)
        finally:
            clock.add_thread(thread_time() - start)

    return call


class _Patch:
    """What `patch` replaced, and how many instrumentations use it."""

    run_sync: Callable[..., Any] | None = None
    handle_run: Callable[[events.Handle], None] | None = None
    handles = False
    users = 0


_PATCH_LOCK = "cpu_clock.patch"
forks.lock(_PATCH_LOCK)


def patch() -> None:
    """Time asyncio's callbacks and anyio's worker threads under a clock."""
    import anyio.to_thread

    with forks.locks[_PATCH_LOCK]:
        _Patch.users += 1
        if _Patch.run_sync is not None:
            return
        original = anyio.to_thread.run_sync

        async def run_sync(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            clock = _current.get()
            if clock is not None:
                func = _timed_in_thread(func, clock)
            return await original(func, *args, **kwargs)

        _Patch.run_sync = original
        setattr(anyio.to_thread, "run_sync", run_sync)  # noqa: B010
        _Patch.handle_run = events.Handle._run
        setattr(events.Handle, "_run", _timed_run(_Patch.handle_run))  # noqa: B010
        _Patch.handles = True


def unpatch() -> None:
    import anyio.to_thread

    with forks.locks[_PATCH_LOCK]:
        _Patch.users -= 1
        if _Patch.users > 0 or _Patch.run_sync is None:
            return
        setattr(anyio.to_thread, "run_sync", _Patch.run_sync)  # noqa: B010
        setattr(events.Handle, "_run", _Patch.handle_run)  # noqa: B010
        _Patch.run_sync = _Patch.handle_run = None
        _Patch.handles = False
