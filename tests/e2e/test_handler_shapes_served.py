"""Every handler shape, both policies, over a real uvicorn (asyncio with h11,
uvloop with httptools): each request's CPU figure lies between the truths of
a power source that follows the server process's CPU (benchmarks/shapes.py)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

import shapes
from support.checks import assert_shapes_between_truths
from support.server import Server, uvicorn

pytestmark = pytest.mark.e2e

HERE = Path(__file__).resolve().parent
PATH = os.pathsep.join(str(p) for p in (HERE.parent, HERE.parent.parent / "benchmarks"))


def served(policy: str, loop: str, rounds: int) -> list[dict[str, Any]]:
    env = {"PYTHONPATH": PATH, "SHAPES_POLICY": policy}
    http = "httptools" if loop == "uvloop" else "h11"
    command = [*uvicorn("shapes:served"), "--factory", "--loop", loop]
    command += ["--http", http]
    with Server(command, env, ready_path="/results") as server:

        async def main() -> list[dict[str, Any]]:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:

                async def get(path: str, ms: float) -> None:
                    response = await c.get(path, params={"ms": ms})
                    assert response.status_code == 200

                async def measured() -> int:
                    results = (await c.get("/results")).json()
                    return sum(r["reported"] is not None for r in results)

                # Until the sampler's readings charge requests; then three
                # requests longer than a sampling interval, each measured
                # across a tick: the estimator's prior.
                deadline = time.monotonic() + 30
                while await measured() < 1:
                    assert time.monotonic() < deadline, "no figures in time"
                    await get("/sync", 1.0)
                for _ in range(3):
                    await get("/sync", 120.0)
                start = len((await c.get("/results")).json())
                await shapes.drive(get, rounds)
                results: list[dict[str, Any]] = (await c.get("/results")).json()
                return results[start:]

        return asyncio.run(main())


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("policy", ["time_share", "cpu_time"])
def test_every_shape_is_charged_between_its_truths_over_uvicorn(
    policy: str, loop: str
) -> None:
    # uvloop's callbacks cannot be timed: under cpu_time the streaming
    # response's work, in a task of Starlette's, read 0.11 of its truth
    # until the tasks a request creates were timed there too.
    assert_shapes_between_truths(shapes.summary(served(policy, loop, rounds=8)), 8)
