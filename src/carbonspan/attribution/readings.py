"""The power source's cumulative readings, checked and turned into the joules
each component drew since its last valid value."""

from __future__ import annotations

from carbonspan.numbers import is_finite
from carbonspan.power.source import COMPONENTS

#: What was wrong with a reading: (kind, detail), see `Ledger.tick`.
Fault = tuple[str, str]


class ReadingDeltas:
    """Per component: the last valid value and when it came, whether the
    component is measured (`known`), the sum of its valid deltas
    (`measured`, J) and the last interval's mean power (`drawn`, W)."""

    def __init__(self) -> None:
        self._last: dict[str, float | None] = dict.fromkeys(COMPONENTS)
        self.last_at: dict[str, float | None] = dict.fromkeys(COMPONENTS)
        self.known: dict[str, bool] = dict.fromkeys(COMPONENTS, False)
        self.measured = dict.fromkeys(COMPONENTS, 0.0)
        self.drawn = dict.fromkeys(COMPONENTS, 0.0)

    def delta(
        self,
        name: str,
        value: float | None,
        at: float,
        gap: float,
        first: bool,
        faults: list[Fault],
    ) -> tuple[float, float] | None:
        """The joules `name` drew since its last valid value, if any, and the
        seconds it drew them over: more than the readings' `gap` if its last
        values were invalid. Counted in `measured` and `drawn`."""
        if value is None:
            return None  # not measured
        if not is_finite(value):
            faults.append(("invalid", f"{name}={value!r}"))
            return None  # no information: the next valid value covers it
        if value < 0:
            faults.append(("negative", f"{name}={value!r}"))
            return None
        previous, since = self._last[name], self.last_at[name]
        self._last[name], self.last_at[name] = value, at
        if previous is None or first:  # the first value: a baseline
            return None
        delta = value - previous
        if delta < 0:  # the counter reset or wrapped around
            faults.append(("backwards", f"{name}: {previous!r} -> {value!r}"))
            return None
        if not is_finite(delta):
            faults.append(("invalid", f"{name}={value!r}"))
            self._last[name], self.last_at[name] = previous, since
            return None
        self.known[name] = True
        drawn_over = at - since if since is not None else gap
        self.measured[name] += delta
        self.drawn[name] = delta / drawn_over if drawn_over > 0 else 0.0
        return delta, drawn_over
