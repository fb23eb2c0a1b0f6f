"""The runnable examples run: served by a real uvicorn, as their docstrings say."""

from __future__ import annotations

import httpx
import pytest

from support import ROOT
from support.checks import wait_for
from support.server import Server, uvicorn

pytestmark = pytest.mark.e2e


def test_the_tenants_example_reports_energy_by_customer() -> None:
    env = {"PYTHONPATH": str(ROOT)}
    command = uvicorn("examples.tenants:app")
    served = Server(command, env, ready_path="/metrics-by-tenant", quiet=True)
    with served as app, httpx.Client(base_url=app.url, timeout=30) as c:
        # Until the sampler's readings give requests a figure.
        def measured() -> bool:
            assert c.get("/report", headers={"x-api-key": "key-acme"}).is_success
            return "acme" in c.get("/metrics-by-tenant").json()

        wait_for(measured, timeout=30)
        assert c.get("/report", headers={"x-api-key": "key-globex"}).is_success
        assert c.get("/report").status_code == 401
        joules = c.get("/metrics-by-tenant").json()
    assert joules["acme"] > 0 and joules["globex"] > 0
