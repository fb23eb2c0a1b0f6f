"""What a cpu_time request's clock costs on the request path.

Times, in a running asyncio loop with carbonspan's clocks patched in (as
under ``attribution="cpu_time"``): one read of a clock whose step is running,
a clock's ``begin`` + ``end``, and a request's ``Ledger.open`` + ``peek`` +
``close`` with its clock. Run it against another checkout with
``PYTHONPATH=<checkout>/src``.

    python benchmarks/clock_cost.py [--number 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import timeit

from carbonspan.attribution import cpu_clock
from carbonspan.attribution.ledger import Ledger
from carbonspan.attribution.policies import CpuTime
from carbonspan.power.source import EnergyReading


async def measure(number: int) -> None:
    clock = cpu_clock.CpuClock(True)
    read = timeit.timeit(lambda: clock.seconds, number=number) / number
    pair = timeit.timeit(lambda: cpu_clock.end(*cpu_clock.begin()), number=number)
    ledger = Ledger(CpuTime())
    ledger.tick(EnergyReading(time=0.0, cpu=0.0))
    ledger.tick(EnergyReading(time=0.1, cpu=1.0))

    def request() -> None:
        began = cpu_clock.begin()
        assert began is not None
        window = ledger.open(time.monotonic(), began[0])
        ledger.peek(window, time.monotonic())
        ledger.close(window, time.monotonic())
        cpu_clock.end(*began)

    requests = number // 4
    whole = timeit.timeit(request, number=requests) / requests
    print(f"clock read, step running: {read * 1e9:6.0f} ns")
    print(f"begin + end:              {pair / number * 1e9:6.0f} ns")
    print(f"open + peek + close:      {whole * 1e9:6.0f} ns")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--number", type=int, default=200_000)
    args = parser.parse_args()
    cpu_clock.patch()
    try:
        asyncio.run(measure(args.number))
    finally:
        cpu_clock.unpatch()


if __name__ == "__main__":
    main()
