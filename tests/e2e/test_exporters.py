"""Exporter and SDK trouble (hardening item 3).

An OTLP/HTTP endpoint that is down (a closed port) and one that hangs (a
receiver that holds every export until the test lets it go) are both fed by
a real uvicorn server's SDK at once; requests go on regardless. With no SDK
installed at all, carbonspan still serves every request and does next to
nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from carbonspan import attributes as a
from otlp import Receiver
from server import TESTS, Server, free_port

LOAD = (
    ["/fast"] * 20
    + ["/sleep?seconds=0.05"] * 15
    + ["/sync-sleep?seconds=0.02"] * 10
    + ["/cpu?seconds=0.005"] * 5
    + ["/stream?chunks=3&pause=0.01"] * 5
    + ["/boom", "/teapot", "/nope"]
)


def serve() -> Any:
    """The app under test: `uvicorn test_reliability_telemetry:serve --factory`.

    Spans and metrics go over OTLP/HTTP to REL_DOWN (nothing listens there)
    and to REL_HUNG (the test's receiver), and spans to the REL_SPANS file
    too, so the test can check the figures whatever the exporters do.
    """
    import os
    from collections.abc import AsyncIterator
    from contextlib import asynccontextmanager

    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter,
    )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter,
    )
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
    )

    from apps import build_app
    from carbonspan import CodeCarbonInstrumentor
    from carbonspan.testing import ConstantPowerSource

    down, hung = os.environ["REL_DOWN"], os.environ["REL_HUNG"]
    spans_file = open(os.environ["REL_SPANS"], "a", buffering=1)  # noqa: SIM115
    tracer_provider = TracerProvider()
    for endpoint, timeout in ((down, 1), (hung, 30)):
        exporter = OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces", timeout=timeout)
        tracer_provider.add_span_processor(
            BatchSpanProcessor(exporter, schedule_delay_millis=50)
        )
    tracer_provider.add_span_processor(
        SimpleSpanProcessor(
            ConsoleSpanExporter(
                out=spans_file, formatter=lambda s: s.to_json(indent=None) + "\n"
            )
        )
    )
    readers = [
        PeriodicExportingMetricReader(
            OTLPMetricExporter(endpoint=f"{endpoint}/v1/metrics", timeout=timeout),
            export_interval_millis=100,
        )
        for endpoint, timeout in ((down, 1), (hung, 30))
    ]
    meter_provider = MeterProvider(metric_readers=readers)

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        yield
        runtime = app._carbonspan_runtime
        runtime.sampler.sample()
        with open(os.environ["REL_STATE"], "w") as f:
            json.dump({"in_flight": runtime.ledger.in_flight}, f)

    app = build_app(lifespan=lifespan)
    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=tracer_provider, meter_provider=meter_provider
    )
    CodeCarbonInstrumentor().instrument_app(
        app,
        power_source=ConstantPowerSource(cpu=10.0, ram=2.0),
        meter_provider=meter_provider,
        tracer_provider=tracer_provider,
        sample_interval=0.02,
    )
    return app


class HungReceiver(Receiver):
    """An OTLP receiver that holds every export until `release` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()
        for name in ("_traces", "_metrics"):
            setattr(self, name, self._held(getattr(self, name)))

    def _held(self, handle: Any) -> Any:
        def held(request: Any) -> None:
            self.entered.set()
            self.release.wait(60)
            handle(request)

        return held


async def send_all(url: str, paths: list[str]) -> list[int]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        responses = await asyncio.gather(*(c.get(p) for p in paths))
    return [r.status_code for r in responses]


def spans_in(path: Path) -> list[dict[str, Any]]:
    spans = [json.loads(line) for line in path.read_text().splitlines() if line]
    return [s for s in spans if s["kind"] == "SpanKind.SERVER"]


@pytest.mark.e2e
def test_exporters_down_or_hung_do_not_touch_requests(tmp_path: Path) -> None:
    spans_path, state_path = tmp_path / "spans.jsonl", tmp_path / "state.json"
    command = [sys.executable, "-m", "uvicorn", "test_reliability_telemetry:serve",
               "--factory", "--host", "127.0.0.1", "--port", "{port}",
               "--log-level", "warning"]  # fmt: skip
    with HungReceiver() as receiver:
        env = {
            "REL_DOWN": f"http://127.0.0.1:{free_port()}",  # nothing listens
            "REL_HUNG": receiver.endpoint,
            "REL_SPANS": str(spans_path),
            "REL_STATE": str(state_path),
        }
        try:
            with Server(command, env) as server:
                # The hung endpoint now holds an export: its exporter is stuck.
                assert receiver.entered.wait(30)
                statuses = asyncio.run(send_all(server.url, LOAD))
                statuses += asyncio.run(send_all(server.url, LOAD))
                # Every request was answered while the exporter still hung.
                assert not receiver.release.is_set()
                assert receiver.server_spans() == []
                receiver.release.set()
                output = server.stop()
                returncode = server.proc.returncode if server.proc else None
        finally:
            receiver.release.set()
        hung_spans = receiver.server_spans()
    assert sorted(statuses) == sorted(([200] * 55 + [404, 418, 500]) * 2)
    # Shut down by SIGTERM (uvicorn re-raises it), not killed for hanging.
    assert returncode in (0, -signal.SIGTERM), output
    # Figures were computed for every request, whatever the exporters did.
    spans = sorted(spans_in(spans_path), key=lambda s: s["start_time"])
    assert len(spans) == 2 * len(LOAD) + 1  # and the readiness probe
    for span in spans[1:]:  # the probe may come before the first reading
        assert span["attributes"][a.ENERGY_TOTAL] > 0, span["name"]
    # Once it answered again, the hung endpoint received every span, the
    # last ones flushed at shutdown.
    assert len(hung_spans) == len(spans)
    assert json.loads(state_path.read_text())["in_flight"] == 0


NO_SDK = """
import asyncio, importlib.abc, json, logging, sys

class NoSdk(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry.sdk" or name.startswith("opentelemetry.sdk."):
            raise ImportError("no OpenTelemetry SDK here: " + name)

sys.meta_path.insert(0, NoSdk())
records = []
handler = logging.Handler()
handler.emit = records.append
logging.getLogger("carbonspan").addHandler(handler)

import httpx
from opentelemetry import trace
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

from apps import build_app
from carbonspan import CodeCarbonInstrumentor
from carbonspan.testing import ConstantPowerSource

app = build_app()
FastAPIInstrumentor.instrument_app(app)
CodeCarbonInstrumentor().instrument_app(
    app, power_source=ConstantPowerSource(cpu=10.0), sample_interval=0.01
)
runtime = app._carbonspan_runtime
built, spans = [], []
span_attributes = runtime.span_attributes
def spy(measurement):
    built.append(measurement)
    return span_attributes(measurement)
runtime.span_attributes = spy
hook_spans = []
runtime.hook = lambda span, scope, m: hook_spans.append(span.is_recording())

async def main():
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        paths = ["/fast", "/sleep?seconds=0.02", "/sync-sleep?seconds=0.01",
                 "/stream?chunks=2&pause=0.01", "/boom", "/items/7"] * 5
        return [(await c.get(p)).status_code for p in paths]

statuses = asyncio.run(main())
runtime.sampler.sample()
print(json.dumps({
    "statuses": statuses,
    "sdk_modules": sorted(m for m in sys.modules if m.startswith("opentelemetry.sdk")),
    "tracer_provider": type(trace.get_tracer_provider()).__name__,
    "attributes_built": len(built),
    "hook_spans_recording": hook_spans,
    "in_flight": runtime.ledger.in_flight,
    "readings": runtime.ledger.last_reading is not None,
    "warnings": [r.getMessage() for r in records],
}))
"""


def test_without_an_sdk_carbonspan_does_next_to_nothing() -> None:
    done = subprocess.run(
        [sys.executable, "-c", NO_SDK],
        cwd=TESTS,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
            "PYTHONPATH": str(TESTS),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["statuses"] == [200, 200, 200, 200, 500, 200] * 5
    assert got["sdk_modules"] == []  # the SDK could not be imported, and wasn't
    assert got["tracer_provider"] == "ProxyTracerProvider"
    # No span records: no attributes are built, let alone set.
    assert got["attributes_built"] == 0
    assert got["hook_spans_recording"] == [False] * 30
    assert got["in_flight"] == 0 and got["readings"]
    assert got["warnings"] == []
