"""Rate-limited logging: a line of a kind once, then at most once a minute."""

from __future__ import annotations

import time

#: Seconds between two log lines of the same kind.
LOG_EVERY = 60.0


class Throttle:
    """Lets one log line per kind through, then at most one every LOG_EVERY s."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def allow(self, kind: str) -> bool:
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < LOG_EVERY:
            return False
        self._last[kind] = now
        return True
