"""The one check of what counts as a number: real, finite, not a bool.

Readings from a power source, settings, and the answers of the grid and
embodied-emissions services all pass through it.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, TypeGuard

#: Joules in a kilowatt-hour.
JOULES_PER_KWH = 3.6e6


def is_finite(value: object) -> TypeGuard[float]:
    """A finite real number (numpy's included), not a bool."""
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def checked(value: Any, what: str, *, positive: bool = False) -> float:
    """`value` as a float, if it is a finite number >= 0 (> 0 if `positive`);
    else ValueError naming `what`."""
    if not is_finite(value) or value < 0 or (positive and value == 0):
        kind = "a positive" if positive else "a non-negative"
        raise ValueError(f"{what} is not {kind} number: {value!r}")
    return float(value)
