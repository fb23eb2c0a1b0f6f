"""Downstream energy in process: an instrumented app calls a real callee
(uvicorn, carbonspan with response headers) with httpx. What the callee
reported is on the spans, in its own histogram and in the app's inclusive
header, and nowhere in the app's own books."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from carbonspan import CodeCarbonInstrumentor
from carbonspan.otel import attributes as a
from carbonspan.otel import clients
from carbonspan.otel.downstream import figures
from carbonspan.testing import ConstantPowerSource
from support.checks import wait_for
from support.otel import Instrumented, Otel, wait_ready
from support.server import Server, uvicorn


@pytest.fixture(scope="module")
def callee(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    spans = tmp_path_factory.mktemp("callee") / "spans.jsonl"
    env = {"CHAIN_SPANS": str(spans), "CARBONSPAN_RESPONSE_HEADERS": "energy"}
    with Server(uvicorn("support.chain_app:app"), env, ready_path="/health") as s:
        # Until the callee's sampler has readings: its responses carry figures.
        wait_for(lambda: "x-codecarbon-energy" in httpx.get(s.url + "/health").headers)
        yield s


def calling_app(callee: Server) -> FastAPI:
    app = FastAPI()

    @app.get("/twice")
    async def twice() -> dict[str, float]:
        reported = 0.0
        async with httpx.AsyncClient() as client:
            for _ in range(2):
                r = await client.get(callee.url + "/work", params={"ms": 20})
                reported += float(r.headers["x-codecarbon-energy"])
        return {"reported": reported}

    @app.get("/alone")
    async def alone() -> dict[str, float]:
        await asyncio.sleep(0.02)
        return {"reported": 0.0}

    return app


def get(app: FastAPI, path: str) -> httpx.Response:
    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await c.get(path)

    return asyncio.run(main())


def test_downstream_figures_stay_out_of_the_callers_books(
    otel: Otel, instrument: Instrumented, callee: Server
) -> None:
    app = calling_app(callee)
    inst = instrument(
        app, otel, power_source=ConstantPowerSource(cpu=10.0, ram=2.0),
        sample_interval=0.02, downstream_energy=True, response_headers=("energy",),
        carbon_intensity=100.0,
    )  # fmt: skip
    wait_ready(inst)
    twice, alone = get(app, "/twice"), get(app, "/alone")
    reported = twice.json()["reported"]
    inst.sampler.stop()
    inst.sampler.sample()
    spans = {s.name: dict(s.attributes or {}) for s in otel.server_spans()}
    span = spans["GET /twice"]
    assert span[a.ENERGY_DOWNSTREAM] == pytest.approx(reported, rel=1e-5)
    assert span[a.ENERGY_INCLUSIVE] == span[a.ENERGY_TOTAL] + span[a.ENERGY_DOWNSTREAM]
    # The callee sent no emissions: its energy valued at this app's factor.
    assert span[a.EMISSIONS_DOWNSTREAM] == pytest.approx(reported / 3.6e6 * 100.0)
    # This app's own header is inclusive of what its calls reported: its own
    # energy at the response's start (the body's send comes after, on the
    # span) plus theirs, to the header's six digits.
    inclusive = float(twice.headers["x-codecarbon-energy"])
    assert reported < inclusive <= span[a.ENERGY_INCLUSIVE] * (1 + 1e-5)
    # No call, no downstream figure (not a 0), and a header of its own only.
    assert a.ENERGY_DOWNSTREAM not in spans["GET /alone"]
    own_alone = float(alone.headers["x-codecarbon-energy"])
    assert 0 < own_alone <= spans["GET /alone"][a.ENERGY_TOTAL] * (1 + 1e-5)
    # Its own histogram, one point for the one request that has a figure.
    (point,) = otel.points("codecarbon.request.energy.downstream")
    assert point.count == 1 and point.sum == span[a.ENERGY_DOWNSTREAM]
    # The books: what this process measured, attributed or not, and nothing
    # of the callee's.
    totals = inst.ledger.totals()
    measured = sum(totals.measured)
    assert sum(totals.attributed) + sum(totals.unattributed) == pytest.approx(
        measured, rel=1e-9
    )
    own = sum(p.sum for p in otel.points("codecarbon.request.energy"))
    both = span[a.ENERGY_TOTAL] + spans["GET /alone"][a.ENERGY_TOTAL]
    assert own == pytest.approx(both)
    assert own <= sum(totals.attributed) + 1e-9


def test_without_the_setting_nothing_is_read_and_hooks_come_and_go(
    otel: Otel, instrument: Instrumented, callee: Server
) -> None:
    app = calling_app(callee)
    inst = instrument(
        app, otel, power_source=ConstantPowerSource(cpu=10.0), sample_interval=0.02
    )
    wait_ready(inst)
    assert clients.hooked() == []
    assert get(app, "/twice").status_code == 200
    (span,) = otel.server_spans()
    assert a.ENERGY_DOWNSTREAM not in (span.attributes or {})
    # With the setting, the hooks are in place until the last user goes.
    other = calling_app(callee)
    CodeCarbonInstrumentor().instrument_app(
        other, power_source=ConstantPowerSource(cpu=1.0), downstream_energy=True
    )
    hooked = clients.hooked()
    assert "httpcore.AsyncConnectionPool.handle_async_request" in hooked
    assert "requests.adapters.HTTPAdapter.send" in hooked
    assert "aiohttp.client_reqrep.ClientResponse.start" in hooked
    CodeCarbonInstrumentor.uninstrument_app(other)
    assert clients.hooked() == []


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"x-codecarbon-energy": "1.5"}, (1.5, None)),
        ({"x-codecarbon-energy": "1.5", "x-codecarbon-emissions": "2e-05"},
         (1.5, 2e-05)),
        ({"server-timing": 'codecarbon-energy;dur=1524.28;desc="mJ", '
          'codecarbon-emissions;dur=0.023711;desc="mg CO2eq"'}, (1.52428, 2.3711e-05)),
        ({"server-timing": "db;dur=53"}, (None, None)),
        ({"x-codecarbon-energy": "nan"}, (None, None)),
        ({"x-codecarbon-energy": "1_0"}, (None, None)),
        ({"x-codecarbon-energy": "4e6"}, (None, None)),
        ({"x-codecarbon-energy": "1", "x-codecarbon-emissions": "-1"}, (1.0, None)),
        ({}, (None, None)),
    ],
)  # fmt: skip
def test_a_response_reports_what_it_says_and_nothing_malformed(
    headers: dict[str, str], expected: tuple[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="carbonspan"):
        joules, grams = figures(headers.get)
    assert joules == pytest.approx(expected[0]) if expected[0] else joules is None
    assert grams == pytest.approx(expected[1]) if expected[1] else grams is None
