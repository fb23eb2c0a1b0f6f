"""The smallest instrumented FastAPI service: spans printed on the console.

Run:  .venv/bin/uvicorn examples.fastapi_app:app --port 8000
Then: curl localhost:8000/hello   (each request's server span, with its
codecarbon.* attributes, is printed on the server's console)
"""

from __future__ import annotations

from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

from carbonspan import CodeCarbonInstrumentor

provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
trace.set_tracer_provider(provider)

app = FastAPI()


@app.get("/hello")
async def hello() -> dict[str, str]:
    return {"hello": "world"}


FastAPIInstrumentor.instrument_app(app)
CodeCarbonInstrumentor().instrument_app(app, country_iso_code="FRA")
