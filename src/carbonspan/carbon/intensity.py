"""Carbon intensity (g CO2eq/kWh): the factor in force (`CarbonIntensity`),
and the one settings give offline, from CodeCarbon's data (`resolve`).

Order: explicit `carbon_intensity` -> `cloud_provider` + `cloud_region` ->
`country_iso_code` (+ `region`) -> CodeCarbon's world average. The choice is
logged once, at INFO, with the reason for it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from carbonspan import codecarbon_api as cc
from carbonspan.numbers import JOULES_PER_KWH

_log = logging.getLogger(__name__)

CLOUD_PROVIDERS = ("aws", "azure", "gcp")
#: Countries for which CodeCarbon has figures per region (state, province or
#: bidding zone); elsewhere it has one figure per country.
REGIONAL_COUNTRIES = ("CAN", "CHN", "FIN", "NOR", "SWE", "USA")
_NORDIC = ("SWE", "NOR", "FIN")
# CodeCarbon's normalisation of Chinese province names (codecarbon.core.emissions).
_CHINA_SUFFIX = re.compile(
    r"\s+(autonomous region|municipality|province|sheng|shi|zizhiqu)$"
)


@dataclass(frozen=True)
class CarbonIntensity:
    """The emission factor in force and where it came from."""

    g_per_kwh: float
    #: Where it came from (`codecarbon.location.source`): config, cloud,
    #: country, default, or a provider's name.
    location_source: str
    country_iso_code: str | None = None
    region: str | None = None
    cloud_provider: str | None = None
    cloud_region: str | None = None

    def grams(self, joules: float) -> float:
        """g CO2eq emitted by `joules` of electricity."""
        return joules / JOULES_PER_KWH * self.g_per_kwh

    def explain(self) -> str:
        """One line: the factor, and which setting (or the lack of one) chose it."""
        factor = f"carbon intensity {self.g_per_kwh:.6g} g CO2eq/kWh"
        if self.location_source == "config":
            return f"{factor}, from the carbon_intensity setting"
        if self.location_source == "cloud":
            return (
                f"{factor}, CodeCarbon's figure for {self.cloud_provider} region "
                f"{self.cloud_region}"
            )
        note = ""
        if self.cloud_provider and self.cloud_region:
            note = (
                f" (CodeCarbon has no figure for {self.cloud_provider} region "
                f"{self.cloud_region})"
            )
        elif self.cloud_provider:
            note = f" (cloud_provider {self.cloud_provider} without cloud_region)"
        if self.location_source == "country":
            place = str(self.country_iso_code)
            if self.region:
                place += f" region {self.region}"
            return f"{factor}, CodeCarbon's figure for the electricity of {place}{note}"
        return (
            f"{factor}, CodeCarbon's world average: no carbon_intensity or "
            f"country_iso_code is set{note}; set country_iso_code (or "
            "carbon_intensity) for the local grid"
        )


def resolve(
    *,
    carbon_intensity: float | None = None,
    cloud_provider: str | None = None,
    cloud_region: str | None = None,
    country_iso_code: str | None = None,
    region: str | None = None,
) -> CarbonIntensity:
    """The factor to use, from the most specific setting given; logged at INFO."""
    intensity = _resolve(
        carbon_intensity=carbon_intensity,
        cloud_provider=cloud_provider,
        cloud_region=cloud_region,
        country_iso_code=country_iso_code,
        region=region,
    )
    _log.info("carbonspan: %s", intensity.explain())
    return intensity


def _resolve(
    *,
    carbon_intensity: float | None,
    cloud_provider: str | None,
    cloud_region: str | None,
    country_iso_code: str | None,
    region: str | None,
) -> CarbonIntensity:
    if region is not None:
        key = region_key(country_iso_code, region) if country_iso_code else None
        if key is None:  # settings refuse this; a direct call only gets a warning
            _log.warning(
                "carbonspan: region %r is not one CodeCarbon has a figure for in "
                "%s; it is not used",
                region,
                country_iso_code,
            )
        region = key
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
            cc.country_factor(country_iso_code, region), "country", **where
        )
    return CarbonIntensity(world_average(), "default", **where)


def regions(country_iso_code: str) -> tuple[str, ...]:
    """The regions CodeCarbon has a figure for within a country; () if none."""
    return cc.region_names(country_iso_code.upper())


def region_key(country_iso_code: str, region: str) -> str | None:
    """`region` as CodeCarbon looks it up in `country_iso_code`, or None if unknown."""
    country = country_iso_code.upper()
    if country in _NORDIC:
        key = region.strip().upper()
    elif country == "CHN":
        key = _CHINA_SUFFIX.sub("", " ".join(region.lower().split()))
    else:
        key = region.strip().lower()
    return key if key in regions(country) else None


world_average = cc.world_average
countries = cc.countries


def cloud_regions(provider: str) -> dict[str, float]:
    """Region -> g CO2eq/kWh for one cloud provider, from CodeCarbon's table."""
    return {region: factor for region, factor, _ in cc.cloud_table(provider)}


def cloud_country(provider: str, region: str) -> str | None:
    """ISO alpha-3 country of a cloud region, from CodeCarbon's table."""
    return next((c for r, _, c in cc.cloud_table(provider) if r == region), None)
