"""An app with no carbonspan code at all, for `opentelemetry-instrument`."""

from support.apps import build_app

app = build_app()
