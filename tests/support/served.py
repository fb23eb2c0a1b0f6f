"""What the apps served by real servers share (they import this in their own
process): the constant source they are measured with, and their books."""

from __future__ import annotations

from typing import Any

from carbonspan import CodeCarbonInstrumentor
from carbonspan.otel.instrumentation import Instrumentation
from carbonspan.testing import ConstantPowerSource
from support.fakes import Recorded

#: The watts of the served apps' power source.
CPU_W, RAM_W = 10.0, 2.0


def measured(app: Any, meter_provider: Any) -> Recorded:
    """Instrument `app`: CPU_W and RAM_W read every 50 ms, France's grid;
    the source returned keeps its readings."""
    source = Recorded(ConstantPowerSource(cpu=CPU_W, ram=RAM_W))
    CodeCarbonInstrumentor().instrument_app(
        app,
        power_source=source,
        meter_provider=meter_provider,
        sample_interval=0.05,
        country_iso_code="FRA",
    )
    return source


def drawn(inst: Instrumentation, source: Recorded) -> dict[str, float]:
    """J per component between the ledger's first and last readings, by the
    source's own counts."""
    since, until = inst.ledger.first_time, inst.ledger.last_time
    return {c: source.joules(c, since, until) for c in ("cpu", "ram")}
