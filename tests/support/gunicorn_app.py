"""The app gunicorn serves in the worker tests: instrumented at import."""

from apps import build_app
from carbonspan import CodeCarbonInstrumentor

app = build_app()
CodeCarbonInstrumentor().instrument_app(app)  # the default 0.1 s interval
