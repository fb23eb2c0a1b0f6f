"""The request path after the middleware: a request's window in the ledger,
valued once, and reported on its span, in its headers and in the metrics.

The middleware (`carbonspan.otel.middleware`) wraps a request's receive and
send and tells the `Reporter` what happens:

    window = reporter.open(clock)               # the request enters
    reporter.pause(window) / resume(window)     # it waits on its client
    reporter.headers(window, request)           # at http.response.start
    valuation = reporter.report(window, request)  # before its final body
    reporter.close(window, request)             # the app returned

where `request` is what the middleware knows of the request so far
(`carbonspan.otel.in_flight.InFlight`).

A request is reported under its series (`RouteKey`: route, method, status,
and its tenant where the app or the baggage named one).

`report` asks the ledger once for the request's charges, values them once
(`Valuation`: joules, grams, embodied grams at the factors in force) and
gives that one valuation to the span, the metric queue and the hook. What
the request draws after its response (background tasks) is added to its
route's metrics at `close`, at the same factors.
"""

from __future__ import annotations

import logging
from time import monotonic
from typing import TYPE_CHECKING

from carbonspan.otel.attributes import TENANT
from carbonspan.otel.metric_queue import RouteKey, route_key
from carbonspan.throttle import Throttle

if TYPE_CHECKING:
    from carbonspan.attribution.cpu_clock import CpuClock
    from carbonspan.attribution.ledger import Ledger
    from carbonspan.attribution.measurement import Measurement
    from carbonspan.attribution.window import Window
    from carbonspan.carbon.accounts import EmissionsAccounts, Factors
    from carbonspan.otel.downstream import Downstream
    from carbonspan.otel.headers import HeaderWriter
    from carbonspan.otel.in_flight import InFlight
    from carbonspan.otel.metric_queue import PointQueue
    from carbonspan.otel.span import SpanAttributes
    from carbonspan.types import MeasurementHook, Scope

_log = logging.getLogger(__name__)

#: Work after the response that lasts less than this (s) is not reported apart
#: in the route's metrics: it is the response's own unwinding.
AFTER_RESPONSE = 0.001


class Valuation:
    """What one measured request is worth: J, g CO2eq and, where the embodied
    emissions are known, its share of them (g), at `factors`; and the series
    it is reported under (`key`, whose last item is its tenant)."""

    __slots__ = (
        "at",
        "downstream",
        "embodied",
        "factors",
        "grams",
        "joules",
        "key",
        "measurement",
    )

    def __init__(
        self,
        measurement: Measurement,
        joules: float,
        factors: Factors,
        at: float,
        key: RouteKey,
        downstream: Downstream | None = None,
    ) -> None:
        self.measurement = measurement
        self.key = key
        #: (J, g) the request's outgoing calls reported, where one did.
        self.downstream = None if downstream is None else downstream.valued(factors)
        self.factors = factors
        self.joules = joules  # measurement.total
        self.grams = factors.intensity.grams(joules)
        #: M, the request's embodied emissions (g); None where unknown.
        self.embodied = factors.embodied_grams(measurement)
        self.at = at  # when it was valued (monotonic s)


class Reporter:
    """One instrumentation's request path: ledger, valuation and reports.

    Nothing here may fail a request: every method catches what goes wrong,
    logs it (the first time, then at most once a minute) and carries on.
    """

    def __init__(
        self,
        ledger: Ledger,
        accounts: EmissionsAccounts,
        spans: SpanAttributes,
        queue: PointQueue,
        headers: HeaderWriter | None,
        hook: MeasurementHook | None,
    ) -> None:
        self.ledger = ledger
        self.accounts = accounts
        self.spans = spans
        self.queue = queue
        self.header_writer = headers
        self.hook = hook
        self._throttle = Throttle()

    def failed(self, exc: BaseException, what: str = "measuring a request") -> None:
        """Log a failure on the request path: once, then at most once a minute."""
        if self._throttle.allow(what):
            _log.warning("carbonspan: %s failed", what, exc_info=exc)

    def open(self, clock: CpuClock | None) -> Window | None:
        """A request enters; its window (None if the ledger failed)."""
        try:
            return self.ledger.open(monotonic(), clock)
        except Exception as exc:
            self.failed(exc)
            return None

    def pause(self, window: Window) -> None:
        try:
            self.ledger.pause(window, monotonic())
        except Exception as exc:
            self.failed(exc)

    def resume(self, window: Window) -> None:
        try:
            self.ledger.resume(window, monotonic())
        except Exception as exc:
            self.failed(exc)

    def headers(self, window: Window, request: InFlight) -> list[tuple[bytes, bytes]]:
        """The response headers with the request's figures so far: its own
        energy plus what its outgoing calls reported (inclusive)."""
        write = self.header_writer
        assert write is not None
        try:
            so_far = self.ledger.peek(window, monotonic())
            joules = so_far.total
            grams = None
            if joules is not None:
                factors = self.accounts.factors
                grams = factors.intensity.grams(joules)
                calls = request.downstream
                valued = None if calls is None else calls.valued(factors)
                if valued is not None:
                    joules += valued[0]
                    grams += valued[1]
            return write(so_far.duration, joules, grams)
        except Exception as exc:
            self.failed(exc, "writing response headers")
            return []

    def report(
        self,
        window: Window,
        request: InFlight,
        measurement: Measurement | None = None,
    ) -> Valuation | None:
        """Value the request once and report it: span attributes, a queued
        metric point (the SDK call happens off the request path), the hook.
        The `tenant` goes on the span even where nothing was measured.

        With no `measurement`, what the window holds now. None where nothing
        was measured (or the request is excluded: no attributes, metrics or
        hook).
        """
        valuation = None
        span, scope, tenant = request.span, request.scope, request.tenant
        try:
            now = monotonic()
            if measurement is None:
                measurement = self.ledger.peek(window, now)
            if request.excluded:
                return None
            joules = measurement.total
            if joules is not None:
                key = _route(scope, request.status, tenant)
                factors = self.accounts.factors
                valuation = Valuation(
                    measurement, joules, factors, now, key, request.downstream
                )
                self.queue.record(valuation, span)
                if span.is_recording():
                    span.set_attributes(self.spans.for_span(valuation, span))
            elif tenant is not None and span.is_recording():
                span.set_attribute(TENANT, tenant)
        except Exception as exc:
            self.failed(exc)
            return None
        if self.hook is not None:
            try:
                self.hook(span, scope, measurement)
            except Exception as exc:
                self.failed(exc, "the measurement_hook")
        return valuation

    def close(self, window: Window, request: InFlight) -> None:
        """The app returned (or raised): close the window. Report it if it
        was not; else add what it drew since its `valuation` (background
        tasks) to its series' metrics, at the factors it was valued at."""
        valuation = request.valuation
        try:
            now = monotonic()
            before = valuation.measurement if valuation is not None else None
            measurement = self.ledger.close(window, now, not request.excluded, before)
            if not request.reported:
                self.report(window, request, measurement)
                return
            if valuation is None or now - valuation.at < AFTER_RESPONSE:
                return
            after = (measurement.total or 0.0) - valuation.joules
            if after > 0.0:
                grams = valuation.factors.intensity.grams(after)
                self.queue.background(after, grams, valuation.key)
        except Exception as exc:
            self.failed(exc)


def _route(scope: Scope, status: int, tenant: str | None) -> RouteKey:
    method = scope.get("method", "GET")  # a WebSocket opens with a GET
    route = getattr(scope.get("route"), "path", None)
    return route_key(route, method, status, tenant)
