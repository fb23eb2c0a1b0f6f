"""The tenant named by baggage, through a real uvicorn and a client whose
OpenTelemetry instrumentation propagates it; `set_tenant` wins over it."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from opentelemetry import baggage, context
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.trace import TracerProvider

from support.checks import wait_for
from support.server import Server, server_spans_in, uvicorn

pytestmark = pytest.mark.e2e


def test_baggage_names_the_tenant_and_set_tenant_wins(tmp_path: Path) -> None:
    spans_path = tmp_path / "spans.jsonl"
    env = {
        "E2E_SPANS": str(spans_path),
        "E2E_STATE": str(tmp_path / "state.json"),
        "CARBONSPAN_TENANT_BAGGAGE": "tenant.id",
    }
    client = httpx.Client(timeout=30)
    HTTPXClientInstrumentor.instrument_client(client, tracer_provider=TracerProvider())
    with Server(uvicorn(), env, ready_path="/health") as server:
        token = context.attach(baggage.set_baggage("tenant.id", "acme"))
        try:
            assert client.get(server.url + "/fast").status_code == 200
            # Both: the app names another tenant; it wins.
            assert client.get(server.url + "/tenant?name=globex").status_code == 200
        finally:
            context.detach(token)
        # No baggage: no tenant, unless the app names one.
        assert client.get(server.url + "/fast").status_code == 200
        assert client.get(server.url + "/tenant?name=initech").status_code == 200

        def spans() -> list[dict[str, object]]:
            served = server_spans_in(spans_path)
            return [s for s in served if s["name"] != "GET /health"]

        wait_for(lambda: len(spans()) == 4, timeout=30)
        got = spans()
    tenants = [s["attributes"].get("codecarbon.tenant") for s in got]  # type: ignore[attr-defined]
    assert tenants == ["acme", "globex", None, "initech"], got
    assert all(s["attributes"]["codecarbon.energy.total"] > 0 for s in got)  # type: ignore[index]
