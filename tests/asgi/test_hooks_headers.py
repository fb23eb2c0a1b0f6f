"""measurement_hook, response headers, and the OTel excluded-URL variables."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from carbonspan import Measurement
from carbonspan.otel import attributes as a
from carbonspan.testing import ConstantPowerSource
from support.apps import build_app
from support.asgi import get
from support.otel import Instrumented, Otel, attrs, ready_app


def test_hook_sees_the_measurement_before_the_span_ends(
    otel: Otel, instrument: Instrumented
) -> None:
    seen: list[tuple[bool, str, Measurement]] = []

    def hook(span: Any, scope: Any, measurement: Measurement) -> None:
        seen.append((span.is_recording(), scope["path"], measurement))
        span.set_attribute("app.energy_mj", (measurement.total or 0) * 1000)

    app, _ = ready_app(
        instrument, otel, power_source=ConstantPowerSource(cpu=8.0),
        measurement_hook=hook, sample_interval=0.02,
    )  # fmt: skip
    assert get(app, "/sleep?seconds=0.05").status_code == 200
    ((recording, path, measurement),) = seen
    assert recording and path == "/sleep"
    (span,) = otel.server_spans()
    assert span.attributes is not None
    assert span.attributes["app.energy_mj"] == pytest.approx(measurement.total * 1000)
    assert attrs(span)[a.ENERGY_TOTAL] == pytest.approx(measurement.total)


def test_a_failing_hook_is_logged_and_the_request_goes_on(
    otel: Otel, instrument: Instrumented, caplog: pytest.LogCaptureFixture
) -> None:
    def hook(span: Any, scope: Any, measurement: Measurement) -> None:
        raise ZeroDivisionError("user bug")

    app = build_app()
    instrument(
        app, otel, power_source=ConstantPowerSource(cpu=1.0), measurement_hook=hook
    )
    with caplog.at_level(logging.WARNING, logger="carbonspan.otel.reporter"):
        codes = [get(app, "/fast").status_code for _ in range(3)]
    assert codes == [200, 200, 200]
    assert len(otel.server_spans()) == 3
    assert caplog.text.count("measurement_hook failed") == 1  # rate-limited


def test_headers_are_off_by_default(otel: Otel, instrument: Instrumented) -> None:
    app = build_app()
    instrument(app, otel, power_source=ConstantPowerSource(cpu=1.0))
    response = get(app, "/fast")
    assert not [h for h in response.headers if "codecarbon" in h]
    assert "server-timing" not in response.headers


def test_x_codecarbon_headers(otel: Otel, instrument: Instrumented) -> None:
    app, _ = ready_app(
        instrument, otel, power_source=ConstantPowerSource(cpu=100.0),
        response_headers=True, carbon_intensity=100.0, sample_interval=0.02,
    )  # fmt: skip
    response = get(app, "/sleep?seconds=0.1")
    energy = float(response.headers["x-codecarbon-energy"])
    # The response starts after the 0.1 s sleep at 100 W: about 10 J so far.
    assert 10.0 * 0.9 <= energy <= 10.0 * 2
    emissions = float(response.headers["x-codecarbon-emissions"])
    assert emissions == pytest.approx(energy / 3.6e6 * 100.0, rel=1e-4)
    assert float(response.headers["x-codecarbon-duration"]) >= 100.0
    (span,) = otel.server_spans()
    assert attrs(span)[a.ENERGY_TOTAL] >= energy * 0.999


def test_server_timing_with_chosen_fields(otel: Otel, instrument: Instrumented) -> None:
    app, _ = ready_app(
        instrument, otel, power_source=ConstantPowerSource(cpu=10.0),
        response_headers=["energy", "duration"],
        response_headers_format="server-timing", sample_interval=0.02,
    )  # fmt: skip
    response = get(app, "/sleep?seconds=0.05")
    assert "x-codecarbon-energy" not in response.headers
    timing = response.headers["server-timing"]
    entries = dict(e.strip().split(";", 1) for e in timing.split(","))
    assert set(entries) == {"codecarbon-energy", "codecarbon-duration"}
    assert 'desc="mJ"' in entries["codecarbon-energy"]
    millijoules = float(entries["codecarbon-energy"].split("dur=")[1].split(";")[0])
    assert millijoules >= 0.05 * 10.0 * 1000 * 0.9


@pytest.mark.parametrize(
    ("variable", "value", "settings", "paths"),
    [
        # The FastAPI instrumentation's own variable is honoured...
        ("OTEL_PYTHON_FASTAPI_EXCLUDED_URLS", "health,items/\\d+", {},
         ("/health", "/items/3", "/fast")),
        # ... and carbonspan's setting wins over the generic one.
        ("OTEL_PYTHON_EXCLUDED_URLS", "fast", {"excluded_urls": "^/health$"},
         ("/health", "/fast")),
    ],
    ids=["otel-env-honoured", "carbonspan-setting-wins"],
)  # fmt: skip
def test_excluded_urls_from_the_otel_env_or_the_setting(
    variable: str,
    value: str,
    settings: dict[str, str],
    paths: tuple[str, ...],
    otel: Otel,
    instrument: Instrumented,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(variable, value)
    app, _ = ready_app(
        instrument, otel, contrib=None, power_source=ConstantPowerSource(cpu=1.0),
        sample_interval=0.02, **settings,
    )  # fmt: skip
    for path in paths:
        assert get(app, path).status_code == 200
    assert otel.routes() == ["/fast"]


def test_an_async_hook_is_refused_at_instrument_time() -> None:
    from carbonspan import CodeCarbonInstrumentor

    async def hook(span: Any, scope: Any, measurement: Measurement) -> None:
        pass

    with pytest.raises(ValueError, match="measurement_hook: expected a plain"):
        CodeCarbonInstrumentor().instrument_app(build_app(), measurement_hook=hook)
