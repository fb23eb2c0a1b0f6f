"""A plain Starlette app (no FastAPI): CodeCarbonMiddleware inside the ASGI span.

Run:  .venv/bin/uvicorn examples.plain_asgi:app --port 8000
Then: curl localhost:8000/hello/ada   (the span, with codecarbon.* attributes,
is printed on the server's console)

The order matters: OpenTelemetryMiddleware opens the server span, so
CodeCarbonMiddleware goes inside it, where that span is current.
"""

from __future__ import annotations

import asyncio

from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from carbonspan import CodeCarbonMiddleware

provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))


async def hello(request: Request) -> PlainTextResponse:
    await asyncio.sleep(0.05)
    return PlainTextResponse(f"hello {request.path_params['name']}\n")


starlette_app = Starlette(routes=[Route("/hello/{name}", hello)])
app = OpenTelemetryMiddleware(
    CodeCarbonMiddleware(starlette_app, country_iso_code="DEU"),
    tracer_provider=provider,
)
