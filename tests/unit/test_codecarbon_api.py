"""Every use of CodeCarbon below its tracker is in `carbonspan.codecarbon_api`:
each one works with the CodeCarbon installed here, and each falls back on
something that keeps carbonspan working when CodeCarbon moves it."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from codecarbon.core import cpu, gpu_nvidia, util
from codecarbon.input import DataSource

from carbonspan import codecarbon_api as cc
from carbonspan.power.codecarbon import CodeCarbonPowerSource
from carbonspan.power.cpu import LoadModel, load_watts

XEON = "Intel(R) Xeon(R) Platinum 8259CL CPU @ 2.50GHz"  # in CodeCarbon's table


@pytest.fixture(autouse=True)
def fresh_caches() -> Iterator[None]:
    cached = (cc.world_average, cc.countries, cc.region_names, cc.cloud_table)
    for function in cached:
        function.cache_clear()
    yield
    for function in cached:
        function.cache_clear()


def broken(*_: Any, **__: Any) -> Any:
    raise AttributeError("moved in a newer CodeCarbon")


# (what it is, the call, what CodeCarbon gives here, where to break it, the
# fallback's value)
USES: list[tuple[str, Callable[[], Any], Callable[[Any], bool], Any, str, Any]] = [
    ("cpu method", cc.cpu_method, lambda v: v in ("rapl", "cpu_load", "tdp"),
     cpu, "is_psutil_available", "tdp"),
    ("TDP table", lambda: cc.registry_tdp(XEON), lambda v: v == 210.0,
     cpu.TDP, "_get_cpu_power_from_registry", None),
    ("TDP per CPU", cc.watts_per_cpu, lambda v: v == 4.0,
     cpu, "DEFAULT_POWER_PER_CORE", cc.WATTS_PER_CPU),
    ("CPU counts", cc.cpu_counts, lambda v: v[0] == os.cpu_count() and v[1] >= 1,
     util, "count_cpus", (os.cpu_count(), os.cpu_count())),
    ("NVML", cc.pynvml, lambda v: v is None or hasattr(v, "nvmlInit"),
     gpu_nvidia, "PYNVML_AVAILABLE", None),
    ("world average", cc.world_average, lambda v: 100 < v < 1000,
     DataSource, "get_carbon_intensity_per_source_data", cc.WORLD_AVERAGE),
    ("countries", cc.countries, lambda v: {"FRA", "USA", "IND"} <= v,
     DataSource, "get_global_energy_mix_data", frozenset()),
    ("regions", lambda: cc.region_names("USA"), lambda v: "california" in v,
     DataSource, "get_country_emissions_data", ()),
    ("cloud table", lambda: cc.cloud_table("gcp"),
     lambda v: any(r == "europe-west1" and c == "BEL" for r, _, c in v),
     DataSource, "get_cloud_emissions_data", ()),
]  # fmt: skip


@pytest.mark.parametrize(
    ("call", "works"), [(u[1], u[2]) for u in USES], ids=[u[0] for u in USES]
)
def test_each_use_works_with_this_codecarbon(
    call: Callable[[], Any], works: Callable[[Any], bool]
) -> None:
    assert works(call())


@pytest.mark.parametrize(
    ("call", "owner", "name", "fallback"),
    [(u[1], u[3], u[4], u[5]) for u in USES],
    ids=[u[0] for u in USES],
)
def test_each_use_falls_back_when_codecarbon_moves_it(
    monkeypatch: pytest.MonkeyPatch,
    call: Callable[[], Any],
    owner: Any,
    name: str,
    fallback: Any,
) -> None:
    if callable(getattr(owner, name)):
        monkeypatch.setattr(owner, name, broken)
    else:
        monkeypatch.delattr(owner, name)
    assert call() == fallback


def test_a_fallback_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    use = cc.with_fallback(lambda: "fallback")(broken)
    with caplog.at_level(logging.DEBUG, logger="carbonspan.codecarbon_api"):
        assert use() == use() == "fallback"
    logged = [r for r in caplog.records if "its fallback is used" in r.message]
    assert len(logged) == 1 and "broken" in logged[0].message


def test_a_country_factor_falls_back_on_the_world_average(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    france = cc.country_factor("FRA", None)
    assert 10 < france < 200 and france != cc.world_average()
    from codecarbon.core.emissions import Emissions

    monkeypatch.setattr(Emissions, "get_private_infra_emissions", broken)
    assert cc.country_factor("FRA", None) == cc.world_average()


def test_the_cpu_model_objects_work_and_fall_back() -> None:
    hw = cc.cpu_hardware("cpu_load", XEON, 210.0)
    assert cc.model_tdp(hw) == 210.0
    hw.start()
    assert cc.cpu_joules(hw, 0.1) >= 0.0
    # An attribute CodeCarbon no longer has: no TDP.
    assert cc.model_tdp(object()) is None


@pytest.mark.parametrize("percent", [0.0, 3.0, 25.0, 50.0, 87.5, 100.0])
def test_the_load_model_gives_codecarbons_power_at_each_load(
    percent: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """carbonspan evaluates CodeCarbon's load model itself (on CodeCarbon's
    TDP): at every load it gives the watts CodeCarbon's CPU object gives."""
    hw = cc.cpu_hardware("cpu_load", XEON, 210.0)
    monkeypatch.setattr(hw._cpu_load_meter, "percent", lambda *_, **__: percent)
    theirs = hw._get_power_from_cpu_load().W
    assert load_watts(210.0, percent / 100.0) == pytest.approx(theirs, rel=1e-12)


def test_the_load_model_integrates_the_machines_load_over_each_interval() -> None:
    """Over an interval the machine spent 1 of its 4 CPU seconds busy, the
    load is 25%, and the joules are the load model's watts times the
    interval's length."""

    class Times:
        def __init__(self) -> None:
            self.busy, self.total = 100.0, 400.0

        def read(self) -> tuple[float, float]:
            return self.busy, self.total

    times = Times()
    model = LoadModel(210.0, times)  # type: ignore[arg-type]
    model.start()
    times.busy, times.total = 101.0, 404.0
    assert model.joules(2.0) == pytest.approx(load_watts(210.0, 0.25) * 2.0)
    assert model.machine_busy() == 101.0
    # No CPU second elapsed (a clock that did not move): no load, idle power.
    assert model.joules(1.0) == pytest.approx(load_watts(210.0, 0.0))
    # Counters that went back (a reset): the load is clamped, never negative.
    times.busy, times.total = 50.0, 408.0
    assert model.joules(1.0) == pytest.approx(load_watts(210.0, 0.0))


def test_the_ram_model_works() -> None:
    assert cc.ram_watts(cc.ram_model()) > 0.0


def test_the_cpu_brand_string_falls_back_on_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(util, "detect_cpu_model", broken)
    assert cc.detected_cpu_model() is None


def test_a_cpu_or_ram_model_codecarbon_cannot_build_leaves_a_working_source(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # cpu_hardware and ram_model raise; the source measures on without them.
    monkeypatch.setattr(cc, "cpu_hardware", broken)
    monkeypatch.setattr(cc, "ram_model", broken)
    source = CodeCarbonPowerSource("machine", gpu=False)
    with caplog.at_level(logging.WARNING):
        first = source.read()
    second = source.read()
    info = source.describe()
    assert info.measurement == {"cpu": "tdp"}
    assert first.ram is None and second.cpu is not None and second.cpu >= first.cpu
    assert "CPU detection failed" in caplog.text
    assert "RAM energy is not measured" in caplog.text
