"""CodeCarbonPowerSource: real CPU and RAM models, NVML faked at the pynvml edge;
and what requests see when hardware detection fails (hardening item 2)."""

from __future__ import annotations

import logging
import socket
from typing import Any

import psutil
import pytest

from carbonspan import CodeCarbonPowerSource, PowerSource
from carbonspan.otel import attributes as a
from carbonspan.testing import ConstantPowerSource, ScriptedPowerSource
from support.apps import build_app, burn
from support.asgi import fetch
from support.checks import assert_no_open_window, assert_sane, carbonspan_warnings
from support.fakes import FakeNvml, install_nvml
from support.otel import Instrumented, Otel, attrs, wait_ready


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    return install_nvml(monkeypatch, FakeNvml())


def test_gpu_energy_counter_scaled_by_the_process_share(nvml: FakeNvml) -> None:
    source = CodeCarbonPowerSource("process")
    first = source.read()
    assert first.gpu == 0.0
    info = source.describe()
    assert info.gpu_model == "NVIDIA H100 80GB HBM3"
    assert info.gpu_count == 2
    assert info.measurement["gpu"] == "nvml"
    second = source.read()
    # Two devices, 5 J each, this process has 30 of the 40 SM-utilisation points.
    assert second.gpu == pytest.approx(2 * 5.0 * 0.75)


def test_gpu_machine_scope_takes_the_whole_device(nvml: FakeNvml) -> None:
    source = CodeCarbonPowerSource("machine")
    source.read()
    assert source.read().gpu == pytest.approx(10.0)


def test_gpu_falls_back_on_power_and_memory_share(nvml: FakeNvml) -> None:
    nvml.energy_counter = False
    nvml.per_process = False
    source = CodeCarbonPowerSource("process")
    first = source.read()
    reading = source.read()
    assert first.gpu == 0.0 and reading.gpu is not None
    # 100 W on each of 2 devices, over the interval between the two readings,
    # for this process's quarter of the GPU memory.
    elapsed = reading.time - first.time
    assert elapsed > 0
    assert reading.gpu == pytest.approx(2 * 100.0 * elapsed * 0.25, rel=1e-9)


def test_broken_nvml_leaves_gpu_unmeasured(monkeypatch: pytest.MonkeyPatch) -> None:
    install_nvml(monkeypatch, FakeNvml(init_error="driver/library version mismatch"))
    source = CodeCarbonPowerSource()
    assert source.read().gpu is None
    assert "gpu" not in source.describe().measurement
    assert source.read().cpu is not None


