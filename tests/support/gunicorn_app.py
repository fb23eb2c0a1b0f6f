"""The app gunicorn serves in the worker tests: instrumented at import."""

from carbonspan import CodeCarbonInstrumentor
from support.apps import build_app

app = build_app()
CodeCarbonInstrumentor().instrument_app(app)  # the default 0.1 s interval
