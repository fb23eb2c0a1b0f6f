"""The pure-ASGI middleware that charges each HTTP request and annotates its span.

It sits just inside the span-creating middleware (contrib's
`OpenTelemetryMiddleware`, FastAPI's native telemetry or Starlette's), so the
server span is current when a request enters. It closes the request's window
and sets the span attributes *before* forwarding the final
`http.response.body`, because the span creators end the span right after
that message. A `finally` covers exceptions and client disconnects.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from contextvars import Token
from time import monotonic
from typing import Any

import anyio
import anyio.to_thread
from opentelemetry import trace

from carbonspan import cputime
from carbonspan.config import Settings
from carbonspan.ledger import Window
from carbonspan.runtime import Runtime

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class CodeCarbonMiddleware:
    """Measure every HTTP request of `app`.

    Give either keyword settings (as for `CodeCarbonInstrumentor`) or a
    `runtime` shared with other middlewares.
    """

    def __init__(
        self, app: ASGIApp, *, runtime: Runtime | None = None, **settings: Any
    ) -> None:
        self.app = app
        self.runtime = (
            runtime if runtime is not None else Runtime(Settings.load(settings))
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime = self.runtime
        if not runtime.sampler.started and runtime.active:
            runtime.sampler.start()  # the server is up: measure from now on
        if scope["type"] != "http" or not runtime.active:
            if scope["type"] == "lifespan" and runtime.active:
                await self.app(scope, receive, _FlushAtShutdown(runtime, send))
                return
            await self.app(scope, receive, send)
            return
        request = _Request(runtime, scope, send)
        try:
            app = self.app(scope, receive, request.send)
            await (app if request.clock is None else request.clock.run(app))
        finally:
            request.end()


class _Request:
    """One request's window, and the send wrapper that closes it in time."""

    __slots__ = (
        "_send",
        "_token",
        "clock",
        "excluded",
        "ledger",
        "runtime",
        "scope",
        "span",
        "status",
        "window",
    )

    def __init__(self, runtime: Runtime, scope: Scope, send: Send) -> None:
        self.runtime = runtime
        self.scope = scope
        self._send = send
        self.span = trace.get_current_span()
        self.status = 500
        self.ledger = runtime.ledger
        excluded = runtime.excluded
        self.excluded = excluded is not None and excluded(scope)
        # cpu_time: the request's CPU clock, outside asyncio none.
        timed = cputime.begin() if runtime.timed else None
        self.clock: cputime.CpuClock | None = None
        self._token: Token[cputime.CpuClock | None] | None = None
        if timed is not None:
            self.clock, self._token = timed
        self.window: Window | None = self.ledger.open(monotonic(), self.clock)

    def end(self) -> None:
        """The app returned or raised: close the window if the body did not."""
        if self.window is not None:
            self.finish()
        if self._token is not None:
            cputime.end(self.clock, self._token)  # type: ignore[arg-type]

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message["status"]
            if self.runtime.headers is not None and not self.excluded:
                message = self._with_headers(message)
        elif self.window is not None and (
            (kind == "http.response.body" and not message.get("more_body", False))
            or kind == "http.response.pathsend"
        ):
            self.finish()
        await self._send(message)

    def _with_headers(self, message: Message) -> Message:
        runtime = self.runtime
        try:
            so_far = self.ledger.peek(self.window, monotonic())  # type: ignore[arg-type]
            extra = runtime.headers(so_far)  # type: ignore[misc]
        except Exception as exc:
            runtime.report(exc, "writing response headers")
            return message
        return {**message, "headers": [*message.get("headers", ()), *extra]}

    def finish(self) -> None:
        """Close the window; queue the metric point; set the span attributes.

        The histogram point is only queued here (no SDK call): the sampler
        thread, or the next collection, records it with this span as context.
        """
        window, self.window = self.window, None
        assert window is not None
        runtime = self.runtime
        span = self.span
        try:
            measurement = self.ledger.close(window, monotonic(), not self.excluded)
            if self.excluded:
                return
            total = measurement.total
            if total is not None:
                scope = self.scope
                runtime.metrics.record(
                    measurement,
                    getattr(scope.get("route"), "path", None),
                    scope.get("method", ""),
                    self.status,
                    runtime.books.factors,
                    span,
                )
                if span.is_recording():
                    attributes = runtime.span_attributes(measurement, span)
                    if attributes is not None:
                        span.set_attributes(attributes)
        except Exception as exc:  # never let measuring hurt the request
            runtime.report(exc)
            return
        if runtime.hook is not None:
            try:
                runtime.hook(span, self.scope, measurement)
            except Exception as exc:
                runtime.report(exc, "the measurement_hook")


class _FlushAtShutdown:
    """Lifespan send wrapper: flush telemetry before shutdown completes."""

    def __init__(self, runtime: Runtime, send: Send) -> None:
        self.runtime = runtime
        self._send = send

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
            runtime = self.runtime
            try:
                await _windows_closed(runtime)
                # Off the event loop (asyncio or trio): exporters may block.
                await anyio.to_thread.run_sync(runtime.flush)
            except Exception as exc:
                runtime.report(exc, "flushing telemetry at shutdown")
        await self._send(message)


#: At shutdown, how long the flush waits for requests still unwinding.
DRAIN_TIMEOUT = 1.0


async def _windows_closed(runtime: Runtime) -> None:
    """Let requests the server has just cancelled close their windows first.

    uvicorn cancels the requests that outlive its graceful timeout and starts
    the lifespan shutdown at once: a cancelled request may still be unwinding
    (its `finally` blocks awaiting), and what it records after the flush
    would be lost. Wait for them, a short while at most.
    """
    deadline = monotonic() + DRAIN_TIMEOUT
    while runtime.ledger.in_flight and monotonic() < deadline:
        await anyio.sleep(0.005)
