"""What a request's outgoing HTTP calls cost, as their callees reported it.

A callee with carbonspan and `response_headers=("energy",)` answers every
request with its inclusive energy (its own, plus what its own calls
reported) in `x-codecarbon-energy` (or Server-Timing's `codecarbon-energy`,
in mJ), and its emissions where `emissions` is among the fields. A caller
with `downstream_energy` reads them from the responses of the calls its
requests make (`carbonspan.otel.clients` hooks httpx, requests and aiohttp
below their OpenTelemetry instrumentations, so the call's client span is
current): the figure goes on the client span as `codecarbon.energy.downstream`
and is added to the request's `InFlight.downstream`, which the reporter puts
on the server span beside the request's own energy.

A figure is read only from the response to a call a request made while in
flight, in its context: a response to a call made anywhere else (at
startup, from a thread that did not inherit the request's context) names no
request, and is ignored. A malformed or absurd value is ignored and logged
(once, then at most once a minute). A callee without carbonspan sends
nothing, and adds nothing.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from opentelemetry import trace

from carbonspan.otel.attributes import ENERGY_DOWNSTREAM
from carbonspan.otel.in_flight import current
from carbonspan.throttle import Throttle

if TYPE_CHECKING:
    from carbonspan.carbon.accounts import Factors

#: J one call may report; above, the value is taken as absurd: a kWh.
MAX_JOULES = 3.6e6
#: g one call may report: a kWh at 2000 g/kWh, above any grid.
MAX_GRAMS = 2000.0
ENERGY_HEADER = "x-codecarbon-energy"
EMISSIONS_HEADER = "x-codecarbon-emissions"
_TIMING = re.compile(r"codecarbon-(energy|emissions);dur=([^;,\s]+)")

_log = logging.getLogger(__name__)
_throttle = Throttle()

#: How a response's header is read: its value by (lower-case) name, or None.
HeaderLookup = Callable[[str], "str | None"]


def reported(header: HeaderLookup) -> None:
    """A response of an outgoing call has arrived: if a request in flight
    made it and its callee reported a figure, count it for that request and
    put it on the call's client span."""
    request = current.get()
    if request is None:
        if header(ENERGY_HEADER) is not None and _throttle.allow("unasked"):
            _log.debug(
                "carbonspan: a response outside any request carried %s; ignored",
                ENERGY_HEADER,
            )
        return
    calls = request.downstream
    if calls is None:
        return  # downstream_energy is off for this request's instrumentation
    joules, grams = figures(header)
    if joules is None:
        return
    calls.add(joules, grams)
    span = trace.get_current_span()
    if span is not request.span and span.is_recording():
        span.set_attribute(ENERGY_DOWNSTREAM, joules)


class Downstream:
    """What one request's outgoing calls reported, summed."""

    __slots__ = ("calls", "grams", "joules", "unvalued")

    def __init__(self) -> None:
        self.calls = 0  # the calls that reported a figure
        self.joules = 0.0
        self.grams = 0.0  # what the callees reported
        self.unvalued = 0.0  # J of the callees that reported no grams

    def add(self, joules: float, grams: float | None) -> None:
        self.calls += 1
        self.joules += joules
        if grams is None:
            self.unvalued += joules
        else:
            self.grams += grams

    def valued(self, factors: Factors) -> tuple[float, float] | None:
        """(J, g), the grams no callee reported valued at `factors`; None
        where no call reported a figure (not a 0)."""
        if not self.calls:
            return None
        return self.joules, self.grams + factors.intensity.grams(self.unvalued)


def figures(header: HeaderLookup) -> tuple[float | None, float | None]:
    """(J, g) a response reports; None for what it does not, or not well."""
    energy, emissions = header(ENERGY_HEADER), header(EMISSIONS_HEADER)
    if energy is None:
        timing = header("server-timing")
        if timing is None or "codecarbon-energy" not in timing:
            return None, None
        found = dict(_TIMING.findall(timing))
        energy, emissions = found.get("energy"), found.get("emissions")
        joules = _number(energy, MAX_JOULES * 1000.0)
        grams = _number(emissions, MAX_GRAMS * 1000.0)
        return (
            None if joules is None else joules / 1000.0,
            None if grams is None else grams / 1000.0,
        )
    joules = _number(energy, MAX_JOULES)
    return joules, None if joules is None else _number(emissions, MAX_GRAMS)


def _number(text: str | None, most: float) -> float | None:
    if text is None:
        return None
    try:
        value = math.nan if "_" in text else float(text.strip())
    except ValueError:
        value = math.nan
    if math.isfinite(value) and 0.0 <= value <= most:
        return value
    if _throttle.allow("malformed"):
        _log.warning(
            "carbonspan: ignoring a downstream figure %.40r (expected a number "
            "from 0 to %g); logged at most once a minute",
            text,
            most,
        )
    return None
