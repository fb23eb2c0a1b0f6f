"""Fair figures when requests wait on their clients, hang, upgrade or leave work.

A real uvicorn serves tests/support/fairness_server.py, whose power source draws a
constant 10 W: a request alone in flight for t seconds physically owns 10 W x t.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from carbonspan.otel import attributes as a
from support.checks import wait_for
from support.server import Server, uvicorn

pytestmark = pytest.mark.e2e
WATTS = 10.0
UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


@pytest.fixture
def served() -> Iterator[Server]:
    with Server(uvicorn("support.fairness_server:app"), {}) as server:
        yield server


def state(url: str) -> dict[str, Any]:
    result: dict[str, Any] = httpx.get(url + "/state", timeout=10).json()
    return result


def served_spans(st: dict[str, Any], route: str) -> list[dict[str, Any]]:
    """The spans of `route`: their attributes and their seconds."""
    return [s for s in st["spans"] if s["attributes"].get("http.route") == route]


def spans(st: dict[str, Any], route: str) -> list[dict[str, Any]]:
    """The attributes of the spans of `route`."""
    return [s["attributes"] for s in served_spans(st, route)]


def points(st: dict[str, Any], name: str, **attrs: Any) -> list[Any]:
    return [
        p["value"]
        for p in st["metrics"].get(name, [])
        if all(p["attributes"].get(k) == v for k, v in attrs.items())
    ]


def timed_work(url: str, seconds: float = 0.3) -> float:
    """GET /work, which holds the request for `seconds`: its CPU joules."""
    r = httpx.get(f"{url}/work?seconds={seconds}", timeout=30)
    assert r.status_code == 200
    return float(spans(state(url), "/work")[-1][a.ENERGY["cpu"]])


async def trickle(port: int, length: int = 12) -> None:
    """A POST whose body arrives one byte every 0.2 s."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n"
    writer.write(head.encode())
    for _ in range(length):
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.write(b"x")
    await writer.drain()
    assert b" 200 " in await reader.read(200)
    writer.close()


def run_tricklers(port: int, n: int) -> threading.Thread:
    async def all_of_them() -> None:
        await asyncio.gather(*(trickle(port) for _ in range(n)))

    thread = threading.Thread(target=asyncio.run, args=(all_of_them(),), daemon=True)
    thread.start()
    return thread


def test_a_request_is_not_diluted_by_clients_trickling_bodies(served: Server) -> None:
    alone = timed_work(served.url)
    assert alone == pytest.approx(WATTS * 0.3, rel=0.1)  # the physics, alone
    tricklers = run_tricklers(served.port, 30)
    # Every trickler's request is open, and waiting on its body.
    wait_for(lambda: state(served.url)["echo_waiting"] == 30, interval=0.05)
    during = state(served.url)
    assert during["echo_waiting"] == 30
    assert during["in_flight"] == 1  # the 30 waiting requests are not in flight
    beside = timed_work(served.url)
    tricklers.join(10)
    # Not divided by 31: the waiting requests are charged nothing meanwhile.
    assert beside == pytest.approx(alone, rel=0.1)
    end = state(served.url)
    echoes = spans(end, "/echo")
    assert len(echoes) == 30
    for s in echoes:  # each was in flight for milliseconds of its 2.4 s
        assert 0 <= s[a.ENERGY["cpu"]] < WATTS * 0.1


def test_a_slow_reader_is_not_charged_for_its_wait(served: Server) -> None:
    alone = timed_work(served.url)
    sock = socket.create_connection(("127.0.0.1", served.port))
    sock.sendall(b"GET /big?chunks=40 HTTP/1.1\r\nHost: x\r\n\r\n")
    sock.recv(65536)  # the response has started; now read slowly
    beside = timed_work(served.url)
    for _ in range(10):  # the client's pace: 64 KiB every 0.1 s
        time.sleep(0.1)
        sock.recv(65536)
    sock.close()  # leaves before the end of the 40 MB
    end = state(served.url)
    assert beside == pytest.approx(alone, rel=0.1)
    big = spans(end, "/big")
    assert len(big) == 1 and big[0][a.ENERGY["cpu"]] < WATTS * 0.1


