"""Asks a slow service for a figure now and then, never on the request path.

The grid intensity and the embodied emissions both come from services that
may be slow or down. `Refresher.poll` is called by the sampler thread after
each reading; when a refresh is due it runs `fetch` in a short-lived daemon
thread (so a slow answer never delays a reading), one at a time, then waits
`every` seconds before the next. A forked child forgets a refresh under way
in its parent and asks again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from carbonspan import forks


class Refresher:
    """Runs `fetch` at most every `every` seconds, from `poll(now)`."""

    def __init__(
        self,
        fetch: Callable[[], object],
        every: float,
        name: str,
        *,
        threaded: bool = True,
    ) -> None:
        self.fetch = fetch
        self.every = every
        self.name = name
        self.threaded = threaded
        self.stopped = False  # set once there is nothing more to ask
        self._due: float | None = None  # when the next refresh is due
        self._busy = False  # a refresh is under way
        self._lock = threading.Lock()
        forks.track(self, forks.SOURCES)

    def poll(self, now: float) -> None:
        """Start a refresh if one is due and none is under way."""
        if self.stopped:
            return
        with self._lock:
            if self._busy or (self._due is not None and now < self._due):
                return
            self._busy = True
            self._due = now + self.every
        if self.threaded:
            threading.Thread(target=self._run, name=self.name, daemon=True).start()
        else:
            self._run()

    def _run(self) -> None:
        try:
            self.fetch()
        finally:
            with self._lock:
                self._busy = False

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._busy = False
        self._due = None
