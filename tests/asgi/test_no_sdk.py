"""With no OpenTelemetry SDK installed at all (hardening item 3), carbonspan
still serves every request and does next to nothing: a fresh interpreter
where the SDK cannot be imported runs an instrumented app in process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from support import TESTS

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

from support.apps import build_app
from carbonspan import CodeCarbonInstrumentor
from carbonspan.otel.instrumentor import instrumentation_of
from carbonspan.testing import ConstantPowerSource

app = build_app()
FastAPIInstrumentor.instrument_app(app)
hook_spans = []
CodeCarbonInstrumentor().instrument_app(
    app, power_source=ConstantPowerSource(cpu=10.0), sample_interval=0.01,
    measurement_hook=lambda span, scope, m: hook_spans.append(span.is_recording()),
)
inst = instrumentation_of(app)
built = []
spans = inst.reporter.spans  # what builds each span's attributes
for_span = spans.for_span
def spy(valuation, span=None):
    built.append(valuation)
    return for_span(valuation, span)
spans.for_span = spy

async def main():
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        paths = ["/fast", "/sleep?seconds=0.02", "/sync-sleep?seconds=0.01",
                 "/stream?chunks=2&pause=0.01", "/boom", "/items/7"] * 5
        return [(await c.get(p)).status_code for p in paths]

statuses = asyncio.run(main())
inst.sampler.sample()
print(json.dumps({
    "statuses": statuses,
    "sdk_modules": sorted(m for m in sys.modules if m.startswith("opentelemetry.sdk")),
    "tracer_provider": type(trace.get_tracer_provider()).__name__,
    "attributes_built": len(built),
    "hook_spans_recording": hook_spans,
    "in_flight": inst.ledger.in_flight,
    "readings": inst.ledger.last_time is not None,
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
