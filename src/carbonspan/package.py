"""What `opentelemetry-instrument` checks before it loads the instrumentor."""

_instruments = ("fastapi >= 0.100",)
