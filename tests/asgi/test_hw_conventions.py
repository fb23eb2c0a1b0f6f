"""OpenTelemetry's hardware conventions (`hw.energy`, `hw.power`,
`hw.host.energy`, `hw.host.power`): the hardware's figures under
`scope="machine"`, and none under `scope="process"`, where the readings are
the process's share."""

from __future__ import annotations

import pytest

from carbonspan.otel import attributes as a
from carbonspan.testing import ConstantPowerSource
from support.asgi import fetch
from support.otel import Instrumented, Otel, ready_app

HW = ("hw.energy", "hw.power", "hw.host.energy", "hw.host.power")


def test_under_machine_scope_the_hardware_figures_follow_otel_conventions(
    otel: Otel, instrument: Instrumented
) -> None:
    app, inst = ready_app(
        instrument, otel, scope="machine", sample_interval=0.02,
        power_source=ConstantPowerSource(cpu=10.0, ram=2.0),
    )  # fmt: skip
    assert fetch(app, ["/fast", "/sleep?seconds=0.05"]) == [200, 200]
    inst.sampler.stop()  # the books hold still while they are compared
    inst.sampler.sample()  # a reading after both closed: nothing is open
    got = otel.collect()
    energy = {p.attributes[a.HW_TYPE]: p for p in got["hw.energy"]}
    assert set(energy) == {"cpu", "memory"}
    for hw, point in energy.items():
        assert point.attributes == {a.HW_TYPE: hw, a.HW_ID: hw}
    # The hardware's energy is what was measured: attributed + unattributed
    # + held by requests in flight (none).
    ours = {p.attributes[a.HW_TYPE]: 0.0 for p in got["codecarbon.energy"]}
    for p in got["codecarbon.energy"]:
        ours[p.attributes[a.HW_TYPE]] += p.value
    for p in got.get("codecarbon.energy.open", []):
        ours[p.attributes[a.HW_TYPE]] += p.value
    for hw in ("cpu", "memory"):
        assert energy[hw].value == pytest.approx(ours[hw], rel=1e-9)
    assert energy["cpu"].value == pytest.approx(5 * energy["memory"].value)
    power = {p.attributes[a.HW_TYPE]: p.value for p in got["hw.power"]}
    assert power == pytest.approx({"cpu": 10.0, "memory": 2.0})
    ((host_energy,),) = [got["hw.host.energy"]]
    assert host_energy.attributes == {}
    assert host_energy.value == pytest.approx(sum(p.value for p in energy.values()))
    (host_power,) = got["hw.host.power"]
    assert host_power.value == pytest.approx(12.0)


def test_under_process_scope_no_share_is_labelled_as_the_hardware(
    otel: Otel, instrument: Instrumented
) -> None:
    app, _ = ready_app(
        instrument, otel, sample_interval=0.02,
        power_source=ConstantPowerSource(cpu=10.0, ram=2.0),
    )  # fmt: skip
    assert fetch(app, ["/fast"]) == [200]
    got = otel.collect()
    assert got["codecarbon.energy"]  # the process's figures are there
    for name in HW:
        assert not got.get(name), name