def test_a_stuck_handler_shows_in_the_open_energy_and_long_requests(
    served: Server,
) -> None:
    def hang() -> None:
        httpx.get(served.url + "/stuck", timeout=30)

    thread = threading.Thread(target=hang, daemon=True)
    thread.start()

    def long_one() -> bool:  # long_request is 1 s in this app
        return points(state(served.url), "codecarbon.requests.long") == [1]

    wait_for(long_one, interval=0.2)
    st = state(served.url)
    assert points(st, "codecarbon.requests.long") == [1]
    hung_for = st["time"] - st["stuck_since"]
    assert hung_for >= 1.0
    open_j = points(st, "codecarbon.energy.open", **{"hw.type": "cpu"})[0]
    closed = points(st, "codecarbon.energy", **{"hw.type": "cpu"})
    # The hung request holds about 10 W x its time so far (nearly alone in
    # flight), and the books still add up.
    assert open_j == pytest.approx(WATTS * hung_for, rel=0.15)
    assert sum(closed) + open_j == pytest.approx(st["measured"], rel=0.02)
    httpx.post(served.url + "/release", timeout=10)
    thread.join(10)
    after = state(served.url)
    assert points(after, "codecarbon.requests.long") == [0]
    (stuck,) = served_spans(after, "/stuck")
    energy = stuck["attributes"][a.ENERGY["cpu"]]
    assert energy == pytest.approx(WATTS * stuck["seconds"], rel=0.2)


def test_background_work_is_charged_to_its_route(served: Server) -> None:
    r = httpx.get(served.url + "/background?seconds=0.2", timeout=10)
    assert r.status_code == 200
    route = {"http.route": "/background"}

    def background(st: dict[str, Any]) -> list[Any]:
        return points(st, "codecarbon.request.background.energy", **route)

    # The task runs after the response; its figure comes when the app returns
    # (0.2 s of CPU, longer on a busy machine: the app times it).
    wait_for(lambda: bool(background(state(served.url))), timeout=10, interval=0.2)
    st = state(served.url)
    after = background(st)
    (ran_on,) = st["after_response"]
    assert ran_on >= 0.2
    assert after and after[0] == pytest.approx(WATTS * ran_on, rel=0.15)
    span = spans(st, "/background")[0]
    assert span[a.ENERGY["cpu"]] < WATTS * 0.05  # the response itself was quick
    grams = points(st, "codecarbon.request.emissions", **{"http.route": "/background"})
    assert grams and grams[0] > 0


def test_websocket_sessions_are_charged_for_their_work_not_their_waits(
    served: Server,
) -> None:
    url = served.url.replace("http", "ws") + "/ws"
    with connect(url) as ws:
        for i in range(5):
            ws.send(f"hello {i}")
            assert ws.recv() == f"hello {i}"
            time.sleep(0.2)  # the client's pace: the session waits meanwhile
    # An abrupt close: the socket goes without a close frame.
    abrupt = socket.create_connection(("127.0.0.1", served.port))
    abrupt.sendall(UPGRADE)
    assert abrupt.recv(4096).startswith(b"HTTP/1.1 101")
    abrupt.close()
    # Fifty at once, then all dropped.
    many = [socket.create_connection(("127.0.0.1", served.port)) for _ in range(50)]
    for sock in many:
        sock.sendall(UPGRADE)
    for sock in many:
        sock.recv(4096)
        sock.close()
    # Until the server has closed every dropped session.
    wait_for(lambda: state(served.url)["in_flight"] == 1, interval=0.1)
    st = state(served.url)
    assert st["in_flight"] == 1  # /state itself
    sessions = spans(st, "/ws")
    assert len(sessions) == 52
    echo = sessions[0]
    # Five 10 ms bursts of work over a second: charged for about 50 ms, not 1 s.
    assert WATTS * 0.04 < echo[a.ENERGY["cpu"]] < WATTS * 0.2
    energy = points(st, "codecarbon.request.energy", **{"http.route": "/ws"})
    assert sum(p["count"] for p in energy) == 52


def test_the_duration_header_is_whole_milliseconds() -> None:
    from carbonspan import CodeCarbonInstrumentor
    from carbonspan.testing import ConstantPowerSource
    from support.apps import build_app
    from support.asgi import get

    app = build_app()
    CodeCarbonInstrumentor().instrument_app(
        app, power_source=ConstantPowerSource(cpu=WATTS), response_headers=True
    )
    try:
        response = get(app, "/sleep?seconds=0.0123")
    finally:
        CodeCarbonInstrumentor.uninstrument_app(app)
    duration = response.headers["x-codecarbon-duration"]
    assert duration.isdigit() and 12 <= int(duration) < 100
