"""Request lifecycle edge cases (hardening item 4).

After each case the ledger holds no open window: `inst.ledger.in_flight`
and the `codecarbon.requests.in_flight` observable are both 0. Requests are
driven through the ASGI interface so that a test controls every message;
e2e/test_uvicorn.py serves the same cases from a real uvicorn and shuts it
down with requests in flight.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi import FastAPI
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

from carbonspan import CodeCarbonMiddleware
from carbonspan.otel import attributes as a
from carbonspan.otel.instrumentation import Instrumentation
from carbonspan.testing import ConstantPowerSource
from support import lifecycle
from support.apps import build_app
from support.asgi import Exchange, Lifespan, Message, call, http_scope
from support.checks import (
    assert_no_open_window,
    assert_sane,
    async_wait_for,
    carbonspan_warnings,
    in_flight_metric,
)
from support.lifecycle import CPU_W, lifecycle_app
from support.otel import Instrumented, Otel, attrs, wait_ready


@pytest.fixture
def measured(otel: Otel, instrument: Instrumented) -> tuple[FastAPI, Instrumentation]:
    app = lifecycle_app()
    inst = instrument(
        app, otel, power_source=ConstantPowerSource(cpu=CPU_W), sample_interval=0.01
    )
    wait_ready(inst)
    return app, inst


def histogram_points(otel: Otel) -> list[Any]:
    return otel.points("codecarbon.request.energy")


# -- disconnects and cancellation -------------------------------------------


@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
def test_client_disconnect_mid_stream_closes_the_window(
    spec_version: str,
    measured: tuple[FastAPI, Instrumentation],
    otel: Otel,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """ASGI < 2.4: the app hears http.disconnect; 2.4: its send raises OSError."""
    app, inst = measured
    gone = asyncio.Event()
    chunks = 0

    class Client(Exchange):
        async def send(self, message: Message) -> None:
            nonlocal chunks
            if message["type"] == "http.response.body":
                chunks += 1
                if chunks == 3:
                    gone.set()
                if chunks > 3 and spec_version == "2.4":
                    raise OSError("connection reset by peer")
            await super().send(message)

    async def receive() -> Message:
        if not receive.started:  # type: ignore[attr-defined]
            receive.started = True  # type: ignore[attr-defined]
            return {"type": "http.request", "body": b"", "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    receive.started = False  # type: ignore[attr-defined]

    async def go() -> None:
        try:
            await call(
                app,
                "/stream?chunks=1000&pause=0.002",
                receive=receive,
                exchange=Client(),
                spec_version=spec_version,
            )
        except Exception as exc:  # what a server sees: logged, not ours
            assert spec_version == "2.4", exc

    with caplog.at_level(logging.WARNING, logger="carbonspan"):
        asyncio.run(go())
    assert 3 <= chunks < 20  # the stream stopped with the client
    (span,) = otel.server_spans()
    got = attrs(span)
    assert_sane(got)
    assert got[a.ENERGY_TOTAL] > 0
    assert carbonspan_warnings(caplog) == []
    assert_no_open_window(inst, otel)


@pytest.mark.parametrize("attribution", ["time_share", "cpu_time"])
@pytest.mark.parametrize("path", ["/sleep?seconds=30", "/sync-sleep?seconds=0.2"])
def test_cancelled_request_task_closes_its_window(
    attribution: str,
    path: str,
    otel: Otel,
    instrument: Instrumented,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = lifecycle_app()
    inst = instrument(
        app,
        otel,
        power_source=ConstantPowerSource(cpu=CPU_W),
        sample_interval=0.01,
        attribution=attribution,
    )
    wait_ready(inst)

    async def go() -> None:
        task = asyncio.create_task(call(app, path))
        await async_wait_for(lambda: app.state.entered == [path.partition("?")[0]])
        # Inside the handler now (asleep, or in its worker thread).
        assert inst.ledger.in_flight == 1
        assert in_flight_metric(otel) == 1  # the observable sees it too
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with caplog.at_level(logging.WARNING, logger="carbonspan"):
        asyncio.run(go())
    assert carbonspan_warnings(caplog) == []
    assert_no_open_window(inst, otel)
    # The ledger is still sound: the next request is charged normally.
    exchange = asyncio.run(call(app, "/sleep?seconds=0.03"))
    assert exchange.status == 200
    last = attrs(otel.server_spans()[-1])
    assert last[a.POWER["cpu"]] == pytest.approx(CPU_W, rel=0.1)
    assert_no_open_window(inst, otel)


# -- non-HTTP scopes ----------------------------------------------------------


def test_websocket_holds_a_window_paused_while_it_waits(
    measured: tuple[FastAPI, Instrumentation],
    otel: Otel,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, inst = measured
    incoming: asyncio.Queue[Message] = asyncio.Queue()
    sent: list[Message] = []
    observed: list[float] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def go() -> None:
        scope = {
            **http_scope("/ws"),
            "type": "websocket",
            "scheme": "ws",
            "subprotocols": [],
        }
        scope.pop("method")
        await incoming.put({"type": "websocket.connect"})
        await incoming.put({"type": "websocket.receive", "text": "hello"})
        connection = asyncio.create_task(app(scope, incoming.get, send))
        await async_wait_for(lambda: len(sent) >= 2)
        # The connection is open, waiting for its next message: out of n(t).
        observed.extend([inst.ledger.in_flight, in_flight_metric(otel)])
        await incoming.put({"type": "websocket.receive", "text": "bye"})
        await async_wait_for(lambda: len(sent) >= 3)
        await incoming.put({"type": "websocket.disconnect", "code": 1000})
        await connection

    with caplog.at_level(logging.WARNING, logger="carbonspan"):
        asyncio.run(go())
    assert [m["type"] for m in sent] == ["websocket.accept"] + ["websocket.send"] * 2
    assert [m["text"] for m in sent[1:]] == ["HELLO", "BYE"]
    assert observed == [0, 0]
    assert carbonspan_warnings(caplog) == []
    server = otel.server_spans()
    assert len(server) == 1 and a.ENERGY["cpu"] in attrs(server[0])
    assert_no_open_window(inst, otel)


@pytest.mark.parametrize("failure", [None, "startup", "shutdown"])
def test_lifespan_starts_the_sampler_and_flushes_at_shutdown(
    failure: str | None,
    otel: Otel,
    instrument: Instrumented,
    caplog: pytest.LogCaptureFixture,
) -> None:
    events: list[str] = []

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        events.append("startup")
        if failure == "startup":
            raise RuntimeError("no database")
        yield
        events.append("shutdown")
        if failure == "shutdown":
            raise RuntimeError("could not close the pool")

    source = ConstantPowerSource(cpu=CPU_W)
    app = lifecycle_app(lifespan=lifespan)
    inst = instrument(app, otel, power_source=source, sample_interval=60)
    server = Lifespan(app)
    sent = server.sent
    reads: dict[str, int] = {}

    async def go() -> None:
        task = await server.start()
        await async_wait_for(lambda: bool(sent))
        reads["startup"] = source.reads
        if sent == ["lifespan.startup.complete"]:
            # Started with the server, before any request: its first two
            # readings, FIRST_GAP apart (power is known), then none for 60 s.
            assert inst.sampler.running
            await async_wait_for(lambda: source.reads >= 2)
            reads["running"] = source.reads
            assert (await call(app, "/fast")).status == 200
            await server.shutdown()
            await async_wait_for(lambda: len(sent) == 2)
        try:
            await task
        except RuntimeError as exc:
            assert failure is not None and str(exc) in (
                "no database",
                "could not close the pool",
            )

    with caplog.at_level(logging.WARNING, logger="carbonspan"):
        asyncio.run(go())
    assert carbonspan_warnings(caplog) == []
    if failure == "startup":
        assert sent == ["lifespan.startup.failed"] and events == ["startup"]
    else:
        end = "failed" if failure else "complete"
        assert sent == ["lifespan.startup.complete", f"lifespan.shutdown.{end}"]
        assert events == ["startup", "shutdown"]
        # A last reading at shutdown (the sampler's own is 60 s away).
        assert source.reads == reads["running"] + 1
        (span,) = otel.server_spans()
        assert attrs(span)[a.ENERGY_TOTAL] > 0
    assert_no_open_window(inst, otel)


def test_lifespan_shutdown_flushes_and_takes_a_last_reading(otel: Otel) -> None:
    source = ConstantPowerSource(cpu=1.0)
    app = build_app()
    measured = CodeCarbonMiddleware(
        app, power_source=source, sample_interval=30, meter_provider=otel.meter_provider
    )
    flushed: list[int] = []
    otel.meter_provider.force_flush = lambda timeout_millis=0: flushed.append(1) or True  # type: ignore[method-assign]

    async def lifespan() -> list[str]:
        messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
        sent: list[str] = []

        async def receive() -> dict[str, str]:
            return next(messages)

        async def send(message: dict[str, Any]) -> None:
            sent.append(message["type"])

        await measured({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                       receive, send)  # fmt: skip
        return sent

    try:
        reads_before = source.reads
        sent = asyncio.run(lifespan())
        assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
        assert flushed == [1]
        assert source.reads > reads_before
    finally:
        measured.instrumentation.close()


def test_shutdown_flush_waits_for_cancelled_requests_to_close(
    otel: Otel, instrument: Instrumented
) -> None:
    """uvicorn cancels what outlives its grace period, then shuts down at once."""
    app = lifecycle_app()
    inst = instrument(
        app, otel, power_source=ConstantPowerSource(cpu=CPU_W), sample_interval=0.01
    )
    open_at_flush: list[int] = []
    flush = inst.flush

    def spy(*args: Any) -> None:
        open_at_flush.append(inst.ledger.in_flight)
        flush(*args)

    inst.flush = spy  # type: ignore[method-assign]
    server = Lifespan(app)
    sent = server.sent

    async def go() -> None:
        lifespan = await server.start()
        await async_wait_for(lambda: sent == ["lifespan.startup.complete"])
        request = asyncio.create_task(call(app, "/slow-cleanup"))
        await async_wait_for(lambda: inst.ledger.in_flight == 1)
        request.cancel()
        await server.shutdown()
        await lifespan
        with pytest.raises(asyncio.CancelledError):
            await request

    asyncio.run(go())
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert open_at_flush == [0]  # the request closed, and was counted, first
    assert_no_open_window(inst, otel)


# -- ASGI extensions and methods ---------------------------------------------


class Watching(Exchange):
    """Notes how many windows were open when each message reached the server."""

    def __init__(self, inst: Instrumentation) -> None:
        super().__init__()
        self.inst = inst
        self.open_at: dict[str, int] = {}

    async def send(self, message: Message) -> None:
        self.open_at[message["type"]] = self.inst.ledger.in_flight
        await super().send(message)


def test_pathsend_closes_the_window_before_the_file_goes(
    measured: tuple[FastAPI, Instrumentation], otel: Otel
) -> None:
    app, inst = measured
    exchange = Watching(inst)
    extensions = {"http.response.pathsend": {}}
    asyncio.run(call(app, "/file", exchange=exchange, extensions=extensions))
    types = [m["type"] for m in exchange.messages]
    assert types == ["http.response.start", "http.response.pathsend"]
    assert exchange.messages[1]["path"] == lifecycle.__file__
    # Charged before the server sends the file, and out of n(t) while it does
    # (a file can wait on its reader); the window closes when the app returns.
    assert exchange.open_at == {"http.response.start": 1, "http.response.pathsend": 0}
    (span,) = otel.server_spans()
    assert attrs(span)[a.ENERGY_TOTAL] > 0
    (point,) = histogram_points(otel)
    assert point.attributes[a.HTTP_ROUTE] == "/file" and point.count == 1
    assert_no_open_window(inst, otel)


async def trailers_app(scope: Any, receive: Any, send: Any) -> None:
    """A gRPC-style response: body, then trailers (ASGI's trailers extension)."""
    assert scope["type"] == "http"
    await receive()
    await send({"type": "http.response.start", "status": 200, "trailers": True,
                "headers": [(b"content-type", b"application/grpc")]})  # fmt: skip
    await send({"type": "http.response.body", "body": b"part", "more_body": True})
    await asyncio.sleep(0.02)
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    await send({"type": "http.response.trailers", "more_trailers": True,
                "headers": [(b"grpc-status", b"0")]})  # fmt: skip
    await send({"type": "http.response.trailers", "more_trailers": False,
                "headers": [(b"grpc-message", b"OK")]})  # fmt: skip


def test_trailers_follow_the_closed_window_untouched(otel: Otel) -> None:
    middleware = CodeCarbonMiddleware(
        trailers_app,
        power_source=ConstantPowerSource(cpu=CPU_W),
        meter_provider=otel.meter_provider,
        sample_interval=0.01,
    )
    inst = middleware.instrumentation
    app = OpenTelemetryMiddleware(
        middleware,
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
    )
    try:
        wait_ready(inst)
        exchange = Watching(inst)
        extensions = {"http.response.trailers": {}}
        asyncio.run(call(app, "/rpc", method="POST", exchange=exchange,
                         extensions=extensions))  # fmt: skip
        types = [m["type"] for m in exchange.messages]
        assert types == ["http.response.start", "http.response.body",
                         "http.response.body", "http.response.trailers",
                         "http.response.trailers"]  # fmt: skip
        assert exchange.messages[3]["headers"] == [(b"grpc-status", b"0")]
        assert exchange.messages[4]["headers"] == [(b"grpc-message", b"OK")]
        assert exchange.open_at["http.response.trailers"] == 0
        (span,) = otel.server_spans()
        assert attrs(span)[a.ENERGY_TOTAL] > 0  # set before the span ended
        assert_no_open_window(inst, otel)
    finally:
        inst.close()


def test_head_requests_are_measured_and_labelled(
    measured: tuple[FastAPI, Instrumentation], otel: Otel
) -> None:
    app, inst = measured
    page = asyncio.run(call(app, "/page", method="HEAD"))
    refused = asyncio.run(call(app, "/fast", method="HEAD"))
    assert (page.status, refused.status) == (200, 405)
    spans = otel.server_spans()
    assert len(spans) == 2
    for span in spans:
        assert_sane(attrs(span))
        assert attrs(span)[a.ENERGY_TOTAL] > 0
    labels = {
        (p.attributes[a.HTTP_METHOD], p.attributes[a.HTTP_STATUS])
        for p in histogram_points(otel)
    }
    assert labels == {("HEAD", 200), ("HEAD", 405)}
    assert_no_open_window(inst, otel)
