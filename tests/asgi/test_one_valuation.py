"""A request is valued once: the ledger's charges are read once, turned into
joules and grams once, and its span, its metric point and its hook all carry
those same figures."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from opentelemetry.trace import Span

from carbonspan.attribution.ledger import Ledger
from carbonspan.attribution.measurement import Measurement
from carbonspan.otel import attributes as a
from carbonspan.otel import reporter
from carbonspan.testing import ConstantPowerSource
from carbonspan.types import Scope
from support.otel import Instrumented, Otel, ready_app

ROUTES = ["/fast", "/items/7", "/cpu", "/stream", "/teapot"]


class Counted(reporter.Valuation):
    made: list[reporter.Valuation] = []  # noqa: RUF012

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        Counted.made.append(self)


@pytest.mark.parametrize("headers", [False, True], ids=["no-headers", "headers"])
def test_each_request_is_valued_once(
    otel: Otel,
    instrument: Instrumented,
    monkeypatch: pytest.MonkeyPatch,
    headers: bool,
) -> None:
    hooked: list[Measurement] = []

    def hook(span: Span, scope: Scope, measurement: Measurement) -> None:
        hooked.append(measurement)

    app, _ = ready_app(
        instrument,
        otel,
        power_source=ConstantPowerSource(cpu=10.0, ram=2.0),
        carbon_intensity=360.0,
        measurement_hook=hook,
        response_headers=headers,
    )
    Counted.made = []
    monkeypatch.setattr(reporter, "Valuation", Counted)
    peeks: list[float] = []
    original = Ledger.peek

    def counting_peek(ledger: Ledger, window: Any, now: float) -> Measurement:
        peeks.append(now)
        return original(ledger, window, now)

    monkeypatch.setattr(Ledger, "peek", counting_peek)

    async def send() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            for route in ROUTES:
                assert (await c.get(route)).status_code in (200, 418)

    asyncio.run(send())
    n = len(ROUTES)
    # One valuation per request; the charges read once for it (and once more
    # for the headers, the figures at the response's start).
    assert len(Counted.made) == n
    assert len(peeks) == (2 * n if headers else n)
    assert [v.measurement for v in Counted.made] == hooked
    spans = sorted(otel.server_spans(), key=lambda s: s.start_time or 0)
    assert len(spans) == n
    for span, valuation in zip(spans, Counted.made, strict=True):
        assert span.attributes is not None
        assert span.attributes[a.ENERGY_TOTAL] == valuation.joules
        assert span.attributes[a.EMISSIONS] == valuation.grams
        assert valuation.grams == pytest.approx(valuation.joules / 3.6e6 * 360.0)
    # The metric points are the same figures, and the route sums their grams
    # (with what ran after a response, on a loaded machine, at the same
    # intensity).
    points = otel.points("codecarbon.request.energy")
    assert sorted(p.sum for p in points) == sorted(v.joules for v in Counted.made)
    after = sum(p.value for p in otel.points("codecarbon.request.background.energy"))
    grams = sum(p.value for p in otel.points("codecarbon.request.emissions"))
    expected = sum(v.grams for v in Counted.made) + after / 3.6e6 * 360.0
    assert grams == pytest.approx(expected, rel=1e-9)
