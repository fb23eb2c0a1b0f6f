"""Who a request is for: its tenant, named by the app or by baggage.

In the app, from a FastAPI dependency that authenticates the caller:

    from carbonspan import set_tenant

    def customer(user: User = Depends(authenticated)) -> User:
        set_tenant(user.organisation_id)
        return user

Across services, the setting `tenant_baggage` names an OpenTelemetry baggage
entry (`tenant.id`, say) read when a request enters; `set_tenant` wins over
it. The tenant goes on the request's span as `codecarbon.tenant`, whatever
its name, and on its metric points, where `TenantLabels` keeps at most
`max_tenants` names per process and records the others as `_other`.

Nothing here fails a request: a name that is not a string, or is empty, is
logged (once, then at most once a minute) and ignored; a long one is cut to
`MAX_LENGTH` characters.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from opentelemetry import baggage

from carbonspan.otel.in_flight import current
from carbonspan.throttle import Throttle

#: A tenant's name is cut to this many characters.
MAX_LENGTH = 128
#: The metric label of the tenants beyond `max_tenants`.
OTHER = "_other"
#: `max_tenants` bounds, and its default.
MAX_TENANTS, MAX_MAX_TENANTS = 100, 10000

_log = logging.getLogger(__name__)
_throttle = Throttle()


def set_tenant(name: str) -> None:
    """Name the tenant of the request in flight (the last call wins).

    Callable from the handler, a dependency or a thread the request runs
    in. Outside a request it does nothing. `name` is trimmed of surrounding
    blanks and cut to `MAX_LENGTH` characters; a name that is not a string,
    or is empty, is logged and ignored: the request goes on, measured as if
    no tenant were named. What is named after the response has started
    (in a background task, say) is not reported: the request's span has
    ended.
    """
    request = current.get()
    if request is None:
        if _throttle.allow("outside"):
            _log.debug("carbonspan.set_tenant(%r): no request in flight; ignored", name)
        return
    tenant = checked(name, "carbonspan.set_tenant()")
    if tenant is not None:
        request.tenant = tenant


def from_baggage(key: str) -> str | None:
    """The tenant the current context's baggage entry `key` names, if any."""
    value = baggage.get_baggage(key)
    if value is None:
        return None
    return checked(value, f"the baggage entry {key!r} (setting tenant_baggage)")


def checked(value: Any, where: str) -> str | None:
    """`value` as a tenant's name; None (logged) if it cannot be one."""
    if isinstance(value, str):
        name = value.strip()
        if name:
            return name[:MAX_LENGTH]
        problem = "is empty"
    else:
        problem = f"is of type {type(value).__name__}, not str"
    if _throttle.allow(f"{where} {problem}"):
        _log.warning(
            "carbonspan: a tenant named by %s %s (%.60r); ignored. Logged at most "
            "once a minute.",
            where,
            problem,
            value,
        )
    return None


class TenantLabels:
    """The `codecarbon.tenant` values metric points may carry: the first
    `limit` tenants seen keep their name for the process's life, the others
    are `OTHER`. Memory is bounded by `limit`, whatever the traffic."""

    def __init__(self, limit: int = MAX_TENANTS) -> None:
        self.limit = limit
        self._kept: set[str] = set()
        self._lock = threading.Lock()

    def label(self, tenant: str) -> str:
        kept = self._kept
        if tenant in kept:
            return tenant
        with self._lock:
            if tenant in kept or len(kept) < self.limit:
                kept.add(tenant)
                return tenant
        return OTHER

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
