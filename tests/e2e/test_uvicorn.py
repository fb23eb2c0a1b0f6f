"""End to end: a real uvicorn server in a subprocess, spans read from its
exporter; and a shutdown with requests in flight."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from carbonspan.otel import attributes as a
from support.checks import wait_for
from support.server import Server, send_all, server_spans_in, uvicorn

pytestmark = pytest.mark.e2e

MIX = (
    ["/sleep?seconds=0.2"] * 20
    + ["/sync-sleep?seconds=0.1"] * 10
    + ["/cpu?seconds=0.01"] * 5
    + ["/fast"] * 8
    + ["/stream?chunks=3&pause=0.05"] * 4
    + ["/boom", "/teapot", "/nope"]
)


@pytest.mark.parametrize("mode", ["contrib", "native"])
def test_fifty_concurrent_requests_add_up_to_what_was_measured(
    mode: str, tmp_path: Path
) -> None:
    spans_path, state_path = tmp_path / "spans.jsonl", tmp_path / "state.json"
    env = {"E2E_MODE": mode, "E2E_SPANS": str(spans_path), "E2E_STATE": str(state_path)}
    with Server(uvicorn(), env) as server:
        assert len(MIX) == 50
        statuses = asyncio.run(send_all(server.url, MIX))
    assert statuses.count(200) == 47 and sorted(statuses)[-3:] == [404, 418, 500]
    spans = server_spans_in(spans_path)
    assert len(spans) == 51  # the load and the readiness probe
    state = json.loads(state_path.read_text())
    assert state["in_flight"] == 0
    for component in ("cpu", "ram"):
        on_spans = sum(s["attributes"][a.ENERGY[component]] for s in spans)
        # The spans, plus what requests drew after their responses had gone.
        after = state["after_response"][component]
        assert on_spans + after == pytest.approx(
            state["attributed"][component], rel=1e-9
        )
        total = on_spans + after + state["unattributed"][component]
        assert total == pytest.approx(state["measured"][component], rel=0.01)
        # Without sharing, the spans would claim many times what was drawn.
        assert on_spans < state["measured"][component]
    for span in spans:
        attrs = span["attributes"]
        total = attrs[a.ENERGY["cpu"]] + attrs[a.ENERGY["ram"]]
        assert attrs[a.ENERGY_TOTAL] == pytest.approx(total)
        assert attrs[a.EMISSIONS] == pytest.approx(
            attrs[a.ENERGY_TOTAL] / 3.6e6 * attrs[a.CARBON_INTENSITY]
        )
        assert attrs[a.COUNTRY] == "FRA"
    scopes = {s["attributes"].get("http.route") for s in spans}
    assert "/sleep" in scopes


def test_client_disconnect_mid_stream_closes_the_window(tmp_path: Path) -> None:
    spans_path, state_path = tmp_path / "spans.jsonl", tmp_path / "state.json"
    env = {"E2E_SPANS": str(spans_path), "E2E_STATE": str(state_path)}
    with Server(uvicorn(), env) as server:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(
                b"GET /stream?chunks=100&pause=0.02 HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            assert b"chunk 0" in sock.recv(4096) + sock.recv(4096)

        # The server notices on its next write: the stream's span ends.
        def stream_ended() -> bool:
            return any(s["name"] == "GET /stream" for s in server_spans_in(spans_path))

        wait_for(stream_ended, interval=0.02)
        assert asyncio.run(send_all(server.url, ["/fast"])) == [200]
    state = json.loads(state_path.read_text())
    assert state["in_flight"] == 0
    (stream,) = [s for s in server_spans_in(spans_path) if s["name"] == "GET /stream"]
    assert stream["attributes"][a.ENERGY_TOTAL] > 0


def test_uvicorn_shutdown_with_requests_in_flight(tmp_path: Path) -> None:
    from websockets.sync.client import connect

    state_path = tmp_path / "state.json"
    command = [sys.executable, "-m", "uvicorn", "support.lifecycle:serve",
               "--factory", "--host", "127.0.0.1", "--port", "{port}",
               "--log-level", "warning",
               "--timeout-graceful-shutdown", "1"]  # fmt: skip
    with Server(command, {"REL_STATE": str(state_path)}) as server:
        with httpx.Client(base_url=server.url, timeout=30) as c:

            def in_flight() -> int:
                return int(c.get("/in-flight").json()["in_flight"])

            # A WebSocket conversation: served, never counted.
            ws_url = server.url.replace("http", "ws") + "/ws"
            with connect(ws_url) as ws:
                ws.send("ping")
                assert ws.recv(timeout=10) == "PING"
                assert in_flight() == 0
            # HEAD, served by uvicorn without a body.
            head = c.head("/page")
            assert (head.status_code, head.content) == (200, b"")
            # A client that goes away mid-stream.
            with socket.create_connection(("127.0.0.1", server.port)) as sock:
                sock.sendall(
                    b"GET /stream?chunks=1000&pause=0.01 HTTP/1.1\r\nHost: x\r\n\r\n"
                )
                assert b"chunk" in sock.recv(4096) + sock.recv(4096)
            wait_for(lambda: in_flight() == 0, interval=0.02)

        # Shutdown with requests in flight: short ones finish within the
        # grace period, long ones are cancelled when it runs out.
        results: dict[str, Any] = {}

        def hit(name: str, path: str) -> None:
            try:
                results[name] = httpx.get(server.url + path, timeout=30).status_code
            except httpx.HTTPError as exc:
                results[name] = type(exc).__name__

        paths = {f"short{i}": "/sleep?seconds=0.4" for i in range(4)}
        paths |= {f"long{i}": "/sleep?seconds=30" for i in range(3)}
        paths["sync"] = "/sync-sleep?seconds=0.4"
        paths["stream"] = "/stream?chunks=3000&pause=0.01"
        threads = [threading.Thread(target=hit, args=item) for item in paths.items()]
        for t in threads:
            t.start()
        with httpx.Client(base_url=server.url, timeout=30) as c:
            # Every request has arrived and is in flight.
            wait_for(
                lambda: c.get("/in-flight").json()["in_flight"] == len(paths),
                interval=0.01,
            )
        output = server.stop()
        for t in threads:
            t.join(30)
    assert all(results[f"short{i}"] == 200 for i in range(4)), results
    assert results["sync"] == 200, results
    assert all(results[f"long{i}"] != 200 for i in range(3)), results
    state = json.loads(state_path.read_text())
    print(state)
    assert state["in_flight"] == 0 and state["errors"] == 0, output
    assert "carbonspan: " not in output, output  # nothing of ours failed
