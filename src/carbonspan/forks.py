"""One fork registry: what carbonspan renews in a forked child.

A forked child (gunicorn's ``--preload``, ``multiprocessing`` with fork)
starts with one thread: the sampler's thread is gone, a lock another thread
held at the fork stays held for good, and the parent's requests are not the
child's. Whatever keeps such state registers here, and this module alone
registers with `os.register_at_fork`:

- `track(obj, stage)`: in the child, ``obj._after_fork_in_child()`` runs.
  Objects are renewed stage by stage: `SOURCES` (grids, embodied sources,
  samplers, whose ledgers start from nothing), then `READERS` (the books and
  metrics that read those ledgers). Objects are held weakly.
- `lock(name)`: a module-level lock, renewed in the child before any
  object; read it as ``forks.locks[name]`` wherever it is taken.
- `around(before, after_in_parent, after_in_child)`: what must happen
  around the fork at module level (the sampler waits for a read in progress
  in the parent); `after_in_child` runs after the locks are renewed and
  before any object.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Protocol

#: Renewed first: what produces readings (and the ledgers they tick).
SOURCES = 0
#: Renewed next: what reads the ledgers.
READERS = 1


class Renewable(Protocol):
    def _after_fork_in_child(self) -> None: ...


_stages: tuple[weakref.WeakSet[Renewable], ...] = (weakref.WeakSet(), weakref.WeakSet())
_before: list[Callable[[], None]] = []
_after_in_parent: list[Callable[[], None]] = []
_after_in_child: list[Callable[[], None]] = []
#: Module-level locks by name, renewed in a forked child.
locks: dict[str, threading.Lock] = {}


def track(obj: Renewable, stage: int) -> None:
    """Renew `obj` in a forked child, at `stage` (`SOURCES` or `READERS`)."""
    _stages[stage].add(obj)


def lock(name: str) -> threading.Lock:
    """The module-level lock `name`, made once; a forked child gets a new one."""
    return locks.setdefault(name, threading.Lock())


def around(
    before: Callable[[], None],
    after_in_parent: Callable[[], None],
    after_in_child: Callable[[], None],
) -> None:
    """Run `before` just before a fork, and after it `after_in_parent` in the
    parent, `after_in_child` in the child."""
    _before.append(before)
    _after_in_parent.append(after_in_parent)
    _after_in_child.append(after_in_child)


def _run_before() -> None:
    for handler in _before:
        handler()


def _run_after_in_parent() -> None:
    for handler in _after_in_parent:
        handler()


def _run_after_in_child() -> None:
    for name in locks:
        locks[name] = threading.Lock()
    for handler in _after_in_child:
        handler()
    for stage in _stages:
        for obj in list(stage):
            obj._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_run_before,
        after_in_parent=_run_after_in_parent,
        after_in_child=_run_after_in_child,
    )
