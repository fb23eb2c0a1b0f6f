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

from carbonspan.attribution import cpu_clock
from carbonspan.attribution.window import Window
from carbonspan.config import Settings
from carbonspan.otel import in_flight, tenant
from carbonspan.otel.downstream import Downstream
from carbonspan.otel.instrumentation import Instrumentation
from carbonspan.otel.reporter import Valuation
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

    Give either keyword settings (as for `CodeCarbonInstrumentor`) or an
    `instrumentation` shared with other middlewares.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        instrumentation: Instrumentation | None = None,
        **settings: Unpack[InstrumentSettings],
    ) -> None:
        self.app = app
        self.instrumentation = (
            instrumentation
            if instrumentation is not None
            else Instrumentation(Settings.load(settings))
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        instrumentation = self.instrumentation
        active = instrumentation.active
        if active and not instrumentation.sampler.started:
            instrumentation.sampler.start()  # the server is up: measure from now on
        kind = scope["type"]
        if (kind != "http" and kind != "websocket") or not active:
            if kind == "lifespan" and active:
                flush = _FlushAtShutdown(instrumentation, send)
                await self.app(scope, receive, flush)
                return
            await self.app(scope, receive, send)
            return
        request = _Request(instrumentation, scope, receive, send)
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


class _Request:
    """One request's receive and send wrappers, and what they have seen.

    The window opens when the request enters. While the app waits on its
    client (a request body still arriving, a slow reader holding back a
    send, a WebSocket waiting for its next message) the window is paused:
    the request is charged nothing meanwhile and dilutes no one else's share.
    The figures are reported before the final body goes out, since the span
    creators end the span right after it; the window closes when the app
    returns, and what it drew in between (background tasks) is reported to
    the route's metrics apart. The `Reporter` does all of that; this only
    tells it when. It is also the request `carbonspan.set_tenant` names.
    """

    __slots__ = (
        "_named",
        "_receive",
        "_send",
        "_token",
        "body_done",
        "clock",
        "downstream",
        "excluded",
        "receive",
        "reported",
        "reporter",
        "scope",
        "span",
        "status",
        "tenant",
        "valuation",
        "waits",
        "window",
        "with_headers",
    )

    def __init__(
        self,
        instrumentation: Instrumentation,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        self.reporter = reporter = instrumentation.reporter
        self.scope = scope
        self._send = send
        self._receive = receive
        self.span = trace.get_current_span()
        self.status = 500
        excluded = instrumentation.excluded
        self.excluded = excluded is not None and excluded(scope)
        self.with_headers = reporter.header_writer is not None and not self.excluded
        self.reported = False
        self.valuation: Valuation | None = None
        self.waits = 0
        websocket = scope["type"] == "websocket"
        self.body_done = not websocket and scope.get("method") in _NO_BODY
        self.receive: Receive = receive if self.body_done else self._receive_waiting
        # cpu_time: the request's CPU clock, outside asyncio none.
        timed = cpu_clock.begin() if instrumentation.timed else None
        self.clock: cpu_clock.CpuClock | None = None
        self._token: Token[cpu_clock.CpuClock | None] | None = None
        if timed is not None:
            self.clock, self._token = timed
        baggage = instrumentation.tenant_baggage
        self.tenant = None if baggage is None else tenant.from_baggage(baggage)
        self.downstream = Downstream() if instrumentation.downstream else None
        self._named = in_flight.current.set(self)
        self.window: Window | None = reporter.open(self.clock)

    def end(self) -> None:
        """The app returned or raised: close the window, report what is left."""
        window, self.window = self.window, None
        if window is not None:
            self.reporter.close(window, self)
        in_flight.current.reset(self._named)
        if self._token is not None:
            cpu_clock.end(self.clock, self._token)  # type: ignore[arg-type]

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
        window = self.window
        if kind == "http.response.start":
            self.status = message["status"]
            if self.with_headers and window is not None:
                extra = self.reporter.headers(window, self)
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await self._send(message)
            return
        if window is None:
            await self._send(message)
            return
        if kind == "websocket.accept":
            self.status = 101
        elif kind == "websocket.close" and self.status == 500:
            self.status = 403  # closed before it was accepted
        elif not self.reported and (
            (kind == "http.response.body" and not message.get("more_body", False))
            or kind == "http.response.pathsend"
        ):
            # The span creator ends the span right after this message.
            self.reported = True
            self.valuation = self.reporter.report(window, self)
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
            self.reporter.pause(self.window)

    def _unwait(self) -> None:
        self.waits -= 1
        if self.waits == 0 and self.window is not None:
            self.reporter.resume(self.window)


class _FlushAtShutdown:
    """Lifespan send wrapper: flush telemetry before shutdown completes."""

    def __init__(self, instrumentation: Instrumentation, send: Send) -> None:
        self.instrumentation = instrumentation
        self._send = send

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
            instrumentation = self.instrumentation
            try:
                await _windows_closed(instrumentation)
                # Off the event loop (asyncio or trio): exporters may block.
                await anyio.to_thread.run_sync(instrumentation.flush)
            except Exception as exc:
                instrumentation.reporter.failed(exc, "flushing telemetry at shutdown")
        await self._send(message)


#: At shutdown, how long the flush waits for requests still unwinding.
DRAIN_TIMEOUT = 1.0


async def _windows_closed(instrumentation: Instrumentation) -> None:
    """Let requests the server has just cancelled close their windows first.

    uvicorn cancels the requests that outlive its graceful timeout and starts
    the lifespan shutdown at once: a cancelled request may still be unwinding
    (its `finally` blocks awaiting), and what it records after the flush
    would be lost. Wait for them, a short while at most.
    """
    deadline = monotonic() + DRAIN_TIMEOUT
    while instrumentation.ledger.in_flight and monotonic() < deadline:
        await anyio.sleep(0.005)
