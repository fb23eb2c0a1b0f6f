"""Energy and emissions by tenant: `set_tenant` from the app, on the span
uncapped, and on the metric points with at most `max_tenants` names (the
rest `_other`), read from the exported spans and metrics."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Header

from carbonspan import set_tenant
from carbonspan.otel import attributes as a
from carbonspan.otel.tenant import MAX_LENGTH, OTHER
from carbonspan.testing import ConstantPowerSource
from support.otel import Instrumented, Otel, wait_ready

SETTINGS: dict[str, Any] = {
    "power_source": ConstantPowerSource(cpu=10.0, ram=2.0),
    "carbon_intensity": 360.0,
    "sample_interval": 0.02,
}


def tenant_app() -> FastAPI:
    app = FastAPI()

    async def by_header(x_tenant: str = Header("")) -> str:
        set_tenant(x_tenant)
        return x_tenant

    def in_threadpool(x_tenant: str = Header("")) -> str:
        set_tenant(x_tenant)  # a `def` dependency runs in the threadpool
        return x_tenant

    @app.get("/async")
    async def from_async(tenant: str = Depends(by_header)) -> dict[str, str]:
        return {"tenant": tenant}

    @app.get("/sync")
    def from_sync(tenant: str = Depends(in_threadpool)) -> dict[str, str]:
        return {"tenant": tenant}

    @app.get("/none")
    async def nobody() -> dict[str, str]:
        return {"tenant": ""}

    @app.get("/twice")
    async def twice() -> dict[str, str]:
        set_tenant("first")
        set_tenant("second")  # the last one names the request
        return {"tenant": "second"}

    @app.get("/bad/{kind}")
    async def bad(kind: str) -> dict[str, str]:
        values: dict[str, Any] = {
            "int": 42,
            "none": None,
            "bytes": b"acme",
            "empty": "   ",
            "huge": "x" * 100_000,
        }
        set_tenant(values[kind])
        return {"kind": kind}

    @app.get("/fails")
    async def fails(tenant: str = Depends(by_header)) -> None:
        raise RuntimeError("the handler fails")

    return app


def served(
    instrument: Instrumented, otel: Otel, **settings: Any
) -> tuple[FastAPI, httpx.AsyncClient]:
    app = tenant_app()
    inst = instrument(app, otel, **SETTINGS, **settings)
    wait_ready(inst)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return app, httpx.AsyncClient(transport=transport, base_url="http://t")


def get_all(client: httpx.AsyncClient, requests: list[tuple[str, str]]) -> list[int]:
    async def main() -> list[int]:
        async with client:
            out = []
            for path, tenant in requests:
                headers = {"x-tenant": tenant} if tenant else {}
                out.append((await client.get(path, headers=headers)).status_code)
            return out

    return asyncio.run(main())


def span_tenants(otel: Otel) -> list[tuple[Any, float]]:
    """Each server span's tenant (None: none) and energy, in order."""
    spans = sorted(otel.server_spans(), key=lambda s: s.start_time or 0)
    return [
        ((s.attributes or {}).get(a.TENANT), (s.attributes or {})[a.ENERGY_TOTAL])
        for s in spans
    ]


def metric_by_tenant(otel: Otel, name: str, field: str) -> dict[Any, float]:
    sums: dict[Any, float] = defaultdict(float)
    for point in otel.points(name):
        sums[point.attributes.get(a.TENANT)] += getattr(point, field)
    return dict(sums)


