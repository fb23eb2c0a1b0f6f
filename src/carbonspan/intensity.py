"""Carbon intensity that follows the grid: providers, and the value in force.

A provider answers one question, "what is the grid's intensity now?", in
g CO2eq/kWh (`IntensityProvider.current()`), in the spirit of Zeus's
`CarbonIntensityProvider`. One is built in, `ElectricityMapsIntensity`: the
latest intensity of an Electricity Maps zone (`GET
/carbon-intensity/latest?zone=...` with an `auth-token` header). Without a
provider (`intensity_provider="static"`, the default) the factor
`carbonspan.emissions.resolve` finds offline stays in force, and nothing is
asked of the network.

`Grid` keeps the value in force. A provider is never called on the request
path: the sampler thread asks it every `intensity_refresh` seconds (15 minutes
by default), in a short-lived worker thread so that a slow answer never
delays a reading, and the answer takes effect at the next tick (see
`carbonspan.sci.Books`). When a refresh fails, the last good value stays in
force and a warning is logged (the first time, then at most once a minute).
Until a provider's first answer, the offline factor is in force, labelled with
its own source.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import urllib.parse
import urllib.request
from typing import Protocol, runtime_checkable

from carbonspan import forks
from carbonspan.emissions import CarbonIntensity
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
    """Anything that can tell the grid's carbon intensity now."""

    def current(self) -> float:
        """g CO2eq/kWh now. Raise when it cannot be known."""
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
        request = urllib.request.Request(
            self.url, headers={"auth-token": self._token, "accept": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as reply:
            body = json.loads(reply.read().decode("utf-8"))
        value = body.get("carbonIntensity") if isinstance(body, dict) else None
        if (
            not isinstance(value, (int, float))
            or isinstance(value, bool)
            or not math.isfinite(value)
            or value < 0
        ):
            raise ValueError(
                f"Electricity Maps gave no carbon intensity for zone {self.zone!r}: "
                f"carbonIntensity={value!r}"
            )
        return float(value)

    def __repr__(self) -> str:  # never the token
        return (
            f"ElectricityMapsIntensity(zone={self.zone!r}, base_url={self.base_url!r})"
        )


def provider_name(provider: object) -> str:
    """The `codecarbon.location.source` of a provider's figures."""
    name = getattr(provider, "name", None)
    return name if isinstance(name, str) and name else "provider"


class Grid:
    """The carbon intensity in force, and the provider that refreshes it.

    `current` is the value in force. It only changes when `take()` is
    called, which the books do at a tick (requests read it from the books'
    factors); `poll()` asks the provider when a refresh is due, from the
    sampler thread.
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
        self.refresh = refresh
        self.threaded = threaded
        self.current = fallback
        self.dynamic = provider is not None
        self.source = provider_name(provider) if self.dynamic else fallback.source
        self.failures = 0  # refreshes that failed
        self._pending: CarbonIntensity | None = None
        self._due: float | None = None  # when the next refresh is due
        self._busy = False  # a refresh is under way
        self._lock = threading.Lock()
        self._throttle = Throttle()
        forks.track(self, forks.SOURCES)

    def poll(self, now: float) -> None:
        """From the sampler thread: ask the provider if a refresh is due."""
        if not self.dynamic:
            return
        with self._lock:
            if self._busy or (self._due is not None and now < self._due):
                return
            self._busy = True
            self._due = now + self.refresh
        if self.threaded:
            threading.Thread(
                target=self.fetch, name="carbonspan-intensity", daemon=True
            ).start()
        else:
            self.fetch()

    def fetch(self) -> bool:
        """Ask the provider once; the answer waits for the next tick."""
        provider = self.provider
        assert provider is not None
        try:
            value = float(provider.current())
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"not a carbon intensity: {value!r}")
        except Exception as exc:
            self._failed(exc)
            return False
        finally:
            with self._lock:
                self._busy = False
        fallback = self.fallback
        answer = CarbonIntensity(
            value,
            self.source,
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
            current.source,
        )

    def _after_fork_in_child(self) -> None:
        # A refresh under way in the parent's thread did not survive the fork.
        self._lock = threading.Lock()
        self._busy = False
        self._due = None
        self._throttle = Throttle()
