"""Zero-code: the real `opentelemetry-instrument` command, spans read over OTLP."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import httpx
import pytest

from carbonspan.otel import attributes as a
from support import TESTS
from support.checks import wait_for
from support.otlp import Receiver
from support.server import Server

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent


def command() -> list[str]:
    return [
        str(BIN / "opentelemetry-instrument"), str(BIN / "uvicorn"),
        "support.auto_app:app", "--host", "127.0.0.1", "--port", "{port}",
        "--log-level", "warning",
    ]  # fmt: skip


def environment(receiver: Receiver, **extra: str) -> dict[str, str]:
    return {
        "OTEL_SERVICE_NAME": "auto-test",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        # Long enough that nothing is exported before shutdown: what arrives
        # was flushed at shutdown.
        "OTEL_BSP_SCHEDULE_DELAY": "600000",
        "OTEL_METRIC_EXPORT_INTERVAL": "600000",
        "CARBONSPAN_COUNTRY_ISO_CODE": "DEU",
        "CARBONSPAN_SAMPLE_INTERVAL": "0.05",
        # Each response says its energy so far, once there is a figure.
        "CARBONSPAN_RESPONSE_HEADERS": "energy",
        **extra,
    }


def force_first(tmp_path: Path, name: str, target: str) -> str:
    """A PYTHONPATH whose first distribution declares one instrumentor entry point.

    Entry points are found in sys.path order, so this one loads first.
    """
    dist = tmp_path / "first" / "aaa_load_first-0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: aaa-load-first\nVersion: 0\n"
    )
    (dist / "entry_points.txt").write_text(
        f"[opentelemetry_instrumentor]\n{name} = {target}\n"
    )
    return f"{tmp_path / 'first'}:{TESTS}"


def drive(server: Server) -> None:
    """Wait until the sampler has readings (about 2 s of hardware detection):
    until a response carries its energy so far, which it has once the sampler
    has measured an interval; then send the load."""
    with httpx.Client(base_url=server.url, timeout=10) as c:

        def measured() -> bool:
            response = c.get("/fast")
            assert response.status_code == 200
            return "x-codecarbon-energy" in response.headers

        wait_for(measured, timeout=30, interval=0.1)

    async def load() -> list[int]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
            paths = ["/sleep?seconds=0.1"] * 6 + ["/cpu?seconds=0.02"] * 3 + ["/boom"]
            return [
                r.status_code for r in await asyncio.gather(*(c.get(p) for p in paths))
            ]

    assert sorted(asyncio.run(load())) == [200] * 9 + [500]


ORDERS = {
    "natural": None,
    "carbonspan-first": ("codecarbon", "carbonspan:CodeCarbonInstrumentor"),
    "contrib-first": (
        "fastapi",
        "opentelemetry.instrumentation.fastapi:FastAPIInstrumentor",
    ),
}


@pytest.mark.parametrize("order", list(ORDERS))
def test_auto_instrumentation_with_the_fastapi_instrumentor(
    order: str, tmp_path: Path
) -> None:
    with Receiver() as receiver:
        extra = {}
        if ORDERS[order] is not None:
            extra["PYTHONPATH"] = force_first(tmp_path, *ORDERS[order])  # type: ignore[misc]
        with Server(command(), environment(receiver, **extra)) as server:
            drive(server)
            assert receiver.server_spans() == []  # nothing exported before shutdown
            server.stop(signal.SIGTERM)
        spans = [s for s in receiver.server_spans() if s["name"] != "GET /fast"]
        assert len(spans) == 10
        for span in spans:
            assert span["scope"] == "opentelemetry.instrumentation.fastapi"
            attrs = span["attributes"]
            assert attrs[a.ENERGY_TOTAL] > 0
            assert attrs[a.COUNTRY] == "DEU"
            assert attrs[a.MEASUREMENT["cpu"]] in ("cpu_load", "rapl", "tdp")
            assert attrs[a.ENERGY_TOTAL] == pytest.approx(
                sum(attrs.get(a.ENERGY[c], 0.0) for c in ("cpu", "gpu", "ram"))
            )
        energy = receiver.metric("codecarbon.request.energy")
        assert sum(p["value"]["count"] for p in energy) >= 10
        assert {p["unit"] for p in energy} == {"J"}
        components = {
            p["attributes"]["hw.type"] for p in receiver.metric("codecarbon.energy")
        }
        assert components >= {"cpu", "memory"}


def test_auto_instrumentation_with_fastapi_native_spans(tmp_path: Path) -> None:
    with Receiver() as receiver:
        env = environment(receiver, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="fastapi")
        with Server(command(), env) as server:
            drive(server)
            server.stop(signal.SIGINT)
        spans = [s for s in receiver.server_spans() if s["name"] != "GET /fast"]
        assert len(spans) == 10
        assert {s["scope"] for s in spans} == {"fastapi"}
        assert all(s["attributes"][a.ENERGY_TOTAL] > 0 for s in spans)
        assert receiver.metric("codecarbon.energy")


def test_disabling_codecarbon_turns_it_off(tmp_path: Path) -> None:
    with Receiver() as receiver:
        env = environment(
            receiver,
            OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="codecarbon",
            # Without carbonspan nothing flushes at shutdown: export quickly.
            OTEL_BSP_SCHEDULE_DELAY="100",
            OTEL_METRIC_EXPORT_INTERVAL="200",
        )
        with Server(command(), env) as server:
            with httpx.Client(base_url=server.url) as c:
                response = c.get("/sleep?seconds=0.05")
                assert response.status_code == 200
                assert "x-codecarbon-energy" not in response.headers
            # Exported by the SDK's own schedule: a span, and metric points.
            wait_for(lambda: bool(receiver.server_spans() and receiver.points))
            server.stop(signal.SIGTERM)
        (span,) = [s for s in receiver.server_spans() if s["name"] == "GET /sleep"]
        assert not [k for k in span["attributes"] if k.startswith("codecarbon.")]
        names = {p["name"] for p in receiver.points}
        assert names and not [n for n in names if n.startswith("codecarbon.")]
