"""What one instrumentation holds: its sampler lease, factor, metrics, excludes."""

from __future__ import annotations

import logging
import time
from typing import Any

from carbonspan import emissions, sampler
from carbonspan.attributes import span_attributes, static_attributes
from carbonspan.config import Settings
from carbonspan.ledger import Measurement
from carbonspan.metrics import Metrics
from carbonspan.source import CodeCarbonPowerSource, PowerSource

_log = logging.getLogger(__name__)


class Runtime:
    """Everything the middleware needs, built once from validated settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.intensity = emissions.resolve(
            carbon_intensity=settings.carbon_intensity,
            cloud_provider=settings.cloud_provider,
            cloud_region=settings.cloud_region,
            country_iso_code=settings.country_iso_code,
            region=settings.region,
        )
        source = settings.power_source
        interval = settings.sample_interval
        if source is None:
            scope = settings.scope
            self.sampler = sampler.lease(
                ("codecarbon", scope, interval),
                lambda: sampler.Sampler(CodeCarbonPowerSource(scope), interval),
            )
        else:
            src: PowerSource = source
            self.sampler = sampler.lease(
                (id(src), interval), lambda: sampler.Sampler(src, interval)
            )
        self.ledger = self.sampler.ledger
        self.metrics = Metrics(self.ledger, self.intensity, settings.meter_provider)
        pattern = settings.excluded_urls
        self.excluded = pattern.search if pattern is not None else None
        self.active = True
        self._static: dict[str, Any] | None = None
        self._last_error_log = -sampler.LOG_EVERY

    def span_attributes(self, measurement: Measurement) -> dict[str, Any] | None:
        static = self._static
        if static is None:
            info = self.sampler.info
            static = static_attributes(
                self.intensity, info, self.settings.scope, self.settings.attribution
            )
            if info.measurement:  # hardware known: freeze the static part
                self._static = static
        return span_attributes(measurement, self.intensity, static)

    def report(self, exc: BaseException) -> None:
        """Log a failure on the request path, at most once a minute."""
        now = time.monotonic()
        if now - self._last_error_log >= sampler.LOG_EVERY:
            self._last_error_log = now
            _log.warning("carbonspan: measuring a request failed", exc_info=exc)

    def close(self) -> None:
        if self.active:
            self.active = False
            sampler.release(self.sampler)
