"""The hooks that read downstream figures from outgoing HTTP responses.

Each one sits below the HTTP client's OpenTelemetry instrumentation, so it
composes with it in any order and the call's client span is current when
the response is read:

- httpx: httpcore's connection pools (the transports httpx's instrumentation
  wraps call them); a custom transport that does not use httpcore, such as
  `httpx.MockTransport` or `httpx.ASGITransport`, is not read;
- requests: `requests.adapters.HTTPAdapter.send` (its instrumentation wraps
  `Session.send`, which calls it);
- aiohttp: `aiohttp.ClientResponse.start`, where the response's head has
  arrived (its instrumentation's trace hooks keep the span current around
  it).

They are installed while an instrumentation with `downstream_energy` is
alive (counted), for the clients that are importable, and never raise: a
hook that fails is logged (rate-limited) and the call goes on untouched.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from carbonspan.otel.downstream import reported
from carbonspan.throttle import Throttle

_log = logging.getLogger(__name__)
_throttle = Throttle()
_lock = threading.Lock()
_users = 0
#: (class, method name, original) of each hook in place.
_installed: list[tuple[type[Any], str, Callable[..., Any]]] = []


def _read(lookup: Callable[[str], str | None]) -> None:
    try:
        reported(lookup)
    except Exception as exc:
        if _throttle.allow("hook"):
            _log.warning("carbonspan: reading a downstream figure failed", exc_info=exc)


def _httpcore_lookup(response: Any) -> Callable[[str], str | None]:
    def lookup(name: str) -> str | None:
        wanted = name.encode()
        for key, value in response.headers:
            if key.lower() == wanted:
                return str(value.decode("latin-1"))
        return None

    return lookup


def _sync_pool(original: Callable[..., Any]) -> Callable[..., Any]:
    def handle_request(self: Any, request: Any) -> Any:
        response = original(self, request)
        _read(_httpcore_lookup(response))
        return response

    return handle_request


def _async_pool(original: Callable[..., Any]) -> Callable[..., Any]:
    async def handle_async_request(self: Any, request: Any) -> Any:
        response = await original(self, request)
        _read(_httpcore_lookup(response))
        return response

    return handle_async_request


def _adapter(original: Callable[..., Any]) -> Callable[..., Any]:
    def send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        response = original(self, request, *args, **kwargs)
        _read(response.headers.get)
        return response

    return send


def _aiohttp_start(original: Callable[..., Any]) -> Callable[..., Any]:
    async def start(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = await original(self, *args, **kwargs)
        _read(self.headers.get)
        return result

    return start


#: module, class, method, the hook's maker.
_HOOKS = (
    ("httpcore", "ConnectionPool", "handle_request", _sync_pool),
    ("httpcore", "AsyncConnectionPool", "handle_async_request", _async_pool),
    ("requests.adapters", "HTTPAdapter", "send", _adapter),
    ("aiohttp", "ClientResponse", "start", _aiohttp_start),
)


def install() -> None:
    """Hook the importable clients (the first user installs)."""
    global _users
    with _lock:
        _users += 1
        if _users > 1:
            return
        for module_name, class_name, method, make in _HOOKS:
            try:
                cls = getattr(importlib.import_module(module_name), class_name)
            except (ImportError, AttributeError):
                continue
            original = getattr(cls, method)
            setattr(cls, method, make(original))
            _installed.append((cls, method, original))


def uninstall() -> None:
    """Undo `install` (the last user uninstalls)."""
    global _users
    with _lock:
        _users -= 1
        if _users > 0:
            return
        while _installed:
            cls, method, original = _installed.pop()
            setattr(cls, method, original)


def hooked() -> list[str]:
    """`module.Class.method` of each hook in place."""
    with _lock:
        return [f"{c.__module__}.{c.__qualname__}.{m}" for c, m, _ in _installed]
