"""An app exposing its metrics to Prometheus, for the Prometheus end-to-end test.

PROM_APP_METRICS_PORT  where prometheus_client serves /metrics
"""

from __future__ import annotations

import os

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import start_http_server

from carbonspan.otel.instrumentor import instrumentation_of
from support.apps import build_app
from support.served import drawn, measured

start_http_server(int(os.environ["PROM_APP_METRICS_PORT"]), addr="127.0.0.1")
meter_provider = MeterProvider(metric_readers=[PrometheusMetricReader()])
app = build_app()
source = measured(app, meter_provider)
inst = instrumentation_of(app)
assert inst is not None


@app.post("/_freeze")
def freeze() -> dict[str, float]:
    """Test hook: stop, then a last reading, so the counters hold still; what
    the source counted between the ledger's first and last readings."""
    inst.sampler.stop()
    inst.sampler.sample()
    return drawn(inst, source)
