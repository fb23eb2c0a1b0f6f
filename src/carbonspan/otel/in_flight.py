"""The request in flight in this context: what the app (`set_tenant`) and
the request's outgoing calls (`carbonspan.otel.downstream`) tell it.

The middleware sets `current` when a request enters and resets it when the
app returns; a `def` handler or dependency in the threadpool, and the tasks
the request starts, see it through their copied context.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Protocol

from opentelemetry.trace import Span

if TYPE_CHECKING:
    from carbonspan.otel.downstream import Downstream
    from carbonspan.otel.reporter import Valuation
    from carbonspan.types import Scope


class InFlight(Protocol):
    """A request in flight, as the middleware holds it and the reporter
    reads it."""

    #: Its tenant so far (None: none named).
    tenant: str | None
    #: What its outgoing calls reported so far; None where downstream
    #: energy is not read.
    downstream: Downstream | None
    #: Its server span, ASGI scope, and response status so far.
    span: Span
    scope: Scope
    status: int
    #: Whether it is excluded (no attributes, metrics or hook).
    excluded: bool
    #: Whether it was reported (before its final body), and its valuation.
    reported: bool
    valuation: Valuation | None


current: ContextVar[InFlight | None] = ContextVar("carbonspan.request", default=None)
