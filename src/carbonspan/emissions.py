"""Carbon intensity (g CO2eq/kWh), resolved once, offline, from CodeCarbon's data.

Order: explicit `carbon_intensity` -> `cloud_provider` + `cloud_region` ->
`country_iso_code` (+ `region`) -> CodeCarbon's world average.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

_log = logging.getLogger(__name__)

JOULES_PER_KWH = 3.6e6
CLOUD_PROVIDERS = ("aws", "azure", "gcp")


@dataclass(frozen=True)
class CarbonIntensity:
    """The emission factor in force and where it came from."""

    g_per_kwh: float
    source: str  # config, cloud, country, geo, default
    country_iso_code: str | None = None
    region: str | None = None
    cloud_provider: str | None = None
    cloud_region: str | None = None

    def grams(self, joules: float) -> float:
        """g CO2eq emitted by `joules` of electricity."""
        return joules / JOULES_PER_KWH * self.g_per_kwh


def resolve(
    *,
    carbon_intensity: float | None = None,
    cloud_provider: str | None = None,
    cloud_region: str | None = None,
    country_iso_code: str | None = None,
    region: str | None = None,
) -> CarbonIntensity:
    """The factor to use, from the most specific setting given."""
    where = {
        "country_iso_code": country_iso_code,
        "region": region,
        "cloud_provider": cloud_provider,
        "cloud_region": cloud_region,
    }
    if carbon_intensity is not None:
        return CarbonIntensity(float(carbon_intensity), "config", **where)
    if cloud_provider and cloud_region:
        factor = cloud_regions(cloud_provider).get(cloud_region)
        if factor is not None:
            where["country_iso_code"] = country_iso_code or cloud_country(
                cloud_provider, cloud_region
            )
            return CarbonIntensity(factor, "cloud", **where)
    if country_iso_code:
        return CarbonIntensity(
            _country_factor(country_iso_code, region), "country", **where
        )
    return CarbonIntensity(world_average(), "default", **where)


def _kwh_grams(compute: object) -> float:
    from codecarbon.core.units import Energy

    one_kwh = Energy.from_energy(kWh=1.0)
    kilograms = compute(one_kwh)  # type: ignore[operator]
    return float(kilograms) * 1000.0


def _country_factor(country_iso_code: str, region: str | None) -> float:
    from codecarbon.core.emissions import Emissions
    from codecarbon.external.geography import GeoMetadata
    from codecarbon.input import DataSource

    emissions = Emissions(DataSource())
    geo = GeoMetadata(country_iso_code=country_iso_code, region=region)
    return _kwh_grams(lambda e: emissions.get_private_infra_emissions(e, geo))


@functools.lru_cache(maxsize=1)
def world_average() -> float:
    from codecarbon.input import DataSource

    value = DataSource().get_carbon_intensity_per_source_data()["world_average"]
    return float(value)


@functools.lru_cache(maxsize=1)
def countries() -> frozenset[str]:
    """ISO 3166-1 alpha-3 codes CodeCarbon has an energy mix for."""
    from codecarbon.input import DataSource

    return frozenset(DataSource().get_global_energy_mix_data())


@functools.cache
def cloud_regions(provider: str) -> dict[str, float]:
    """Region -> g CO2eq/kWh for one cloud provider, from CodeCarbon's table."""
    from codecarbon.input import DataSource

    df = DataSource().get_cloud_emissions_data()
    rows = df[df["provider"] == provider]
    return {
        str(r): float(i) for r, i in zip(rows["region"], rows["impact"], strict=True)
    }


def cloud_country(provider: str, region: str) -> str | None:
    """ISO alpha-3 country of a cloud region, from CodeCarbon's table."""
    from codecarbon.input import DataSource

    df = DataSource().get_cloud_emissions_data()
    rows = df[(df["provider"] == provider) & (df["region"] == region)]
    codes = [str(c) for c in rows["countryIsoCode"] if isinstance(c, str)]
    return codes[0] if codes else None
