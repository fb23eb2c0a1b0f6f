"""Embodied emissions from a real BoaviztAPI server, in its own virtualenv."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from carbonspan.carbon.embodied import Boavizta
from carbonspan.otel import attributes as a
from carbonspan.testing import ConstantPowerSource
from support.asgi import fetch
from support.backends import BoaviztAPI
from support.checks import wait_for
from support.otel import Instrumented, Otel, attrs, ready_app

pytestmark = pytest.mark.backends


@pytest.fixture(scope="module")
def boavizta() -> Iterator[BoaviztAPI]:
    with BoaviztAPI() as server:
        yield server


def test_cloud_instance_and_server_archetype(boavizta: BoaviztAPI) -> None:
    m5 = Boavizta(boavizta.url, cloud_provider="aws", cloud_instance="m5.large")
    got = m5.fetch()
    assert got.origin == "boavizta"
    assert got.kg > 0 and got.lifetime_hours > 0
    # The rate agrees with BoaviztAPI's own figure for one hour (which it
    # rounds to two significant figures).
    one_hour = boavizta.get_json(
        "/v1/cloud/instance",
        provider="aws", instance_type="m5.large", criteria="gwp", duration=1,
    )["impacts"]["gwp"]["embedded"]["value"]  # fmt: skip
    assert got.grams_per_second * 3600 / 1000 == pytest.approx(one_hour, rel=0.02)
    server = Boavizta(boavizta.url, archetype="platform_compute_medium").fetch()
    assert server.kg > got.kg  # a whole server against a 2-vCPU instance


def test_spans_carry_sci_with_boavizta_embodied_emissions(
    boavizta: BoaviztAPI, otel: Otel, instrument: Instrumented
) -> None:
    app, inst = ready_app(
        instrument, otel, power_source=ConstantPowerSource(cpu=8.0, ram=2.0),
        carbon_intensity=56.0, boavizta_url=boavizta.url, cloud_provider="aws",
        cloud_instance="m5.large", scope="machine", sample_interval=0.02,
    )  # fmt: skip
    wait_for(lambda: inst.accounts.factors.embodied_rate is not None, timeout=60)
    known = inst.accounts.embodied.value
    assert known is not None and known.origin == "boavizta"
    assert fetch(app, ["/sleep?seconds=0.1"] * 3) == [200, 200, 200]
    spans = [attrs(s) for s in otel.server_spans()]
    assert len(spans) == 3
    for got in spans:
        # Alone: a request reserves its duration, at least the 0.1 s it slept.
        assert got[a.EMBODIED] >= known.grams_per_second * 0.1
        assert got[a.EMBODIED] <= known.grams_per_second * 0.2
        assert got[a.SCI] == got[a.EMISSIONS] + got[a.EMBODIED]
        assert got[a.EMISSIONS] == pytest.approx(
            got[a.ENERGY_TOTAL] / 3.6e6 * 56.0, rel=1e-12
        )
