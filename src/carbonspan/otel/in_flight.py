"""The request in flight in this context: what the app (`set_tenant`) and
the request's outgoing calls (`carbonspan.otel.downstream`) tell it.

The middleware sets `current` when a request enters and resets it when the
app returns; a `def` handler or dependency in the threadpool, and the tasks
the request starts, see it through their copied context.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Protocol

from opentelemetry.trace import Span


class InFlight(Protocol):
    """A request in flight, as the middleware holds it."""

    #: Its tenant so far (None: none named).
    tenant: str | None
    #: What its outgoing calls reported so far: [J, g, J reported without
    #: g, calls]; None where downstream energy is not read.
    downstream: list[float] | None
    #: Its server span.
    span: Span


current: ContextVar[InFlight | None] = ContextVar("carbonspan.request", default=None)