def test_the_tenant_a_dependency_names_is_on_the_span_and_the_metrics(
    otel: Otel, instrument: Instrumented
) -> None:
    _, client = served(instrument, otel)
    codes = get_all(
        client,
        [("/async", "acme"), ("/sync", "globex"), ("/none", ""), ("/async", "acme")],
    )
    assert codes == [200] * 4
    seen = span_tenants(otel)
    assert [t for t, _ in seen] == ["acme", "globex", None, "acme"]
    assert all(j > 0 for _, j in seen)
    energy = metric_by_tenant(otel, "codecarbon.request.energy", "sum")
    # Requests with no tenant carry no label; the others their tenant's.
    assert set(energy) == {"acme", "globex", None}
    assert energy["acme"] == pytest.approx(seen[0][1] + seen[3][1], rel=1e-12)
    assert energy["globex"] == seen[1][1]
    assert energy[None] == seen[2][1]
    # The counter's grams value the request's energy and what it drew after
    # its response (a loaded machine can have some) at the same intensity.
    after = metric_by_tenant(otel, "codecarbon.request.background.energy", "value")
    grams = metric_by_tenant(otel, "codecarbon.request.emissions", "value")
    acme = energy["acme"] + after.get("acme", 0.0)
    assert grams["acme"] == pytest.approx(acme / 3.6e6 * 360.0, rel=1e-9)


def test_500_tenants_are_capped_at_max_tenants_and_sum_to_their_spans(
    otel: Otel, instrument: Instrumented
) -> None:
    _, client = served(instrument, otel, max_tenants=20)
    names = [f"tenant-{i:03d}" for i in range(500)]
    requests = [("/async", n) for n in names] + [("/sync", n) for n in names[:40]]
    assert set(get_all(client, requests)) == {200}
    seen = span_tenants(otel)
    # Spans are uncapped: each carries its own tenant.
    assert [t for t, _ in seen] == [n for _, n in requests]
    energy = metric_by_tenant(otel, "codecarbon.request.energy", "sum")
    kept = set(names[:20])  # the first 20 seen keep their name
    assert set(energy) == kept | {OTHER}
    expected: dict[str, float] = defaultdict(float)
    for tenant, joules in seen:
        expected[tenant if tenant in kept else OTHER] += joules
    for label, joules in expected.items():
        assert energy[label] == pytest.approx(joules, rel=1e-6, abs=0), label
    # Nothing lost: the sum over tenants is the sum over requests.
    assert sum(energy.values()) == pytest.approx(sum(j for _, j in seen), rel=1e-9)
    grams = metric_by_tenant(otel, "codecarbon.request.emissions", "value")
    assert set(grams) == kept | {OTHER}


def test_bad_names_never_fail_the_request_and_it_is_still_measured(
    otel: Otel, instrument: Instrumented, caplog: pytest.LogCaptureFixture
) -> None:
    _, client = served(instrument, otel)
    kinds = ["int", "none", "bytes", "empty", "huge"]
    with caplog.at_level(logging.WARNING, logger="carbonspan"):
        codes = get_all(client, [(f"/bad/{k}", "") for k in kinds] + [("/twice", "")])
    assert codes == [200] * 6
    seen = span_tenants(otel)
    assert [t for t, _ in seen] == [None, None, None, None, "x" * MAX_LENGTH, "second"]
    assert all(j > 0 for _, j in seen)  # measured all the same
    assert sum(p.count for p in otel.points("codecarbon.request.energy")) == 6
    messages = [r.getMessage() for r in caplog.records]
    # Each kind of problem logged once (then at most once a minute).
    for problem in ("type int,", "type NoneType,", "type bytes,", "is empty"):
        said = [m for m in messages if problem in m]
        assert len(said) == 1 and "carbonspan.set_tenant()" in said[0], problem


def test_a_failing_handler_keeps_its_tenant_and_its_figures(
    otel: Otel, instrument: Instrumented
) -> None:
    _, client = served(instrument, otel)
    assert get_all(client, [("/fails", "initech")]) == [500]
    ((tenant, joules),) = span_tenants(otel)
    assert tenant == "initech" and joules > 0
    (point,) = otel.points("codecarbon.request.energy")
    assert point.attributes[a.TENANT] == "initech"
    assert point.attributes[a.HTTP_STATUS] == 500
    assert point.sum == joules


def test_outside_a_request_set_tenant_does_nothing_and_says_so_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG, logger="carbonspan"):
        set_tenant("nobody")
    assert any("no request in flight" in r.getMessage() for r in caplog.records)
