"""Spans exported with the standard OTLP exporter to a real trace store (Phoenix)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from carbonspan.otel import attributes as a
from support.backends import Phoenix
from support.checks import wait_for
from support.server import Server, uvicorn

pytestmark = pytest.mark.backends
ROUTES = ("/sleep", "/cpu", "/items/{item_id}")


def test_attributes_arrive_in_phoenix_with_their_values_and_types(
    tmp_path: Path,
) -> None:
    with Phoenix(tmp_path) as phoenix:
        env = {
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": phoenix.otlp,
            "PHOENIX_PROJECT": "carbonspan-e2e",
        }
        with Server(uvicorn("support.phoenix_app:app"), env) as app:
            with httpx.Client(base_url=app.url, timeout=30) as c:
                # The sampler's first readings: a response says its energy.
                wait_for(
                    lambda: "x-codecarbon-energy" in c.get("/fast").headers,
                    timeout=30,
                    interval=0.1,
                )
                for path in ("/sleep?seconds=0.2", "/cpu?seconds=0.05", "/items/7"):
                    assert c.get(path).status_code == 200
            app.stop()  # SIGTERM: the spans still queued are flushed at shutdown

        def routed() -> list[dict[str, Any]]:
            return [
                s
                for s in phoenix.spans("carbonspan-e2e")
                if s["attributes"].get("http.route") in ROUTES
            ]

        wait_for(lambda: len(routed()) >= 3, timeout=30, interval=0.5)
        spans = routed()
    assert len(spans) == 3
    for span in spans:
        attrs = span["attributes"]
        for name in (a.ENERGY_TOTAL, a.EMISSIONS, a.CARBON_INTENSITY, a.CONCURRENCY):
            assert isinstance(attrs[name], float), name
        assert attrs[a.ENERGY_TOTAL] > 0
        parts = [
            attrs[a.ENERGY[c]] for c in ("cpu", "gpu", "ram") if a.ENERGY[c] in attrs
        ]
        assert attrs[a.ENERGY_TOTAL] == pytest.approx(sum(parts))
        assert attrs[a.EMISSIONS] == pytest.approx(
            attrs[a.ENERGY_TOTAL] / 3.6e6 * attrs[a.CARBON_INTENSITY]
        )
        assert attrs[a.COUNTRY] == "FRA" and attrs[a.LOCATION_SOURCE] == "country"
        assert attrs[a.SCOPE] == "process" and attrs[a.ATTRIBUTION] == "time_share"
        assert attrs[a.MEASUREMENT["cpu"]] in ("rapl", "cpu_load", "tdp")
        assert isinstance(attrs[a.CPU_MODEL], str)
    by_route = {s["attributes"]["http.route"]: s["attributes"] for s in spans}
    assert (
        by_route["/sleep"][a.ENERGY_TOTAL]
        > by_route["/items/{item_id}"][a.ENERGY_TOTAL]
    )
