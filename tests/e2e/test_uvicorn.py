"""End to end: a real uvicorn server in a subprocess, spans read from its exporter."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest

from carbonspan import attributes as a
from server import Server, uvicorn

pytestmark = pytest.mark.e2e

MIX = (
    ["/sleep?seconds=0.2"] * 20
    + ["/sync-sleep?seconds=0.1"] * 10
    + ["/cpu?seconds=0.01"] * 5
    + ["/fast"] * 8
    + ["/stream?chunks=3&pause=0.05"] * 4
    + ["/boom", "/teapot", "/nope"]
)


def read_spans(path: Path) -> list[dict[str, Any]]:
    spans = [json.loads(line) for line in path.read_text().splitlines() if line]
    return [s for s in spans if s["kind"] == "SpanKind.SERVER"]


async def send_all(url: str, paths: list[str]) -> list[int]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        responses = await asyncio.gather(*(c.get(p) for p in paths))
    return [r.status_code for r in responses]


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
    spans = read_spans(spans_path)
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
        # The server notices on its next write; give it a few chunks' time.
        asyncio.run(asyncio.sleep(0.5))
        assert asyncio.run(send_all(server.url, ["/fast"])) == [200]
    state = json.loads(state_path.read_text())
    assert state["in_flight"] == 0
    (stream,) = [s for s in read_spans(spans_path) if s["name"] == "GET /stream"]
    assert stream["attributes"][a.ENERGY_TOTAL] > 0
