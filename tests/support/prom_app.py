"""An app exposing its metrics to Prometheus, for the Prometheus end-to-end test.

PROM_APP_METRICS_PORT  where prometheus_client serves /metrics
PROM_APP_DRAWN         where POST /_freeze has the books' last figures written
"""

from __future__ import annotations

import json
import os
import threading

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import start_http_server

from carbonspan.otel.instrumentor import instrumentation_of
from support.apps import build_app
from support.checks import wait_for
from support.served import drawn, measured

start_http_server(int(os.environ["PROM_APP_METRICS_PORT"]), addr="127.0.0.1")
meter_provider = MeterProvider(metric_readers=[PrometheusMetricReader()])
app = build_app()
source = measured(app, meter_provider)
inst = instrumentation_of(app)
assert inst is not None


def _last_reading() -> None:
    # Once no request is open (this one included), a last reading settles
    # every request's tail: attributed + unattributed = measured from here.
    wait_for(lambda: not inst.ledger.in_flight, timeout=30)
    inst.sampler.sample()
    path = os.environ["PROM_APP_DRAWN"]
    with open(path + ".part", "w") as f:
        json.dump({"in_flight": inst.ledger.in_flight, **drawn(inst, source)}, f)
    os.replace(path + ".part", path)


@app.post("/_freeze")
def freeze() -> None:
    """Test hook: no more readings by the sampler's thread; once this request
    has closed, a last one, and what the source counted between the ledger's
    first and last readings written to PROM_APP_DRAWN."""
    inst.sampler.stop()
    threading.Thread(target=_last_reading, daemon=True).start()
