"""What one instrumentation holds: its sampler lease, factor, metrics, excludes."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

from opentelemetry import metrics, trace
from opentelemetry.util.http import get_excluded_urls

from carbonspan import cputime, embodied, emissions, intensity, sampler, sci
from carbonspan.attributes import SpanAttributes, header_writer
from carbonspan.codecarbon_source import CodeCarbonPowerSource
from carbonspan.config import Settings
from carbonspan.metrics import metrics_for
from carbonspan.source import COMPONENTS, EnergyTotals, PowerSource
from carbonspan.throttle import Throttle
from carbonspan.types import Scope

_log = logging.getLogger(__name__)


class Runtime:
    """Everything the middleware needs, built once from validated settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.grid = intensity.Grid(
            settings.offline_intensity(),
            _provider(settings),
            settings.intensity_refresh,
        )
        source = settings.power_source
        interval, policy = settings.sample_interval, settings.attribution
        if source is None:
            scope = settings.scope
            self.sampler = sampler.lease(
                ("codecarbon", scope, interval, policy),
                lambda: sampler.PowerSampler(
                    CodeCarbonPowerSource(scope), interval, policy
                ),
            )
        else:
            src: PowerSource = source
            self.sampler = sampler.lease(
                (id(src), interval, policy),
                lambda: sampler.PowerSampler(src, interval, policy),
            )
        self.ledger = self.sampler.ledger
        # Whether the policy needs each request's CPU clock.
        self.timed = self.ledger.policy.timed
        if self.timed:
            cputime.patch()
        share = getattr(self.sampler.source, "reserved_share", None)
        self.books = sci.Books(
            self.ledger,
            self.grid,
            _embodied(settings),
            share if callable(share) else None,
        )
        self.sampler.on_tick.append(self.books.tick)
        self.metrics = metrics_for(settings.meter_provider)
        self.metrics.add(self.ledger, self.books, settings.long_request)
        self.sampler.after_tick.append(self.metrics.drain)
        self.excluded = _exclusion(settings)
        books = self.books
        self.headers = header_writer(
            settings.response_headers, settings.response_headers_format, books
        )
        self.hook = settings.measurement_hook
        self.active = True
        self.span_attributes = SpanAttributes(
            self.grid, books, self.sampler, settings.scope, settings.attribution
        ).for_span
        self._throttle = Throttle()

    @property
    def intensity(self) -> emissions.CarbonIntensity:
        """The carbon intensity in force."""
        return self.books.factors.intensity

    def energy_totals(self) -> EnergyTotals | None:
        """The ledger's books (see `EnergyTotals`); None before a reading."""
        ledger = self.ledger
        if ledger.first_reading is None:
            return None
        totals, in_flight = ledger.totals(), ledger.in_flight

        def by_name(values: tuple[float, ...]) -> dict[str, float]:
            return {
                c: v
                for c, v, k in zip(COMPONENTS, values, totals.known, strict=True)
                if k
            }

        return EnergyTotals(
            measured=by_name(totals.measured),
            attributed=by_name(totals.attributed),
            unattributed=by_name(totals.unattributed),
            open=by_name(totals.open),
            power=by_name(totals.power),
            in_flight=in_flight,
        )

    def report(self, exc: BaseException, what: str = "measuring a request") -> None:
        """Log a failure on the request path: once, then at most once a minute."""
        if self._throttle.allow(what):
            _log.warning("carbonspan: %s failed", what, exc_info=exc)

    def flush(self, timeout_millis: int = 5000) -> None:
        """At server shutdown: a last reading, then flush spans and metrics.

        uvicorn re-raises SIGTERM once it has shut down, so the SDK's atexit
        flush never runs; without this, what a BatchSpanProcessor or a
        periodic metric reader still holds would be lost.
        """
        self.sampler.sample()
        self.metrics.drain()
        providers: tuple[object, ...] = (
            self.settings.meter_provider or metrics.get_meter_provider(),
            self.settings.tracer_provider or trace.get_tracer_provider(),
        )
        for provider in providers:
            force_flush = getattr(provider, "force_flush", None)
            if force_flush is not None:
                try:
                    force_flush(timeout_millis)
                except Exception as exc:
                    self.report(exc, "flushing telemetry at shutdown")

    def close(self) -> None:
        if self.active:
            self.active = False
            with contextlib.suppress(ValueError):
                self.sampler.after_tick.remove(self.metrics.drain)
            with contextlib.suppress(ValueError):
                self.sampler.on_tick.remove(self.books.tick)
            self.metrics.drain()  # what this instrumentation's requests queued
            self.metrics.remove(self.ledger)
            sampler.release(self.sampler)
            if self.timed:
                cputime.unpatch()


def _exclusion(settings: Settings) -> Callable[[Scope], bool] | None:
    """Which requests get no attributes or metrics (they still hold a window).

    `excluded_urls` (or `CARBONSPAN_EXCLUDED_URLS`) is searched in the path.
    Without it, `OTEL_PYTHON_FASTAPI_EXCLUDED_URLS` or
    `OTEL_PYTHON_EXCLUDED_URLS` are honoured as the FastAPI instrumentation
    does: searched in the full URL.
    """
    pattern = settings.excluded_urls
    if pattern is not None:
        search = pattern.search
        return lambda scope: search(scope.get("path", "")) is not None
    otel = get_excluded_urls("FASTAPI")
    if otel is None or not getattr(otel, "_excluded_urls", True):
        return None  # no OTEL_PYTHON_*_EXCLUDED_URLS: nothing to check per request
    return lambda scope: otel.url_disabled(_url(scope))


def _url(scope: Scope) -> str:
    scheme = scope.get("scheme", "http")
    host, port = scope.get("server") or ("localhost", None)
    netloc = f"{host}:{port}" if port is not None else str(host)
    return f"{scheme}://{netloc}{scope.get('root_path', '')}{scope.get('path', '')}"


def _provider(settings: Settings) -> intensity.IntensityProvider | None:
    """The provider that refreshes the intensity; None: the offline factor."""
    chosen = settings.intensity_provider
    if chosen == "static":
        return None
    if chosen == "electricitymaps":
        return intensity.ElectricityMapsIntensity(
            str(settings.electricitymaps_zone),
            str(settings.electricitymaps_token),
            base_url=settings.electricitymaps_url,
        )
    assert not isinstance(chosen, str)
    return chosen


def _embodied(settings: Settings) -> embodied.EmbodiedSource:
    """Where TE comes from: the settings, BoaviztAPI, or nowhere."""
    if settings.embodied_emissions is not None:
        known = embodied.from_settings(
            settings.embodied_emissions, settings.hardware_lifetime
        )
        return embodied.EmbodiedSource(known)
    if settings.boavizta_url:
        server = embodied.Boavizta(
            settings.boavizta_url,
            cloud_provider=settings.cloud_provider,
            cloud_instance=settings.cloud_instance,
            archetype=settings.boavizta_archetype,
            lifetime_years=settings.hardware_lifetime,
        )
        return embodied.EmbodiedSource(boavizta=server)
    return embodied.EmbodiedSource()
