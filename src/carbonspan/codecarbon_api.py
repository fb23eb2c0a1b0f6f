"""Everything carbonspan takes from CodeCarbon, in one module.

CodeCarbon's documented API is its tracker; carbonspan uses the parts below
it: hardware objects, detection helpers, its data tables. Each function here
wraps one such use, checked against codecarbon 3.3.2, and falls back on
something that keeps carbonspan working (a default, "not available", or the
public behaviour it stands for) if CodeCarbon moves it; the fallback is
logged once at DEBUG. `tests/unit/test_codecarbon_api.py` runs each one, and
each fallback.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar, cast

from carbonspan.numbers import JOULES_PER_KWH

_log = logging.getLogger(__name__)
_F = TypeVar("_F", bound=Callable[..., Any])

#: CodeCarbon's constant CPU model draws this share of the TDP
#: (`codecarbon.external.hardware.CONSUMPTION_PERCENTAGE_CONSTANT`).
CONSTANT_SHARE = 0.5
#: Its TDP per logical CPU where a model is not in its table
#: (`codecarbon.core.cpu.DEFAULT_POWER_PER_CORE`).
WATTS_PER_CPU = 4.0
#: Its world-average carbon intensity, g CO2eq/kWh (codecarbon 3.3.2's data).
WORLD_AVERAGE = 475.0


def with_fallback(value: Callable[..., Any]) -> Callable[[_F], _F]:
    """Run the wrapped use; on any exception, log it once and return
    `value(*args)` instead."""

    def wrap(use: _F) -> _F:
        logged = False

        @functools.wraps(use)
        def call(*args: Any) -> Any:
            nonlocal logged
            try:
                return use(*args)
            except Exception:
                if not logged:
                    logged = True
                    _log.debug(
                        "carbonspan: CodeCarbon's %s failed; its fallback is used",
                        use.__name__,
                        exc_info=True,
                    )
                return value(*args)

        return cast(_F, call)

    return wrap


# -- CPU ------------------------------------------------------------------


@with_fallback(lambda: "tdp")
def cpu_method() -> str:
    """How CodeCarbon measures the CPU here: rapl, cpu_load or tdp."""
    from codecarbon.core import cpu
    from codecarbon.core.util import is_linux_os

    if is_linux_os() and cpu.is_rapl_available():
        return "rapl"
    return "cpu_load" if cpu.is_psutil_available() else "tdp"


def cpu_hardware(method: str, model: str, max_power: float | None) -> Any:
    """CodeCarbon's CPU object in machine mode for `method`. Raises where
    CodeCarbon cannot build one: the caller falls back on a constant model."""
    from codecarbon.external.hardware import CPU, MODE_CPU_LOAD

    if method == "rapl":
        return CPU.from_utils(".", "intel_rapl", tracking_mode="machine")
    mode = MODE_CPU_LOAD if method == "cpu_load" else "constant"
    return CPU.from_utils(".", mode, model, max_power, tracking_mode="machine")


@with_fallback(lambda model: None)
def registry_tdp(model: str) -> float | None:
    """The TDP (W) of `model` in CodeCarbon's CPU power table, or None.

    `TDP._get_cpu_power_from_registry` is its lookup; `TDP()` itself would
    also run its hardware detection, hence `__new__`.
    """
    from codecarbon.core import cpu

    table = cpu.TDP.__new__(cpu.TDP)
    power = table._get_cpu_power_from_registry(model)
    return float(power) if power else None


@with_fallback(lambda: WATTS_PER_CPU)
def watts_per_cpu() -> float:
    """CodeCarbon's TDP per logical CPU for a model it lacks."""
    from codecarbon.core import cpu

    return float(cpu.DEFAULT_POWER_PER_CORE)


@with_fallback(lambda: (os.cpu_count() or 1, os.cpu_count() or 1))
def cpu_counts() -> tuple[int, int]:
    """Logical and physical CPUs, as CodeCarbon counts them."""
    from codecarbon.core.util import count_cpus, count_physical_cpus

    return int(count_cpus()), int(count_physical_cpus())


