"""What the tests share: fakes, apps, servers, drivers and checks (no tests here).

`tests/` is on sys.path (pyproject's pytest `pythonpath`, and the PYTHONPATH
`support.server.Server` gives its subprocesses), so this is `support`;
`benchmarks/` is too, so a test imports a benchmark (`import soak`).

    support.apps           the test FastAPI app (`build_app`) and `burn`
    support.otel           `Otel` (SDK providers, in-memory exporters),
                           `Instrumented`, `attrs`, `wait_ready`, `ready_app`
    support.asgi           the ASGI driver: `client`, `get`, `fetch`; `call`
                           and `Lifespan` for message-level control
    support.checks         assertions and waits shared by many tests
    support.fakes          fake hardware and time: `FakeNvml`, `BlockingSource`,
                           `BrokenSource`, `Clock`; `Recorded`, a real source
                           that keeps its readings (the books' truth)
    support.fake_apis      local stand-ins for Electricity Maps and BoaviztAPI
    support.server         `Server` (a command in a subprocess), `free_port`,
                           `send_all`, `server_spans_in`
    support.otlp           an OTLP/HTTP receiver
    support.backends       Prometheus, Phoenix and BoaviztAPI servers
    support.lifecycle      the lifecycle tests' app, and its uvicorn factory
    support.served         how the apps served by real servers are measured
    support.*_app, support.*_server, support.gunicorn_conf
                           apps that real servers load in subprocesses

This module imports nothing but pathlib: a subprocess that must not load the
OpenTelemetry SDK (asgi/test_no_sdk.py) imports `support.apps` through it.
"""

from pathlib import Path

#: tests/, put on PYTHONPATH (and used as the working directory) for servers.
TESTS = Path(__file__).resolve().parent.parent
#: The repository: docs, examples, dashboards, benchmarks.
ROOT = TESTS.parent
