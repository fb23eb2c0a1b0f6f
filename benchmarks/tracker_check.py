"""carbonspan's machine scope against CodeCarbon's own tracker.

Runs CodeCarbon's `OfflineEmissionsTracker(tracking_mode="machine")` and a
`PowerSampler(CodeCarbonPowerSource("machine"))` side by side while a thread
keeps one core busy, and compares their mean CPU and RAM power. CodeCarbon's
RAM model is a constant power, so the RAM ratio shows how far the two
windows differ (the tracker's duration runs longer than the window its
energy covers); the CPU ratio is also given divided by it. Offline: no
network.

    python benchmarks/tracker_check.py [--seconds 20] [--interval 1.0]
"""

from __future__ import annotations

import argparse
import threading
import time

from codecarbon import OfflineEmissionsTracker

from carbonspan import CodeCarbonPowerSource
from carbonspan.attribution.ledger import Ledger
from carbonspan.power.sampler import PowerSampler

JOULES_PER_KWH = 3.6e6


def busy(stop: threading.Event) -> None:
    while not stop.is_set():
        end = time.perf_counter() + 0.05
        while time.perf_counter() < end:
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--interval", type=float, default=1.0, help="the sampler's")
    args = parser.parse_args()
    tracker = OfflineEmissionsTracker(
        country_iso_code="FRA", measure_power_secs=1, tracking_mode="machine",
        log_level="error", save_to_file=False,
    )  # fmt: skip
    sampler = PowerSampler(CodeCarbonPowerSource("machine"), args.interval, Ledger())
    sampler.start()
    while sampler.ledger.last_time is None:
        time.sleep(0.05)
    stop = threading.Event()
    load = threading.Thread(target=busy, args=(stop,), daemon=True)
    load.start()
    tracker.start()
    start, t0 = sampler.ledger.totals().measured, sampler.ledger.last_time
    time.sleep(args.seconds)
    tracker.stop()
    end, t1 = sampler.ledger.totals().measured, sampler.ledger.last_time
    stop.set()
    sampler.stop()
    data = tracker.final_emissions_data
    theirs = {
        "cpu": data.cpu_energy * JOULES_PER_KWH / data.duration,
        "ram": data.ram_energy * JOULES_PER_KWH / data.duration,
    }
    ours = {
        "cpu": (end[0] - start[0]) / (t1 - t0),
        "ram": (end[2] - start[2]) / (t1 - t0),
    }
    cpu, ram = ours["cpu"] / theirs["cpu"], ours["ram"] / theirs["ram"]
    for name, watts in (
        ("CodeCarbon's tracker", theirs),
        ("carbonspan, machine", ours),
    ):
        print(f"mean W, {name}: cpu {watts['cpu']:.4f}, ram {watts['ram']:.4f}")
    print(
        f"carbonspan / tracker: cpu {cpu:.4f}, ram {ram:.4f}; cpu / ram {cpu / ram:.4f}"
    )


if __name__ == "__main__":
    main()
