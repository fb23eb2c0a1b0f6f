"""Embodied emissions: the hardware's manufacturing CO2eq, spread over its life.

The Software Carbon Intensity's M term is TE x (time reserved / expected
lifespan) x (resources reserved / total resources). This module supplies TE
and the lifespan, as one rate in g CO2eq per second of the whole machine:

- from settings: `embodied_emissions` (kg CO2eq) over `hardware_lifetime`
  (years, 4 by default);
- from a BoaviztAPI server (`boavizta_url`), asked once, off the request
  path, for a cloud instance (`cloud_provider` + `cloud_instance`, such as
  `aws` + `m5.large`) or a server archetype (`boavizta_archetype`, such as
  `platform_compute_medium`). Its answer, for the whole life of the hardware
  (`impacts.gwp.embedded.value` kg, over `verbose.hours_life_time.value`
  hours), is cached per process. A `hardware_lifetime` setting replaces
  BoaviztAPI's lifespan.

If BoaviztAPI cannot be reached, a warning is logged once and there are no
embodied figures until it answers (it is asked again every `RETRY` seconds;
an answer that says the instance or archetype is unknown is not asked again).
Nothing is ever invented.
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.parse
from dataclasses import dataclass
from typing import Any

from carbonspan import forks
from carbonspan.carbon.http import get_json
from carbonspan.carbon.refresher import Refresher
from carbonspan.numbers import checked

_log = logging.getLogger(__name__)

#: Hours in a year of 365.25 days.
HOURS_PER_YEAR = 8766.0
#: The lifespan used with `embodied_emissions` when none is given, in years.
LIFETIME = 4.0
#: Seconds one request to BoaviztAPI may take.
TIMEOUT = 10.0
#: Seconds between two attempts while BoaviztAPI cannot be reached.
RETRY = 300.0


@dataclass(frozen=True)
class Embodied:
    """The machine's embodied emissions and the life they are spread over."""

    kg: float  # TE: kg CO2eq to manufacture the machine (or the instance's share)
    lifetime_hours: float
    origin: str  # config, boavizta

    @property
    def grams_per_second(self) -> float:
        """TE spread evenly over the lifespan: g CO2eq per second."""
        return self.kg * 1000.0 / (self.lifetime_hours * 3600.0)


def from_settings(kg: float, years: float | None) -> Embodied:
    return Embodied(float(kg), (years or LIFETIME) * HOURS_PER_YEAR, "config")


class Boavizta:
    """A BoaviztAPI server, asked for one machine's embodied emissions."""

    def __init__(
        self,
        url: str,
        *,
        cloud_provider: str | None = None,
        cloud_instance: str | None = None,
        archetype: str | None = None,
        lifetime_years: float | None = None,
        timeout: float = TIMEOUT,
    ) -> None:
        if not (cloud_provider and cloud_instance) and not archetype:
            raise ValueError(
                "boavizta_url: needs cloud_provider and cloud_instance, "
                "or boavizta_archetype"
            )
        self.base_url = url.rstrip("/")
        self.cloud_provider = cloud_provider
        self.cloud_instance = cloud_instance
        self.archetype = archetype
        self.lifetime_years = lifetime_years
        self.timeout = timeout

    @property
    def url(self) -> str:
        """The query: the whole life's impacts (no `duration`), verbose."""
        if self.cloud_provider and self.cloud_instance:
            path = "/v1/cloud/instance"
            params = {
                "provider": self.cloud_provider,
                "instance_type": self.cloud_instance,
            }
        else:
            path = "/v1/server/"
            params = {"archetype": str(self.archetype)}
        params.update(criteria="gwp", verbose="true")
        return f"{self.base_url}{path}?{urllib.parse.urlencode(params)}"

    def fetch(self) -> Embodied:
        """Ask the server (once per process and query; then the cached answer)."""
        url = self.url
        with forks.locks[_CACHE_LOCK]:
            answer = _cache.get(url)
        if answer is None:
            answer = _parse(get_json(url, {}, self.timeout))
            with forks.locks[_CACHE_LOCK]:
                _cache[url] = answer
        if self.lifetime_years is not None:
            hours = self.lifetime_years * HOURS_PER_YEAR
            answer = Embodied(answer.kg, hours, answer.origin)
        return answer

    def __repr__(self) -> str:
        return f"Boavizta({self.url!r})"


def _parse(body: Any) -> Embodied:
    try:
        kg = body["impacts"]["gwp"]["embedded"]["value"]
        hours = body["verbose"]["hours_life_time"]["value"]
    except (KeyError, TypeError):
        raise ValueError(
            "BoaviztAPI's answer has no impacts.gwp.embedded.value "
            "or verbose.hours_life_time.value"
        ) from None
    kg = checked(kg, "BoaviztAPI's embedded", positive=True)
    hours = checked(hours, "BoaviztAPI's hours_life_time", positive=True)
    return Embodied(kg, hours, "boavizta")


_cache: dict[str, Embodied] = {}
_CACHE_LOCK = "embodied.cache"
forks.lock(_CACHE_LOCK)


class EmbodiedEmissions:
    """The embodied emissions, once known; fetched off the request path.

    `value` is None until known (and for good, with no server to ask).
    `poll()` is called by the sampler thread after each reading: the first
    time, and every `RETRY` seconds after a failure to reach the server, it
    asks BoaviztAPI through a `Refresher`.
    """

    def __init__(
        self,
        known: Embodied | None = None,
        boavizta: Boavizta | None = None,
        *,
        threaded: bool = True,
    ) -> None:
        self.value = known
        self.boavizta = boavizta if known is None else None
        self.failures = 0
        self.refresher = Refresher(
            self.fetch, RETRY, "carbonspan-boavizta", threaded=threaded
        )
        self.refresher.stopped = self.boavizta is None

    def poll(self, now: float) -> None:
        self.refresher.poll(now)

    def fetch(self) -> bool:
        boavizta = self.boavizta
        assert boavizta is not None
        try:
            value = boavizta.fetch()
        except Exception as exc:
            self.failures += 1
            # The server answered that it does not know this machine: asking
            # again will not help. Anything else may be a server not up yet.
            final = (
                isinstance(exc, urllib.error.HTTPError) and 400 <= exc.code < 500
            ) or isinstance(exc, ValueError)
            self.refresher.stopped = final
            if self.failures == 1 or final:
                _log.warning(
                    "carbonspan: BoaviztAPI %s failed (%s); no embodied emissions "
                    "are reported%s. Logged once.",
                    boavizta.url,
                    exc,
                    "" if final else " until it answers (asked every 5 minutes)",
                )
            return False
        self.value = value
        self.refresher.stopped = True
        _log.info(
            "carbonspan: embodied emissions from BoaviztAPI: %.6g kg CO2eq over "
            "%.6g hours (%.6g g/h)",
            value.kg,
            value.lifetime_hours,
            value.grams_per_second * 3600,
        )
        return True
