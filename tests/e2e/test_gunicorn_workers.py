"""gunicorn with two uvicorn workers: each measures itself, and they add up."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from carbonspan import CodeCarbonPowerSource
from carbonspan.attribution.ledger import Ledger
from carbonspan.otel import attributes as a
from carbonspan.power.sampler import PowerSampler
from support.checks import wait_for
from support.otlp import Receiver
from support.server import Server

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent


def gunicorn(preload: bool) -> list[str]:
    cmd = [str(BIN / "gunicorn"), "-c", "support/gunicorn_conf.py",
           "-b", "127.0.0.1:{port}", "--log-level", "warning",
           "support.gunicorn_app:app"]  # fmt: skip
    return [*cmd, "--preload"] if preload else cmd


def cpu_by_worker(receiver: Receiver, since_ns: int = 0) -> dict[str, float]:
    """Each worker's latest codecarbon.energy, CPU, attributed plus unattributed."""
    latest: dict[tuple[str, bool], tuple[int, float]] = {}
    for p in receiver.metric("codecarbon.energy"):
        if p["attributes"]["hw.type"] != "cpu" or p["time"] < since_ns:
            continue
        key = (
            p["resource"]["service.instance.id"],
            p["attributes"]["codecarbon.attributed"],
        )
        if key not in latest or p["time"] >= latest[key][0]:
            latest[key] = (p["time"], p["value"])
    out: dict[str, float] = {}
    for (worker, _), (_, value) in latest.items():
        out[worker] = out.get(worker, 0.0) + value
    return out


def exported_after(receiver: Receiver, since_ns: int) -> dict[str, float]:
    """Each worker's CPU counters as it first exports them after `since_ns`."""
    wait_for(
        lambda: len(cpu_by_worker(receiver, since_ns)) == 2,
        timeout=30.0,
        interval=0.1,
    )
    return cpu_by_worker(receiver, since_ns)


async def load(url: str, seconds: float) -> int:
    """Keep ten CPU-heavy requests in flight for `seconds`.

    A new connection per request lets the kernel spread them over both
    workers; ten keep both cores saturated with no gap between requests, where
    CodeCarbon's (cubic) load model is flat and so the same for every process
    that evaluates it over its own sampling windows.
    """
    done = 0
    end = time.monotonic() + seconds
    fresh = httpx.Limits(max_keepalive_connections=0)

    async def client() -> None:
        nonlocal done
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=fresh) as c:
            while time.monotonic() < end:
                assert (await c.get("/cpu?seconds=0.5")).status_code == 200
                done += 1

    await asyncio.gather(*(client() for _ in range(10)))
    return done


class CpuShare:
    """The gunicorn workers' share of the machine's busy CPU time, from now."""

    def __init__(self, master: int) -> None:
        self.workers = psutil.Process(master).children()
        self.start = self.read()

    def read(self) -> tuple[float, float]:
        own = 0.0
        for worker in self.workers:
            times = worker.cpu_times()
            own += times.user + times.system
        machine = psutil.cpu_times()
        busy = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
        busy -= getattr(machine, "guest", 0.0) + getattr(machine, "guest_nice", 0.0)
        return own, busy

    def since(self) -> float:
        own, busy = self.read()
        return (own - self.start[0]) / (busy - self.start[1])


@pytest.mark.parametrize("preload", [False, True], ids=["fork-then-import", "preload"])
def test_two_workers_add_up_to_the_machine(preload: bool) -> None:
    with Receiver() as receiver:
        with Server(gunicorn(preload), {"E2E_OTLP": receiver.endpoint}) as server:
            # Warm both workers up until each exports its energy counters.
            with httpx.Client(base_url=server.url) as c:

                def both_workers() -> bool:
                    c.get("/fast")
                    return len(cpu_by_worker(receiver)) == 2

                wait_for(both_workers, timeout=30.0, interval=0.1)
            # The machine, read at the workers' own cadence: CodeCarbon's load
            # model is not linear, so a single long window would read less.
            machine = PowerSampler(CodeCarbonPowerSource("machine"), 0.1, Ledger())
            machine.start()
            wait_for(
                lambda: machine.ledger.last_time is not None,
                timeout=30.0,
                interval=0.1,
            )
            # The workers' counters before the load: each one's first export
            # from now on (idle meanwhile, they draw no dynamic power).
            before = exported_after(receiver, time.time_ns())
            share = CpuShare(server.proc.pid)
            start = machine.ledger.totals().measured[0]
            started = time.monotonic()
            requests = asyncio.run(load(server.url, 10.0))
            machine_joules = machine.ledger.totals().measured[0] - start
            elapsed = time.monotonic() - started
            workers_share = share.since()
            idle_watts = machine.source.describe().idle_watts.get("cpu", 0.0)
            machine.stop()
            # Both workers' first export after the load: counters up to now.
            after = exported_after(receiver, time.time_ns())
            server.stop()
        spans = receiver.server_spans()
    assert requests >= 20
    workers = {w: after[w] - before[w] for w in after}
    assert len(workers) == 2
    assert all(joules > 0 for joules in workers.values())
    total = sum(workers.values())
    assert machine_joules > 0
    # Per-process scope: the workers are charged the machine's dynamic power
    # (above its idle power) by their share of its busy CPU time, so the
    # truth leaves out what other processes on the machine used meanwhile.
    truth = (machine_joules - idle_watts * elapsed) * workers_share
    print(
        f"{requests} requests; workers {workers} J; machine {machine_joules:.3f} J, "
        f"idle {idle_watts:.2f} W, workers' CPU share {workers_share:.3f}: "
        f"truth {truth:.3f} J"
    )
    # The two workers share the machine, not double it.
    assert total == pytest.approx(truth, rel=0.10)
    # Every worker's spans carry energy: the sampler runs in each worker.
    measured = {
        s["resource"]["service.instance.id"]
        for s in spans
        if s["name"] == "GET /cpu" and s["attributes"].get(a.ENERGY_TOTAL, 0) > 0
    }
    assert measured == set(workers)
