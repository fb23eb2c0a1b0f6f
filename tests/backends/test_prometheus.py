"""A real Prometheus scrapes an instrumented uvicorn app; the figures add up there."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from support.backends import Prometheus
from support.checks import wait_for
from support.server import Server, free_port, send_all, uvicorn

pytestmark = pytest.mark.backends

LOAD = ["/sleep?seconds=0.2"] * 8 + ["/fast"] * 12 + ["/cpu?seconds=0.02"] * 4


def by(result: list[dict[str, object]], label: str) -> dict[str, float]:
    return {r["metric"].get(label, ""): float(r["value"][1]) for r in result}  # type: ignore[attr-defined,index]


def test_prometheus_sees_routes_components_and_the_balance(tmp_path: Path) -> None:
    metrics_port = free_port()
    drawn = tmp_path / "drawn.json"
    env = {"PROM_APP_METRICS_PORT": str(metrics_port), "PROM_APP_DRAWN": str(drawn)}
    with (
        Server(uvicorn("support.prom_app:app"), env) as app,
        Prometheus(tmp_path, [f"127.0.0.1:{metrics_port}"]) as prom,
    ):
        assert set(asyncio.run(send_all(app.url, LOAD))) == {200}
        assert httpx.post(app.url + "/_freeze").status_code == 200
        wait_for(drawn.exists, timeout=30)
        measured = json.loads(drawn.read_text())
        assert measured.pop("in_flight") == 0
        # Counters hold still now: wait until two scrapes in a row (a second
        # apart) have the same, final values.
        energy = "sum by (hw_type) (codecarbon_energy_joules_total)"
        seen = [by(prom.wait_for(energy), "hw_type").get("cpu", 0.0)]

        def settled() -> bool:
            seen.append(by(prom.query(energy), "hw_type").get("cpu", 0.0))
            return seen[-1] == seen[-2] > 0

        wait_for(settled, timeout=66, interval=1.1)
        per_route = by(
            prom.query(
                "sum by (http_route) (codecarbon_request_energy_joules_sum)"
                " / sum by (http_route) (codecarbon_request_energy_joules_count)"
            ),
            "http_route",
        )
        per_component = by(prom.query(energy), "hw_type")
        attributed = by(
            prom.query(
                "sum by (codecarbon_attributed) (codecarbon_energy_joules_total)"
            ),
            "codecarbon_attributed",
        )
        counts = by(
            prom.query("sum by (http_route) (codecarbon_request_energy_joules_count)"),
            "http_route",
        )
    print(per_route, per_component, attributed, measured)
    # Per-route energy, by route template.
    assert set(per_route) >= {"/sleep", "/fast", "/cpu"}
    assert counts["/sleep"] == 8 and counts["/fast"] >= 12 and counts["/cpu"] == 4
    assert per_route["/sleep"] > 10 * per_route["/fast"] > 0
    # Per component, with OTel's hw.type values.
    assert set(per_component) == {"cpu", "memory"}
    # Attributed plus unattributed is what the source measured: the last
    # reading came after every request had closed, so no tail is left unsettled.
    assert set(attributed) == {"true", "false"}
    total_measured = measured["cpu"] + measured["ram"]
    assert sum(attributed.values()) == pytest.approx(total_measured, rel=1e-6)
    assert per_component["cpu"] == pytest.approx(measured["cpu"], rel=1e-6)
    assert per_component["memory"] == pytest.approx(measured["ram"], rel=1e-6)
