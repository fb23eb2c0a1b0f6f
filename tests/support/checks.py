"""Checks and waits that many tests share."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import pytest

from carbonspan.otel import attributes as a
from carbonspan.otel.instrumentation import Instrumentation
from carbonspan.power.source import COMPONENTS
from support.fakes import Recorded
from support.otel import Otel


def wait_for(
    condition: Callable[[], bool], timeout: float = 10.0, interval: float = 0.005
) -> None:
    """Until `condition()` holds, asking every `interval` s; fails after `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


async def async_wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.002)


def energy_values(attributes: dict[str, Any]) -> list[float]:
    """Every codecarbon.energy.* / power.* / emissions figure of a span."""
    keys = [a.ENERGY_TOTAL, a.EMISSIONS, *a.ENERGY.values(), *a.POWER.values()]
    return [attributes[k] for k in keys if k in attributes]


def assert_sane(attributes: dict[str, Any]) -> None:
    """No figure on a span is ever NaN, infinite or negative."""
    for value in energy_values(attributes):
        assert isinstance(value, float), attributes
        assert math.isfinite(value) and value >= 0.0, attributes


def in_flight_metric(otel: Otel) -> float:
    """The codecarbon.requests.in_flight observation, collected now."""
    points = otel.points("codecarbon.requests.in_flight")
    assert len(points) == 1, points
    return float(points[0].value)


def assert_no_open_window(inst: Instrumentation, otel: Otel) -> None:
    assert inst.ledger.in_flight == 0
    assert in_flight_metric(otel) == 0


def carbonspan_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name.startswith("carbonspan") and r.levelno >= logging.WARNING
    ]


def conserved(
    inst: Instrumentation, spans_j: dict[str, float], rel: float = 0.01
) -> None:
    """The books balance, per component in `spans_j` (the joules on the spans):
    spans + what requests drew after their responses == the attributed joules,
    and + the unattributed joules == what the source itself counted between
    the ledger's first and last readings (its power source must be a
    `support.fakes.Recorded`)."""
    ledger, source = inst.ledger, inst.sampler.source
    assert isinstance(source, Recorded), "conserved() needs a Recorded source"
    while True:  # the books as of one reading
        last = ledger.last_time
        totals = ledger.totals()
        if ledger.last_time == last:
            break
    for i, component in enumerate(COMPONENTS):
        if component not in spans_j:
            continue
        measured = source.joules(component, ledger.first_time, last)
        after = totals.after_response[i]
        assert spans_j[component] + after == pytest.approx(
            totals.attributed[i], rel=1e-9
        )
        got = spans_j[component] + after + totals.unattributed[i]
        assert got == pytest.approx(measured, rel=rel), component


def log_messages(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    """What `logger` (exactly that one) logged."""
    return [r.getMessage() for r in caplog.records if r.name == logger]


def assert_shapes_between_truths(cells: dict[str, Any], rounds: int) -> None:
    """Every handler shape of benchmarks/shapes.py was measured `rounds`
    times, never at 0 J, its median between 0.85 x its lower truth and
    1.3 x its upper one (see `shapes.Record`). The upper truth counts the
    process's CPU inside the request's window only; what the server does
    just outside it (parsing the next request, exporting the span) lands in
    the same ticks, and 8 rounds on a shared machine read up to 1.17 of it
    (the matrix, 18 requests a cell over 3 runs, holds 1.15)."""
    import shapes

    assert set(cells) == set(shapes.SHAPES)
    for shape, cell in cells.items():
        print(shape, cell)
        assert cell.n == rounds, shape
        # The async def that computes in one step read 0 J under cpu_time
        # when its figure was taken before that step was counted.
        assert cell.zeros == 0, shape
        assert cell.lower >= 0.85, shape
        assert cell.upper <= 1.3, shape
