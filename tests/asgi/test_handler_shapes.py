"""Every handler shape, both policies, in process: each request's CPU figure
lies between the truths of a power source that follows the process's CPU.

The shapes and their truths are in benchmarks/shapes.py (see its docstring);
`benchmarks/accuracy.py --matrix` runs the same app over real servers too.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

import shapes
from carbonspan import CodeCarbonInstrumentor
from carbonspan.otel.instrumentor import instrumentation_of
from support.checks import assert_shapes_between_truths
from support.otel import wait_ready


def served_in_process(policy: str, rounds: int) -> list[shapes.Record]:
    app = shapes.build(policy)
    try:

        async def main() -> None:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:

                async def get(path: str, ms: float) -> None:
                    response = await c.get(path, params={"ms": ms})
                    assert response.status_code == 200

                await get("/sync", 1.0)  # starts the sampler
                inst = instrumentation_of(app)
                assert inst is not None
                # A few ticks, from which the estimator has its prior.
                await asyncio.to_thread(wait_ready, inst, 3)
                app.state.records.clear()
                await shapes.drive(get, rounds, records=app.state.records)

        asyncio.run(main())
    finally:
        CodeCarbonInstrumentor.uninstrument_app(app)
    return list(app.state.records)


@pytest.mark.parametrize("policy", ["time_share", "cpu_time"])
def test_every_shape_is_charged_between_its_truths(policy: str) -> None:
    assert_shapes_between_truths(shapes.summary(served_in_process(policy, 8)), 8)


def test_background_work_is_not_on_the_span() -> None:
    records = served_in_process("cpu_time", rounds=4)
    background = [r for r in records if r.shape == "background"]
    assert len(background) == 4
    for r in background:
        assert r.after > 0.5 * r.own  # the task did its work ...
        assert r.reported is not None
        # ... off the span: on it, the figure would be about upper + 30 W x
        # the task's CPU (the upper truth stops at the final body).
        assert r.reported < r.upper + 0.5 * shapes.CPU_W * r.after
