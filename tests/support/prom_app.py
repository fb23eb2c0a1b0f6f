"""An app exposing its metrics to Prometheus, for the Prometheus end-to-end test.

PROM_APP_METRICS_PORT  where prometheus_client serves /metrics
"""

from __future__ import annotations

import os

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import start_http_server

from carbonspan import CodeCarbonInstrumentor
from carbonspan.otel.instrumentor import instrumentation_of
from carbonspan.testing import ConstantPowerSource
from support.apps import build_app
from support.fakes import Recorded

start_http_server(int(os.environ["PROM_APP_METRICS_PORT"]), addr="127.0.0.1")
meter_provider = MeterProvider(metric_readers=[PrometheusMetricReader()])
source = Recorded(ConstantPowerSource(cpu=10.0, ram=2.0))
app = build_app()
CodeCarbonInstrumentor().instrument_app(
    app,
    power_source=source,
    meter_provider=meter_provider,
    sample_interval=0.05,
    country_iso_code="FRA",
)
inst = instrumentation_of(app)
assert inst is not None


@app.post("/_freeze")
def freeze() -> dict[str, float]:
    """Test hook: stop, then a last reading, so the counters hold still; what
    the source counted between the ledger's first and last readings."""
    inst.sampler.stop()
    inst.sampler.sample()
    since, until = inst.ledger.first_time, inst.ledger.last_time
    return {c: source.joules(c, since, until) for c in ("cpu", "ram")}
