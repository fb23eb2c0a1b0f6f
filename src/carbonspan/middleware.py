"""The pure-ASGI middleware that charges each HTTP request and annotates its span.

It sits just inside the span-creating middleware (contrib's
`OpenTelemetryMiddleware`, FastAPI's native telemetry or Starlette's), so the
server span is current when a request enters. It closes the request's window
and sets the span attributes *before* forwarding the final
`http.response.body`, because the span creators end the span right after
that message. A `finally` covers exceptions and client disconnects.
"""

from __future__ import annotations

from contextvars import Token
from time import monotonic

import anyio
import anyio.to_thread
from opentelemetry import trace

from carbonspan import cputime
from carbonspan.config import Settings
from carbonspan.ledger import Window
from carbonspan.runtime import Runtime
from carbonspan.source import Measurement
from carbonspan.types import (
    ASGIApp,
    InstrumentSettings,
    Message,
    Receive,
    Scope,
    Send,
    Unpack,
)


class CodeCarbonMiddleware:
    """Measure every HTTP request of `app`.

    Give either keyword settings (as for `CodeCarbonInstrumentor`) or a
    `runtime` shared with other middlewares.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        runtime: Runtime | None = None,
        **settings: Unpack[InstrumentSettings],
    ) -> None:
        self.app = app
        self.runtime = (
            runtime if runtime is not None else Runtime(Settings.load(settings))
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime = self.runtime
        if not runtime.sampler.started and runtime.active:
            runtime.sampler.start()  # the server is up: measure from now on
        kind = scope["type"]
        if (kind != "http" and kind != "websocket") or not runtime.active:
            if kind == "lifespan" and runtime.active:
                await self.app(scope, receive, _FlushAtShutdown(runtime, send))
                return
            await self.app(scope, receive, send)
            return
        request = _Request(runtime, scope, receive, send)
        try:
            app = self.app(scope, request.receive, request.send)
            await (app if request.clock is None else request.clock.run(app))
        finally:
            request.end()


#: Methods whose requests carry no body: their `receive` is left as it is.
_NO_BODY = frozenset(("GET", "HEAD"))


#: A last body this big (bytes) or more (or a file sent by the server) can
#: wait on a slow reader: servers write the rest of a response without
#: waiting (asyncio's transports start pushing back at 64 KiB buffered).
BIG_BODY = 65536
#: Work after the response that lasts less than this (s) is not reported apart
#: in the route's metrics: it is the response's own unwinding.
AFTER_RESPONSE = 0.001


class _Request:
    """One request's window, and the receive and send wrappers around it.

    The window opens when the request enters. While the app waits on its
    client (a request body still arriving, a slow reader holding back a
    send, a WebSocket waiting for its next message) the window is paused:
    the request is charged nothing meanwhile and dilutes no one else's share.
    The figures are reported before the final body goes out, since the span
    creators end the span right after it; the window closes when the app
    returns, and what it drew in between (background tasks) is reported to
    the route's metrics apart.
    """

    __slots__ = (
        "_receive",
        "_send",
        "_token",
        "body_done",
        "clock",
        "excluded",
        "ledger",
        "receive",
        "reported",
        "reported_at",
        "runtime",
        "scope",
        "span",
        "status",
        "waits",
        "window",
    )

    def __init__(
        self, runtime: Runtime, scope: Scope, receive: Receive, send: Send
    ) -> None:
        self.runtime = runtime
        self.scope = scope
        self._send = send
        self._receive = receive
        self.span = trace.get_current_span()
        self.status = 500
        self.ledger = runtime.ledger
        excluded = runtime.excluded
        self.excluded = excluded is not None and excluded(scope)
        self.reported: Measurement | None = None
        self.reported_at = 0.0
        self.waits = 0
        websocket = scope["type"] == "websocket"
        self.body_done = not websocket and scope.get("method") in _NO_BODY
        self.receive: Receive = receive if self.body_done else self._receive_waiting
        # cpu_time: the request's CPU clock, outside asyncio none.
        timed = cputime.begin() if runtime.timed else None
        self.clock: cputime.CpuClock | None = None
        self._token: Token[cputime.CpuClock | None] | None = None
        if timed is not None:
            self.clock, self._token = timed
        self.window: Window | None = self.ledger.open(monotonic(), self.clock)

    def end(self) -> None:
        """The app returned or raised: close the window, report what is left."""
        if self.window is not None:
            self.finish()
        if self._token is not None:
            cputime.end(self.clock, self._token)  # type: ignore[arg-type]

    async def _receive_waiting(self) -> Message:
        """`receive`, out of n(t) while the body (or a WebSocket message) is
        awaited."""
        if self.body_done or self.window is None:
            return await self._receive()
        self._wait()
        try:
            message = await self._receive()
        finally:
            self._unwait()
        if message["type"] == "http.request" and not message.get("more_body", False):
            self.body_done = True
        return message

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message["status"]
            if self.runtime.headers is not None and not self.excluded:
                message = self._with_headers(message)
            await self._send(message)
            return
        if self.window is None:
            await self._send(message)
            return
        if kind == "websocket.accept":
            self.status = 101
        elif kind == "websocket.close" and self.status == 500:
            self.status = 403  # closed before it was accepted
        elif self.reported is None and (
            (kind == "http.response.body" and not message.get("more_body", False))
            or kind == "http.response.pathsend"
        ):
            self.report()  # the span creator ends the span right after this
            body = message.get("body", b"")
            if kind != "http.response.pathsend" and len(body) < BIG_BODY:
                # A small last body is written without waiting on the reader.
                await self._send(message)
                return
        self._wait()  # a slow reader holds the send back
        try:
            await self._send(message)
        finally:
            self._unwait()

    def _wait(self) -> None:
        self.waits += 1
        if self.waits == 1 and self.window is not None:
            try:
                self.ledger.pause(self.window, monotonic())
            except Exception as exc:  # never let measuring hurt the request
                self.runtime.report(exc)

    def _unwait(self) -> None:
        self.waits -= 1
        if self.waits == 0 and self.window is not None:
            try:
                self.ledger.resume(self.window, monotonic())
            except Exception as exc:
                self.runtime.report(exc)

    def _with_headers(self, message: Message) -> Message:
        runtime = self.runtime
        try:
            so_far = self.ledger.peek(self.window, monotonic())  # type: ignore[arg-type]
            extra = runtime.headers(so_far)  # type: ignore[misc]
        except Exception as exc:
            runtime.report(exc, "writing response headers")
            return message
        return {**message, "headers": [*message.get("headers", ()), *extra]}

    def report(self, measurement: Measurement | None = None) -> None:
        """Queue the metric point, set the span attributes, call the hook.

        With no `measurement`, what the window holds so far. The histogram
        point is only queued here (no SDK call): the sampler thread, or the
        next collection, records it with this span as context.
        """
        runtime, span = self.runtime, self.span
        try:
            if measurement is None:
                self.reported_at = monotonic()
                measurement = self.ledger.peek(self.window, self.reported_at)  # type: ignore[arg-type]
            self.reported = measurement
            if self.excluded:
                return
            total = measurement.total
            if total is not None:
                factors = runtime.books.factors  # one valuation for both
                runtime.metrics.record(measurement, *self._route(), factors, span)
                if span.is_recording():
                    attributes = runtime.span_attributes(measurement, span, factors)
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

    def _route(self) -> tuple[str | None, str, int]:
        scope = self.scope
        method = scope.get("method", "GET")  # a WebSocket opens with a GET
        return getattr(scope.get("route"), "path", None), method, self.status

    def finish(self) -> None:
        """Close the window. Report it if it was not, else report the work
        done after the response (background tasks) to the route's metrics."""
        window, self.window = self.window, None
        assert window is not None
        runtime = self.runtime
        try:
            now = monotonic()
            reported = self.reported
            measurement = self.ledger.close(window, now, not self.excluded, reported)
            if reported is None:
                self.report(measurement)
                return
            if self.excluded or now - self.reported_at < AFTER_RESPONSE:
                return
            after = (measurement.total or 0.0) - (reported.total or 0.0)
            if after > 0.0:
                runtime.metrics.background(after, *self._route(), runtime.intensity)
        except Exception as exc:  # never let measuring hurt the request
            runtime.report(exc)


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