def test_no_network_is_touched(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        raise OSError("network is off in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    source = CodeCarbonPowerSource()
    source.read()
    source.read()
    assert calls == []


def test_process_scope_is_a_share_of_the_machine() -> None:
    process = CodeCarbonPowerSource("process")
    machine = CodeCarbonPowerSource("machine")
    for s in (process, machine):
        s.read()
    burn(0.3)
    p, m = process.read(), machine.read()
    assert p.cpu is not None and m.cpu is not None and p.ram is not None
    assert m.ram is not None
    # Each source's load model samples /proc/stat at its own instants, so the
    # two windows differ by the microseconds between the reads: allow 25%.
    assert 0 < p.cpu <= m.cpu * 1.25
    assert 0 < p.ram < m.ram
    info = process.describe()
    assert info.measurement["cpu"] in ("rapl", "cpu_load", "tdp")
    assert info.measurement["ram"] == "model"


def test_bad_scope_is_refused() -> None:
    with pytest.raises(ValueError, match="scope"):
        CodeCarbonPowerSource("galaxy")  # type: ignore[arg-type]


def test_testing_sources_follow_the_protocol_exactly() -> None:
    now = [0.0]
    constant = ConstantPowerSource(cpu=4.0, gpu=None, ram=1.5, clock=lambda: now[0])
    assert isinstance(constant, PowerSource)
    now[0] = 2.0
    r = constant.read()
    assert (r.cpu, r.gpu, r.ram) == (8.0, None, 3.0)
    assert constant.describe().measurement == {"cpu": "fake", "ram": "fake"}
    ramp = ScriptedPowerSource(cpu=lambda t: 10.0 * t, clock=lambda: now[0])
    now[0] = 4.0
    # Watts are a function of the seconds since creation: integral of 10 t dt
    # over the 2 s since then is 5 * 2**2 = 20 J.
    assert ramp.read().cpu == pytest.approx(20.0)


# -- hardware detection ----------------------------------------------------


def boom(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("detection exploded")


def codecarbon_cpu_raises(mp: pytest.MonkeyPatch) -> None:
    from codecarbon.core import cpu as cc_cpu
    from codecarbon.external import hardware

    mp.setattr(cc_cpu, "is_rapl_available", boom)
    mp.setattr(hardware.CPU, "from_utils", boom)


def psutil_cpu_count_missing(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(psutil, "cpu_count", lambda *args, **kwargs: None)


def psutil_cpu_times_missing(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(psutil, "cpu_times", boom)


def psutil_memory_missing(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(psutil, "virtual_memory", boom)


DETECTION = {
    # name: (break it, codecarbon.measurement.cpu expected, CPU constant?)
    "codecarbon-cpu-raises": (codecarbon_cpu_raises, "tdp", True),
    # CodeCarbon cannot count the CPUs: carbonspan counts them itself (the
    # fallback in carbonspan.codecarbon_api), and the load model goes on.
    "psutil-no-cpu-count": (psutil_cpu_count_missing, "cpu_load", False),
    "psutil-no-cpu-times": (psutil_cpu_times_missing, "tdp", True),
    # The process's memory share cannot be read: RAM counts 0 J, CPU goes on.
    "psutil-no-memory": (psutil_memory_missing, "cpu_load", False),
}


@pytest.mark.parametrize("name", list(DETECTION))
def test_failed_hardware_detection_falls_back_and_says_so(
    name: str,
    otel: Otel,
    instrument: Instrumented,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    breaks, method, constant = DETECTION[name]
    breaks(monkeypatch)
    app = build_app()
    # The default source (CodeCarbon's hardware): the whole machine, where the
    # fallback's constant power shows on every request, or this process.
    scope = "machine" if constant else "process"
    with caplog.at_level(logging.WARNING, logger="carbonspan"):
        inst = instrument(app, otel, scope=scope, sample_interval=0.02)
        wait_ready(inst, readings=3, timeout=30)  # hardware detection first
        assert fetch(app, ["/cpu?seconds=0.05"]) == [200]
        assert fetch(app, ["/sleep?seconds=0.05"]) == [200]
    assert inst.sampler.errors == 0  # no reading failed
    spans = otel.server_spans()
    assert len(spans) == 2
    for span in spans:
        got = attrs(span)
        assert_sane(got)
        assert got[a.MEASUREMENT["cpu"]] == method
        assert got[a.MEASUREMENT["ram"]] == "model"
    assert attrs(spans[0])[a.ENERGY["cpu"]] > 0  # the request that used the CPU
    if constant:
        # The fallback is a constant power, whatever the requests do (a
        # request's own figure may lag a tick delayed by the busy thread):
        # the power its model draws at no load, at any load.
        info = inst.sampler.source.describe()
        expected = info.idle_watts["cpu"]
        for w in {attrs(s)[a.POWER["cpu"]] for s in spans}:
            assert w == pytest.approx(expected, rel=0.25)
        assert any("CPU" in r.getMessage() for r in carbonspan_warnings(caplog))
    assert_no_open_window(inst, otel)


@pytest.mark.parametrize("nvml", ["absent", "broken-at-init", "lost-at-runtime"])
def test_nvml_absent_or_broken_leaves_cpu_and_ram_measured(
    nvml: str,
    otel: Otel,
    instrument: Instrumented,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if nvml == "broken-at-init":
        fake = FakeNvml.idle(init_error="Driver/library version mismatch")
    else:
        fake = FakeNvml.idle()
    install_nvml(monkeypatch, fake, available=nvml != "absent")
    app = build_app()
    with caplog.at_level(logging.WARNING, logger="carbonspan"):
        inst = instrument(app, otel, scope="machine", sample_interval=0.02)
        wait_ready(inst, readings=3, timeout=30)
        if nvml == "lost-at-runtime":
            assert fetch(app, ["/sleep?seconds=0.05"]) == [200]
            fake.broken = True
            wait_ready(inst, readings=3)
        assert fetch(app, ["/sleep?seconds=0.05"]) == [200]
    assert inst.sampler.errors == 0
    spans = otel.server_spans()
    last = attrs(spans[-1])
    assert_sane(last)
    assert last[a.ENERGY["cpu"]] > 0 and last[a.ENERGY["ram"]] > 0
    warnings = [r.getMessage() for r in carbonspan_warnings(caplog)]
    if nvml == "lost-at-runtime":
        first = attrs(spans[0])
        assert first[a.MEASUREMENT["gpu"]] == "nvml" and first[a.ENERGY["gpu"]] > 0
        assert last[a.ENERGY["gpu"]] == 0.0  # no more GPU joules, no failure
        assert len(warnings) == 1 and "gpu" in warnings[0]
    else:
        assert a.MEASUREMENT["gpu"] not in last and a.ENERGY["gpu"] not in last
        assert len(warnings) == (1 if nvml == "broken-at-init" else 0)
    assert_no_open_window(inst, otel)
