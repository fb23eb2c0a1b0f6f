"""Fixtures for every test. The helpers they hand out live in tests/support."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from carbonspan import checks
from carbonspan.carbon import embodied
from support.otel import Instrumented, Otel


@pytest.fixture(autouse=True)
def no_cached_answers() -> Iterator[None]:
    """BoaviztAPI's answers are cached per process and URL: each test asks
    its own server afresh (a port may be used again)."""
    cache = embodied._cache
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def otel() -> Iterator[Otel]:
    o = Otel()
    yield o
    o.tracer_provider.shutdown()
    o.meter_provider.shutdown()


@pytest.fixture
def instrument() -> Iterator[Instrumented]:
    inst = Instrumented()
    yield inst
    inst.cleanup()


@pytest.fixture
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unknown variables are warned about once per process: start afresh."""
    monkeypatch.setattr(checks, "_warned_env", set())
