"""Carbon per customer: the tenant named by the dependency that
authenticates the caller, on each span and on the metrics.

Run:  .venv/bin/uvicorn examples.tenants:app --port 8000
Then: curl -H "x-api-key: key-acme" localhost:8000/report
      curl localhost:8000/metrics-by-tenant
(each server span printed on the console carries codecarbon.tenant; the
second URL sums codecarbon.request.energy by tenant from the app's own
metric reader)
"""

from __future__ import annotations

from collections import defaultdict

from fastapi import Depends, FastAPI, Header, HTTPException
from opentelemetry import trace
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

from carbonspan import CodeCarbonInstrumentor, set_tenant

provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
trace.set_tracer_provider(provider)
reader = InMemoryMetricReader()
meter_provider = MeterProvider(metric_readers=[reader])

#: Who holds which API key (in a real service: the auth backend).
CUSTOMERS = {"key-acme": "acme", "key-globex": "globex"}

app = FastAPI()


def customer(x_api_key: str = Header("")) -> str:
    tenant = CUSTOMERS.get(x_api_key)
    if tenant is None:
        raise HTTPException(status_code=401, detail="unknown API key")
    set_tenant(tenant)  # from authentication, never from what the client says
    return tenant


@app.get("/report")
async def report(tenant: str = Depends(customer)) -> dict[str, str]:
    return {"report for": tenant}


@app.get("/metrics-by-tenant")
def by_tenant() -> dict[str, float]:
    joules: dict[str, float] = defaultdict(float)
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == "codecarbon.request.energy":
                    for point in metric.data.data_points:
                        name = str(point.attributes.get("codecarbon.tenant", "(none)"))
                        joules[name] += point.sum
    return dict(joules)


FastAPIInstrumentor.instrument_app(app, meter_provider=meter_provider)
CodeCarbonInstrumentor().instrument_app(
    app, country_iso_code="FRA", meter_provider=meter_provider, max_tenants=50
)
