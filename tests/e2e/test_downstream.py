"""Energy per distributed trace, in band: real uvicorn services calling each
other with httpx, each instrumented with carbonspan; the caller's server span
carries what its calls reported, and a chain adds up."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.checks import wait_for
from support.server import Server, free_port, spans_in, uvicorn

pytestmark = pytest.mark.e2e

CALLER = {"CARBONSPAN_DOWNSTREAM_ENERGY": "true"}
CALLEE = {"CARBONSPAN_RESPONSE_HEADERS": "energy,emissions"}
ENERGY = "codecarbon.energy"
#: Each service's own work per request (ms): a callee's figure is written at
#: its response's head, so the work of sending the body is on its span but
#: not in the figure (0.45 ms in process; up to 2 ms over uvicorn on a busy
#: 2-core machine); 2% of 300 ms is room for it.
WORK = {"ms": 300}


def service_spans(path: Path) -> list[dict[str, Any]]:
    """The spans a service wrote, its readiness checks left out."""
    return [s for s in spans_in(path) if "/health" not in s["name"]]


@contextmanager
def chain(
    tmp_path: Path, services: list[dict[str, str]], calls: int
) -> Iterator[tuple[list[Server], list[Path]]]:
    """Services 0 -> 1 -> ... each calling the next `calls` times per /work,
    started last to first."""
    paths = [tmp_path / f"spans{i}.jsonl" for i in range(len(services))]
    servers: list[Server] = []
    with ExitStack() as stack:
        next_url = ""
        for i in reversed(range(len(services))):
            env = {**services[i], "CHAIN_SPANS": str(paths[i])}
            env |= {"CHAIN_NEXT": next_url, "CHAIN_CALLS": str(calls)}
            server = Server(uvicorn("support.chain_app:app"), env, ready_path="/health")
            stack.enter_context(server)
            servers.insert(0, server)
            next_url = server.url + "/work"
        yield servers, paths


def server_spans(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for s in spans if s["kind"] == "SpanKind.SERVER"]


def by_trace(spans: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in spans:
        out[s["context"]["trace_id"]].append(s)
    return out


def test_a_caller_learns_what_its_two_calls_cost(tmp_path: Path) -> None:
    with chain(tmp_path, [CALLER, CALLEE], calls=2) as (servers, paths):
        work = servers[0].url + "/work"
        responses = [httpx.get(work, params=WORK, timeout=30) for _ in range(3)]
        assert [r.status_code for r in responses] == [200] * 3
        # A caller without response_headers sends no figure of its own.
        assert all("x-codecarbon-energy" not in r.headers for r in responses)
        wait_for(lambda: len(server_spans(service_spans(paths[1]))) == 6, timeout=30)
        wait_for(lambda: len(server_spans(service_spans(paths[0]))) == 3, timeout=30)
    a_spans = service_spans(paths[0])
    b_by_trace = by_trace(server_spans(service_spans(paths[1])))
    for a in server_spans(a_spans):
        attrs = a["attributes"]
        bs = b_by_trace[a["context"]["trace_id"]]
        assert len(bs) == 2
        b_total = sum(b["attributes"][f"{ENERGY}.total"] for b in bs)
        assert attrs[f"{ENERGY}.downstream"] == pytest.approx(b_total, rel=0.02)
        assert attrs[f"{ENERGY}.inclusive"] == pytest.approx(
            attrs[f"{ENERGY}.total"] + attrs[f"{ENERGY}.downstream"], rel=1e-12
        )
        # B's grams (France's grid in both) reported with its energy.
        b_grams = sum(b["attributes"]["codecarbon.emissions"] for b in bs)
        assert attrs["codecarbon.emissions.downstream"] == pytest.approx(
            b_grams, rel=0.02
        )
    # Each client span carries what its own call reported.
    clients = [s for s in a_spans if s["kind"] == "SpanKind.CLIENT"]
    assert len(clients) == 6
    b_spans = {b["parent_id"]: b for bs in b_by_trace.values() for b in bs}
    for c in clients:
        b = b_spans[c["context"]["span_id"]]
        assert c["attributes"][f"{ENERGY}.downstream"] == pytest.approx(
            b["attributes"][f"{ENERGY}.total"], rel=0.02
        )


def test_a_three_service_chain_adds_up(tmp_path: Path) -> None:
    services = [CALLER, {**CALLER, **CALLEE}, CALLEE]
    with chain(tmp_path, services, calls=1) as (servers, paths):
        for _ in range(3):
            r = httpx.get(servers[0].url + "/work", params=WORK, timeout=30)
            assert r.status_code == 200
        wait_for(
            lambda: all(len(server_spans(service_spans(p))) == 3 for p in paths),
            timeout=30,
        )
    a, b, c = (by_trace(server_spans(service_spans(p))) for p in paths)
    assert set(a) == set(b) == set(c)
    for trace_id, (a_span,) in a.items():
        (b_span,), (c_span,) = b[trace_id], c[trace_id]
        own = {
            name: s["attributes"][f"{ENERGY}.total"]
            for name, s in (("a", a_span), ("b", b_span), ("c", c_span))
        }
        assert b_span["attributes"][f"{ENERGY}.downstream"] == pytest.approx(
            own["c"], rel=0.02
        )
        # B's header was inclusive: A learns of B's and C's energy.
        assert a_span["attributes"][f"{ENERGY}.downstream"] == pytest.approx(
            own["b"] + own["c"], rel=0.02
        )
        assert a_span["attributes"][f"{ENERGY}.inclusive"] == pytest.approx(
            sum(own.values()), rel=0.02
        )
        assert "codecarbon.energy.downstream" not in c_span["attributes"]


@pytest.mark.parametrize("client", ["requests", "aiohttp"])
def test_requests_and_aiohttp_calls_are_read_too(tmp_path: Path, client: str) -> None:
    with chain(tmp_path, [CALLER, CALLEE], calls=0) as (servers, paths):
        to = servers[1].url + "/work?ms=300"
        r = httpx.get(servers[0].url + f"/call-{client}", params={"to": to})
        assert r.status_code == 200 and r.json() == {"status": 200}
        wait_for(lambda: len(server_spans(service_spans(paths[0]))) == 1, timeout=30)
        wait_for(lambda: len(server_spans(service_spans(paths[1]))) == 1, timeout=30)
    (a,) = server_spans(service_spans(paths[0]))
    (b,) = server_spans(service_spans(paths[1]))
    b_total = b["attributes"][f"{ENERGY}.total"]
    assert a["attributes"][f"{ENERGY}.downstream"] == pytest.approx(b_total, rel=0.02)
    calls = [s for s in service_spans(paths[0]) if s["kind"] == "SpanKind.CLIENT"]
    if client == "requests":  # aiohttp's calls have no client span here
        assert a["context"]["trace_id"] == b["context"]["trace_id"]
        (call,) = calls
        assert call["attributes"][f"{ENERGY}.downstream"] == pytest.approx(
            b_total, rel=0.02
        )


def test_only_figures_the_caller_asked_for_and_well_formed_count(
    tmp_path: Path,
) -> None:
    spans = tmp_path / "spans.jsonl"
    env = {**CALLER, "CHAIN_SPANS": str(spans)}
    refused = f"http://127.0.0.1:{free_port()}/nothing"
    with (
        Server(uvicorn("support.fake_callee:app"), {}, ready_path="/health") as fake,
        Server(uvicorn("support.chain_app:app"), env, ready_path="/health") as caller,
    ):
        cases = {
            "/plain": fake.url + "/plain",
            "/malformed": fake.url + "/malformed",
            "/absurd": fake.url + "/absurd",
            "/negative": fake.url + "/negative",
            "/refused": refused,
            "/failing": fake.url + "/failing",
        }
        for to in cases.values():
            r = httpx.get(caller.url + "/call", params={"to": to}, timeout=30)
            assert r.status_code == 200  # a bad callee never fails the caller
        r = httpx.get(caller.url + "/unasked", params={"to": fake.url + "/forged"})
        assert r.status_code == 200 and r.json() == {"status": 200}
        # A plain client reading the forged figure itself changes nothing.
        assert httpx.get(fake.url + "/forged").headers["x-codecarbon-energy"] == "7.5"
        wait_for(lambda: len(server_spans(service_spans(spans))) == 7, timeout=30)
    got = [s["attributes"] for s in server_spans(service_spans(spans))]
    assert all(g[f"{ENERGY}.total"] > 0 for g in got)  # measured all the same
    downstream = [g.get(f"{ENERGY}.downstream") for g in got]
    # Only the failing callee's figure (a 503 that reported its energy)
    # counts: none from a callee without carbonspan, a malformed, absurd or
    # negative value, a refused connection, or a call no request made.
    assert downstream == [None, None, None, None, None, 2.5, None]