@with_fallback(lambda: None)
def detected_cpu_model() -> str | None:
    """CodeCarbon's CPU brand string (py-cpuinfo: a second interpreter)."""
    from codecarbon.core.util import detect_cpu_model

    model = detect_cpu_model()
    return str(model) if model else None


def model_tdp(hw: Any) -> float | None:
    """The TDP (W) CodeCarbon's CPU object models with (`CPU._tdp`), or None."""
    tdp = getattr(hw, "_tdp", None)
    return float(tdp) if isinstance(tdp, (int, float)) and tdp > 0 else None


def cpu_joules(hw: Any, dt: float) -> float:
    """J CodeCarbon's CPU object measured over the last `dt` seconds."""
    _, energy = hw.measure_power_and_energy(last_duration=dt)
    return float(energy.kWh) * JOULES_PER_KWH


# -- RAM and GPU ------------------------------------------------------------


def ram_model() -> Any:
    """CodeCarbon's machine RAM model (raises where it cannot build one)."""
    from codecarbon.external.ram import RAM

    return RAM(tracking_mode="machine")


def ram_watts(ram: Any) -> float:
    return float(ram.total_power().W)


@with_fallback(lambda: None)
def pynvml() -> Any:
    """The NVML binding CodeCarbon loads, where this is an NVIDIA system."""
    from codecarbon.core import gpu_nvidia

    if not gpu_nvidia.PYNVML_AVAILABLE or not gpu_nvidia.is_nvidia_system():
        return None
    return gpu_nvidia.pynvml


# -- carbon intensity data ---------------------------------------------------


@functools.lru_cache(maxsize=1)
def _data() -> Any:
    from codecarbon.input import DataSource

    return DataSource()


@functools.lru_cache(maxsize=1)
@with_fallback(lambda: WORLD_AVERAGE)
def world_average() -> float:
    """CodeCarbon's world-average carbon intensity, g CO2eq/kWh."""
    return float(_data().get_carbon_intensity_per_source_data()["world_average"])


@functools.lru_cache(maxsize=1)
@with_fallback(frozenset)
def countries() -> frozenset[str]:
    """ISO 3166-1 alpha-3 codes CodeCarbon has an energy mix for."""
    return frozenset(_data().get_global_energy_mix_data())


@with_fallback(lambda country, region: world_average())
def country_factor(country: str, region: str | None) -> float:
    """g CO2eq/kWh of a country's (or region's) grid, as CodeCarbon computes
    it for private infrastructure."""
    from codecarbon.core.emissions import Emissions
    from codecarbon.core.units import Energy
    from codecarbon.external.geography import GeoMetadata

    geo = GeoMetadata(country_iso_code=country, region=region)
    kilograms = Emissions(_data()).get_private_infra_emissions(
        Energy.from_energy(kWh=1.0), geo
    )
    return float(kilograms) * 1000.0


_NORDIC_PREFIX = {"SWE": "SE", "NOR": "NO", "FIN": "FI"}


@functools.cache
@with_fallback(lambda country: ())
def region_names(country: str) -> tuple[str, ...]:
    """The region names CodeCarbon has figures for in `country`; () if none."""
    data = _data()
    if country == "USA":
        names = list(data.get_country_emissions_data("usa"))
    elif country == "CAN":
        names = list(data.get_country_energy_mix_data("can"))
    elif country == "CHN":
        provinces = data.get_china_provincial_emissions_data()["data"].values()
        names = [name for p in provinces for name in p["names"]]
    elif country in _NORDIC_PREFIX:
        zones = data.get_nordic_country_energy_mix_data()["data"]
        names = [z for z in zones if z.startswith(_NORDIC_PREFIX[country])]
    else:
        return ()
    return tuple(sorted(str(n) for n in names if not str(n).startswith("_")))


@functools.cache
@with_fallback(lambda provider: ())
def cloud_table(provider: str) -> tuple[tuple[str, float, str | None], ...]:
    """(region, g CO2eq/kWh, ISO alpha-3 country) for one cloud provider."""
    df = _data().get_cloud_emissions_data()
    rows = df[df["provider"] == provider]
    return tuple(
        (str(r), float(i), c if isinstance(c, str) else None)
        for r, i, c in zip(
            rows["region"], rows["impact"], rows["countryIsoCode"], strict=True
        )
    )
