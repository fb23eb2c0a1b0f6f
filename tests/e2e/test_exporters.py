"""Exporter trouble (hardening item 3).

An OTLP/HTTP endpoint that is down (a closed port) and one that hangs (a
receiver that holds every export until the test lets it go) are both fed by
a real uvicorn server's SDK at once; requests go on regardless. (With no SDK
installed at all: asgi/test_no_sdk.py.)
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from carbonspan.otel import attributes as a
from support.otlp import Receiver
from support.server import Server, free_port, send_all, server_spans_in

LOAD = (
    ["/fast"] * 20
    + ["/sleep?seconds=0.05"] * 15
    + ["/sync-sleep?seconds=0.02"] * 10
    + ["/cpu?seconds=0.005"] * 5
    + ["/stream?chunks=3&pause=0.01"] * 5
    + ["/boom", "/teapot", "/nope"]
)


class HungReceiver(Receiver):
    """An OTLP receiver that holds every export until `release` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()
        for name in ("take_traces", "take_metrics"):
            setattr(self, name, self.held(getattr(self, name)))

    def held(self, handle: Any) -> Any:
        def held(request: Any) -> None:
            self.entered.set()
            self.release.wait(60)
            handle(request)

        return held


@pytest.mark.e2e
def test_exporters_down_or_hung_do_not_touch_requests(tmp_path: Path) -> None:
    spans_path, state_path = tmp_path / "spans.jsonl", tmp_path / "state.json"
    command = [sys.executable, "-m", "uvicorn", "support.exporters_app:serve",
               "--factory", "--host", "127.0.0.1", "--port", "{port}",
               "--log-level", "warning"]  # fmt: skip
    with HungReceiver() as receiver:
        env = {
            "REL_DOWN": f"http://127.0.0.1:{free_port()}",  # nothing listens
            "REL_HUNG": receiver.endpoint,
            "REL_SPANS": str(spans_path),
            "REL_STATE": str(state_path),
        }
        try:
            with Server(command, env) as server:
                # The hung endpoint now holds an export: its exporter is stuck.
                assert receiver.entered.wait(30)
                statuses = asyncio.run(send_all(server.url, LOAD))
                statuses += asyncio.run(send_all(server.url, LOAD))
                # Every request was answered while the exporter still hung.
                assert not receiver.release.is_set()
                assert receiver.server_spans() == []
                receiver.release.set()
                output = server.stop()
                returncode = server.proc.returncode if server.proc else None
        finally:
            receiver.release.set()
        hung_spans = receiver.server_spans()
    assert sorted(statuses) == sorted(([200] * 55 + [404, 418, 500]) * 2)
    # Shut down by SIGTERM (uvicorn re-raises it), not killed for hanging.
    assert returncode in (0, -signal.SIGTERM), output
    # Figures were computed for every request, whatever the exporters did.
    spans = sorted(server_spans_in(spans_path), key=lambda s: s["start_time"])
    assert len(spans) == 2 * len(LOAD) + 1  # and the readiness probe
    for span in spans[1:]:  # the probe may come before the first reading
        assert span["attributes"][a.ENERGY_TOTAL] > 0, span["name"]
    # Once it answered again, the hung endpoint received every span, the
    # last ones flushed at shutdown.
    assert len(hung_spans) == len(spans)
    assert json.loads(state_path.read_text())["in_flight"] == 0
