"""Requests' figures recorded off the request path.

The request path makes no SDK call: `PointQueue.record` appends the request's
valuation to a bounded buffer. `PointQueue.drain` records them in a batch, one
histogram point each, with the request's span in an explicit context so that
exemplars still link to traces, and adds their grams to the per-route sums
that the observable counters of `carbonspan.otel.metrics` report. A series
is a route, a method, a status and a tenant (its name, `_other` beyond the
`max_tenants` first ones, or none). The sampler thread drains after each
tick, and so does every collection.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import TYPE_CHECKING, Any

from opentelemetry.context import Context
from opentelemetry.metrics import Histogram
from opentelemetry.trace import Span, set_span_in_context

from carbonspan.otel import attributes as a
from carbonspan.otel.tenant import TenantLabels
from carbonspan.throttle import Throttle

if TYPE_CHECKING:
    from carbonspan.otel.reporter import Valuation

#: A request's series: route template, method, status, tenant.
RouteKey = tuple[str | None, str, int, str | None]
#: One finished request waiting to be recorded: its valuation (which holds
#: its route key, with the tenant's own name) and its server span (for the
#: exemplar).
Pending = tuple["Valuation", Span]
#: Requests the buffer holds at most; beyond, requests are dropped and counted.
#: At the 0.1 s default interval that is 160,000 requests/s, or a sampler
#: stalled for 1.6 s at 10,000 requests/s.
BUFFER_SIZE = 16384
_EMPTY = Context()
_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
)
_log = logging.getLogger(__name__)


class PointQueue:
    """The queue of valued requests, and the per-route sums they feed."""

    def __init__(self, histogram: Histogram, downstream: Histogram) -> None:
        self.histogram = histogram
        #: codecarbon.request.energy.downstream: what requests' calls reported.
        self.downstream = downstream
        self.lock = threading.Lock()  # guards the sums below
        #: Per route key: g CO2eq (the requests' and what they left running),
        #: J after the responses, embodied g, and the metric attributes.
        self.route_grams: dict[RouteKey, float] = {}
        self.background_joules: dict[RouteKey, float] = {}
        self.route_embodied: dict[RouteKey, float] = {}
        self.attributes: dict[RouteKey, dict[str, Any]] = {}
        #: The tenants the series may name (`max_tenants` of them).
        self.tenants = TenantLabels()
        self._pending: deque[Pending] = deque()
        self._drain_lock = threading.Lock()
        self.buffer_size = BUFFER_SIZE
        self.dropped = 0  # requests not recorded because the buffer was full
        self._throttle = Throttle()

    def record(self, valuation: Valuation, span: Span) -> None:
        """Queue one valued request; the SDK call happens in `drain`.

        Never blocks: when the buffer is full the request is dropped and
        counted (`codecarbon.requests.dropped`).
        """
        pending = self._pending
        if len(pending) < self.buffer_size:
            pending.append((valuation, span))
        else:
            self._drop()

    def background(self, joules: float, grams: float, key: RouteKey) -> None:
        """Add the work a request left running after its response to its
        route's figures (and its emissions to `codecarbon.request.emissions`)."""
        with self.lock:
            key = self._series(key)
            self.background_joules[key] = self.background_joules.get(key, 0.0) + joules
            self.route_grams[key] = self.route_grams.get(key, 0.0) + grams

    def _series(self, key: RouteKey) -> RouteKey:
        """`key` with its tenant's label (under `lock`); its attributes made."""
        tenant = key[3]
        if tenant is not None:
            label = self.tenants.label(tenant)
            if label is not tenant:
                key = (key[0], key[1], key[2], label)
        if key not in self.attributes:
            self.attributes[key] = _route_attributes(key)
        return key

    def drain(self) -> int:
        """Record every queued request (one histogram point each); how many.

        Called by the sampler thread after each tick, by every collection
        (from the first observable callback, before the SDK reads the
        instruments), and at flush and close.
        """
        pending = self._pending
        if not pending:
            return 0
        histogram, downstream = self.histogram.record, self.downstream.record
        grams: dict[RouteKey, float] = {}
        embodied: dict[RouteKey, float] = {}
        done = 0
        with self._drain_lock:
            try:
                while True:
                    try:
                        valuation, span = pending.popleft()
                    except IndexError:
                        break
                    with self.lock:
                        key = self._series(valuation.key)
                        attrs = self.attributes[key]
                    # The request's own span, never the draining thread's.
                    context = (
                        set_span_in_context(span, _EMPTY)
                        if span.get_span_context().is_valid
                        else _EMPTY
                    )
                    histogram(valuation.joules, attrs, context=context)
                    if valuation.downstream is not None:
                        downstream(valuation.downstream[0], attrs, context=context)
                    grams[key] = grams.get(key, 0.0) + valuation.grams
                    if valuation.embodied is not None:
                        embodied[key] = embodied.get(key, 0.0) + valuation.embodied
                    done += 1
            finally:
                if grams:
                    with self.lock:
                        for sums, new in (
                            (self.route_grams, grams),
                            (self.route_embodied, embodied),
                        ):
                            for key, value in new.items():
                                sums[key] = sums.get(key, 0.0) + value
        return done

    def _drop(self) -> None:
        with self.lock:
            self.dropped += 1
            count = self.dropped
            if not self._throttle.allow("dropped"):
                return
        _log.warning(
            "carbonspan: %d request(s) so far not recorded in codecarbon.request.*: "
            "the buffer of %d requests waiting for the sampler thread was full "
            "(counted in codecarbon.requests.dropped). Logged at most once a minute.",
            count,
            self.buffer_size,
        )

    def _after_fork_in_child(self) -> None:
        # The parent records what it had queued; the child starts empty.
        self._pending = deque()
        self._drain_lock = threading.Lock()
        self.lock = threading.Lock()
        self.dropped = 0
        self._throttle = Throttle()
        self.tenants._after_fork_in_child()


def route_key(
    route: str | None, method: str, status: int, tenant: str | None = None
) -> RouteKey:
    """A request's series: methods outside the standard set are `_OTHER`."""
    return route, method if method in _METHODS else "_OTHER", status, tenant


def _route_attributes(key: RouteKey) -> dict[str, Any]:
    route, method, status, tenant = key
    attrs: dict[str, Any] = {a.HTTP_METHOD: method, a.HTTP_STATUS: status}
    if route is not None:
        attrs[a.HTTP_ROUTE] = route
    if tenant is not None:
        attrs[a.TENANT] = tenant
    return attrs
