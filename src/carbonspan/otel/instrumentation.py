"""What one instrumentation holds, built once from its settings: the sampler
it leases, the ledger and policy, the emissions accounts, the metrics, and
the `Reporter` the middleware hands each request to."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from opentelemetry import metrics, trace
from opentelemetry.util.http import get_excluded_urls

from carbonspan.attribution import cpu_clock
from carbonspan.attribution.ledger import Ledger
from carbonspan.attribution.policies import POLICIES
from carbonspan.attribution.totals import EnergyTotals
from carbonspan.carbon import embodied
from carbonspan.carbon.accounts import EmissionsAccounts
from carbonspan.carbon.grid import (
    ElectricityMapsIntensity,
    GridIntensity,
    IntensityProvider,
)
from carbonspan.carbon.intensity import CarbonIntensity
from carbonspan.config import Settings
from carbonspan.otel import clients
from carbonspan.otel.headers import header_writer
from carbonspan.otel.metrics import metrics_for
from carbonspan.otel.reporter import Reporter
from carbonspan.otel.span import SpanAttributes
from carbonspan.power import sampler
from carbonspan.power.codecarbon import CodeCarbonPowerSource
from carbonspan.power.source import COMPONENTS
from carbonspan.types import Scope


class Instrumentation:
    """Everything the middleware needs, built once from validated settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.grid = GridIntensity(
            settings.offline_intensity(),
            _provider(settings),
            settings.intensity_refresh,
        )
        source = settings.power_source
        interval, policy = settings.sample_interval, settings.attribution
        key: tuple[object, ...] = (id(source), interval, policy)
        if source is None:
            key = ("codecarbon", settings.scope, interval, policy)

        def new_sampler() -> sampler.PowerSampler:
            src = (
                source if source is not None else CodeCarbonPowerSource(settings.scope)
            )
            return sampler.PowerSampler(src, interval, Ledger(POLICIES[policy]()))

        self.sampler = sampler.lease(key, new_sampler)
        self.ledger = self.sampler.ledger
        # Whether the policy needs each request's CPU clock.
        self.timed = self.ledger.policy.timed
        if self.timed:
            cpu_clock.patch()
        self.accounts = EmissionsAccounts(self.ledger, self.grid, _embodied(settings))
        self.sampler.on_tick.append(self.accounts.tick)
        self.metrics = metrics_for(settings.meter_provider)
        self.metrics.add(
            self.ledger,
            self.accounts,
            settings.long_request,
            settings.scope,
            settings.max_tenants,
        )
        self.sampler.after_tick.append(self.metrics.drain)
        #: The baggage entry that names a request's tenant, if any.
        self.tenant_baggage = settings.tenant_baggage
        #: Whether requests read what their outgoing calls report.
        self.downstream = settings.downstream_energy
        if self.downstream:
            clients.install()
        self.excluded = _exclusion(settings)
        self.reporter = Reporter(
            self.ledger,
            self.accounts,
            SpanAttributes(self.grid, self.sampler, settings.scope, policy),
            self.metrics.queue,
            header_writer(settings.response_headers, settings.response_headers_format),
            settings.measurement_hook,
        )
        self.active = True

    @property
    def intensity(self) -> CarbonIntensity:
        """The carbon intensity in force."""
        return self.accounts.factors.intensity

    def energy_totals(self) -> EnergyTotals | None:
        """The ledger's books (see `EnergyTotals`); None before a reading."""
        ledger = self.ledger
        if ledger.first_time is None:
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
                    self.reporter.failed(exc, "flushing telemetry at shutdown")

    def close(self) -> None:
        if self.active:
            self.active = False
            with contextlib.suppress(ValueError):
                self.sampler.after_tick.remove(self.metrics.drain)
            with contextlib.suppress(ValueError):
                self.sampler.on_tick.remove(self.accounts.tick)
            self.metrics.drain()  # what this instrumentation's requests queued
            self.metrics.remove(self.ledger)
            sampler.release(self.sampler)
            if self.timed:
                cpu_clock.unpatch()
            if self.downstream:
                clients.uninstall()


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


def _provider(settings: Settings) -> IntensityProvider | None:
    """The provider that refreshes the intensity; None: the offline factor."""
    chosen = settings.intensity_provider
    if chosen == "static":
        return None
    if chosen == "electricitymaps":
        return ElectricityMapsIntensity(
            str(settings.electricitymaps_zone),
            str(settings.electricitymaps_token),
            base_url=settings.electricitymaps_url,
        )
    assert not isinstance(chosen, str)
    return chosen


def _embodied(settings: Settings) -> embodied.EmbodiedEmissions:
    """Where TE comes from: the settings, BoaviztAPI, or nowhere."""
    if settings.embodied_emissions is not None:
        known = embodied.from_settings(
            settings.embodied_emissions, settings.hardware_lifetime
        )
        return embodied.EmbodiedEmissions(known)
    if settings.boavizta_url:
        server = embodied.Boavizta(
            settings.boavizta_url,
            cloud_provider=settings.cloud_provider,
            cloud_instance=settings.cloud_instance,
            archetype=settings.boavizta_archetype,
            lifetime_years=settings.hardware_lifetime,
        )
        return embodied.EmbodiedEmissions(boavizta=server)
    return embodied.EmbodiedEmissions()
