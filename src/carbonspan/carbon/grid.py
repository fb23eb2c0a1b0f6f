"""Carbon intensity that follows the grid: providers, and the value in force.

A provider answers one question, "what is the grid's intensity now?", in
g CO2eq/kWh (`IntensityProvider.current()`), in the spirit of Zeus's
`CarbonIntensityProvider`. One is built in, `ElectricityMapsIntensity`: the
latest intensity of an Electricity Maps zone (`GET
/carbon-intensity/latest?zone=...` with an `auth-token` header). Without a
provider (`intensity_provider="static"`, the default) the factor
`carbonspan.carbon.intensity.resolve` finds offline stays in force, and nothing is
asked of the network.

`GridIntensity` keeps the value in force. A provider is never called on the
request path: the sampler thread asks it every `intensity_refresh` seconds
(15 minutes by default) through a `carbonspan.carbon.refresher.Refresher`,
and the answer takes effect at the next tick (see
`carbonspan.carbon.accounts.EmissionsAccounts`). When a refresh fails, the
last good value stays in force and a warning is logged (the first time,
then at most once a minute).
Until a provider's first answer, the offline factor is in force, labelled with
its own source.
"""

from __future__ import annotations

import logging
import threading
import urllib.parse
from typing import Protocol, runtime_checkable

from carbonspan import forks
from carbonspan.carbon.http import get_json
from carbonspan.carbon.intensity import CarbonIntensity
from carbonspan.carbon.refresher import Refresher
from carbonspan.numbers import checked
from carbonspan.throttle import Throttle

_log = logging.getLogger(__name__)

#: Seconds between two refreshes of a provider, by default: 15 minutes.
REFRESH = 900.0
#: Electricity Maps' API (v3). The `electricitymaps_url` setting overrides it.
ELECTRICITYMAPS_URL = "https://api.electricitymaps.com/v3"
#: The environment variable that holds the Electricity Maps token.
TOKEN_ENV = "CARBONSPAN_ELECTRICITYMAPS_TOKEN"
#: Seconds one request to a provider may take.
TIMEOUT = 10.0


@runtime_checkable
class IntensityProvider(Protocol):
    """Anything that can tell the grid's carbon intensity now.

    An optional `name` attribute (a string) labels its figures'
    `codecarbon.location.source`; without one they say ``provider``.
    """

    def current(self) -> float:
        """The grid's carbon intensity now, in g CO2eq/kWh (a finite number
        >= 0). Raise when it cannot be known: the last good value stays in
        force. Called from a carbonspan thread, never on a request."""
        ...


class ElectricityMapsIntensity:
    """The latest carbon intensity of one Electricity Maps zone.

    `GET {base_url}/carbon-intensity/latest?zone={zone}` with the header
    `auth-token: {token}`; the answer's `carbonIntensity` (g CO2eq/kWh, life
    cycle by default) is the value. Anything else (an HTTP error, no number,
    a timeout) raises, and the caller keeps its last good value.
    """

    name = "electricitymaps"

    def __init__(
        self,
        zone: str,
        token: str,
        *,
        base_url: str = ELECTRICITYMAPS_URL,
        timeout: float = TIMEOUT,
    ) -> None:
        self.zone = zone
        self._token = token
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    @property
    def url(self) -> str:
        query = urllib.parse.urlencode({"zone": self.zone})
        return f"{self.base_url}/carbon-intensity/latest?{query}"

    def current(self) -> float:
        body = get_json(self.url, {"auth-token": self._token}, self.timeout)
        value = body.get("carbonIntensity") if isinstance(body, dict) else None
        what = f"Electricity Maps' carbonIntensity for zone {self.zone!r}"
        return checked(value, what)

    def __repr__(self) -> str:  # never the token
        return (
            f"ElectricityMapsIntensity(zone={self.zone!r}, base_url={self.base_url!r})"
        )


def provider_name(provider: object) -> str:
    """The `codecarbon.location.source` of a provider's figures."""
    name = getattr(provider, "name", None)
    return name if isinstance(name, str) and name else "provider"


class GridIntensity:
    """The carbon intensity in force, and the provider that refreshes it.

    `current` is the value in force. It only changes when `take()` is
    called, which the emissions accounts do at a tick (requests read it from
    their factors); `poll()` asks the provider when a refresh is due, from
    the sampler thread.
    """

    def __init__(
        self,
        fallback: CarbonIntensity,
        provider: IntensityProvider | None = None,
        refresh: float = REFRESH,
        *,
        threaded: bool = True,
    ) -> None:
        self.fallback = fallback
        self.provider = provider
        self.current = fallback
        self.failures = 0  # refreshes that failed
        self._pending: CarbonIntensity | None = None
        self._lock = threading.Lock()
        self._throttle = Throttle()
        self.refresher = Refresher(
            self.fetch, refresh, "carbonspan-intensity", threaded=threaded
        )
        self.refresher.stopped = provider is None
        forks.track(self, forks.SOURCES)

    @property
    def dynamic(self) -> bool:
        """Whether a provider refreshes the intensity (each span carries its own)."""
        return self.provider is not None

    def poll(self, now: float) -> None:
        """From the sampler thread: ask the provider if a refresh is due."""
        self.refresher.poll(now)

    def fetch(self) -> bool:
        """Ask the provider once; the answer waits for the next tick."""
        provider = self.provider
        assert provider is not None
        try:
            value = checked(provider.current(), "the carbon intensity")
        except Exception as exc:
            self._failed(exc)
            return False
        fallback = self.fallback
        answer = CarbonIntensity(
            value,
            provider_name(provider),
            fallback.country_iso_code,
            fallback.region,
            fallback.cloud_provider,
            fallback.cloud_region,
        )
        with self._lock:
            self._pending = answer
        return True

    def take(self) -> CarbonIntensity | None:
        """The answer received since the last call, if any (at a tick)."""
        with self._lock:
            pending, self._pending = self._pending, None
            if pending is not None:
                self.current = pending
        return pending

    def _failed(self, exc: BaseException) -> None:
        self.failures += 1
        if not self._throttle.allow("provider"):
            return
        current = self._pending or self.current  # the last good value
        _log.warning(
            "carbonspan: carbon intensity provider %r failed (%s; %d so far); "
            "%.6g g/kWh (%s) stays in force until it answers. "
            "Logged at most once a minute.",
            self.provider,
            exc,
            self.failures,
            current.g_per_kwh,
            current.location_source,
        )

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._throttle = Throttle()  # the child logs its own failures
