"""Draw how the time_share ledger splits power, and measure its residual error.

    python docs/gen_attribution.py             # docs/img/attribution-time_share.png
    python docs/gen_attribution.py --residual  # the residual-error tables

Everything here runs the real `carbonspan.ledger.Ledger`. A
`carbonspan.testing.ScriptedPowerSource` on a fake clock supplies the readings:
the script calls `ledger.tick(source.read())` at each sampling instant and
`ledger.open(t)` / `ledger.close(window, t)` for each request, exactly as the
sampler thread and the middleware do. The "exact" share of a request is the
integral of P(t)/n(t) over its lifetime, computed segment by segment from the
scripted power, so it owes nothing to the ledger.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from carbonspan.ledger import Ledger, Measurement, Totals
from carbonspan.testing import ScriptedPowerSource

Watts = Callable[[float], float]
Request = tuple[float, float]  # (start, end), seconds on the fake clock

INTERVAL = 0.1  # the default sample_interval
RESOLUTION = 1e-5  # ScriptedPowerSource integration step: fine enough for steps
OUTPUT = Path(__file__).parent / "img" / "attribution-time_share.png"


class FakeClock:
    """A clock that only moves when the script says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Run:
    """What the ledger charged, next to the exact time_share figures."""

    requests: Sequence[Request]
    charged: list[float]
    exact: list[float]
    exact_idle: float
    measurements: list[Measurement]
    totals: Totals
    ticks: list[float]
    tick_joules: list[float]


def in_flight(requests: Sequence[Request]) -> Callable[[float], int]:
    """n(t): how many requests are open at t (start inclusive, end exclusive)."""
    starts = sorted(b for b, _ in requests)
    ends = sorted(e for _, e in requests)

    def n(t: float) -> int:
        return bisect.bisect_right(starts, t) - bisect.bisect_right(ends, t)

    return n


def simulate(
    requests: Sequence[Request],
    watts: dict[str, Watts],
    *,
    end: float,
    breakpoints: Sequence[float] = (),
    interval: float = INTERVAL,
) -> Run:
    """Feed one Ledger from a ScriptedPowerSource and compare with exact shares.

    `breakpoints` lists the instants where the scripted power may jump other
    than request boundaries, so that the exact integral is taken piecewise.
    """
    clock = FakeClock()
    source = ScriptedPowerSource(**watts, resolution=RESOLUTION, clock=clock)
    ledger = Ledger()
    count = round(end / interval)
    # At equal times: tick first, then closes, then opens.
    events = [(round(k * interval, 9), 0, -1) for k in range(count + 1)]
    for i, (start, stop) in enumerate(requests):
        events += [(start, 2, i), (stop, 1, i)]
    events.sort()
    windows = {}
    measurements: dict[int, Measurement] = {}
    ticks: list[float] = []
    tick_joules: list[float] = []
    previous = 0.0
    for t, kind, i in events:
        clock.now = t
        if kind == 0:
            reading = source.read()
            ledger.tick(reading)
            joules = sum(j for j in (reading.cpu, reading.gpu, reading.ram) if j)
            ticks.append(t)
            tick_joules.append(joules - previous)
            previous = joules
        elif kind == 2:
            windows[i] = ledger.open(t)
        else:
            measurements[i] = ledger.close(windows.pop(i), t)
    ordered = [measurements[i] for i in range(len(requests))]
    charged = [m.total or 0.0 for m in ordered]
    exact, idle = exact_shares(requests, watts, end, breakpoints)
    return Run(
        requests, charged, exact, idle, ordered, ledger.totals(), ticks, tick_joules
    )


def exact_shares(
    requests: Sequence[Request],
    watts: dict[str, Watts],
    end: float,
    breakpoints: Sequence[float],
) -> tuple[list[float], float]:
    """Integral of P(t)/n(t) per request, and of P(t) while nothing is open."""
    n = in_flight(requests)
    cuts = {0.0, end, *breakpoints}
    for start, stop in requests:
        cuts.update((start, stop))
    edges = sorted(cuts)
    shares = [0.0] * len(requests)
    idle = 0.0
    for lo, hi in itertools.pairwise(edges):
        mid = (lo + hi) / 2
        energy = sum(fn(mid) for fn in watts.values()) * (hi - lo)
        count = n(mid)
        if count == 0:
            idle += energy
            continue
        for i, (start, stop) in enumerate(requests):
            if start <= mid < stop:
                shares[i] += energy / count
    return shares, idle


# -- the picture ---------------------------------------------------------------

FIGURE_REQUESTS: list[Request] = [
    (0.15, 0.95),
    (0.40, 1.30),
    (0.55, 0.80),
    (1.05, 1.75),
    (1.20, 1.45),
]
FIGURE_END = 2.0


def figure_watts() -> dict[str, Watts]:
    """CPU follows the load (4 W + 6 W per request in flight); RAM is a flat 3 W."""
    n = in_flight(FIGURE_REQUESTS)
    return {"cpu": lambda t: 4.0 + 6.0 * n(t), "ram": lambda t: 3.0}


def draw(output: Path) -> Run:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    watts = figure_watts()
    run = simulate(FIGURE_REQUESTS, watts, end=FIGURE_END)
    n = in_flight(FIGURE_REQUESTS)
    colors = plt.get_cmap("tab10").colors

    fig, (top, bottom) = plt.subplots(
        2,
        1,
        figsize=(9, 6.2),
        sharex=True,
        gridspec_kw={"height_ratios": [1, 1.5]},
    )

    for i, ((start, stop), charged, exact) in enumerate(
        zip(FIGURE_REQUESTS, run.charged, run.exact, strict=True)
    ):
        y = len(FIGURE_REQUESTS) - i
        top.barh(y, stop - start, left=start, height=0.6, color=colors[i])
        label = f"req {i + 1}: {charged:.2f} J  (exact {exact:.2f} J)"
        if stop < 1.4:
            top.text(stop + 0.02, y, label, va="center", fontsize=9)
        else:
            top.text(start - 0.02, y, label, va="center", ha="right", fontsize=9)
    top.set_yticks([])
    top.set_ylim(0.3, len(FIGURE_REQUESTS) + 0.7)
    top.set_title("Requests in flight, with the joules the ledger charged each one")
    for t in run.ticks:
        top.axvline(t, color="0.85", linewidth=0.6, zorder=0)

    steps = 4000
    grid = [FIGURE_END * k / steps for k in range(steps + 1)]
    power = [sum(fn(t) for fn in watts.values()) for t in grid]
    layers = []
    for start, stop in FIGURE_REQUESTS:
        layers.append(
            [
                p / n(t) if start <= t < stop else 0.0
                for t, p in zip(grid, power, strict=True)
            ]
        )
    idle = [p if n(t) == 0 else 0.0 for t, p in zip(grid, power, strict=True)]
    bottom.stackplot(
        grid,
        *layers,
        idle,
        colors=[*colors[: len(FIGURE_REQUESTS)], "0.8"],
        labels=[*(f"req {i + 1}" for i in range(len(FIGURE_REQUESTS))), "idle"],
        step="post",
    )
    sampled_t: list[float] = []
    sampled_w: list[float] = []
    for (t0, t1), joules in zip(
        itertools.pairwise(run.ticks), run.tick_joules[1:], strict=True
    ):
        sampled_t += [t0, t1]
        sampled_w += [joules / (t1 - t0)] * 2
    bottom.plot(
        sampled_t,
        sampled_w,
        color="black",
        linestyle="--",
        linewidth=1,
        label="sampled (mean per interval)",
    )
    for t in run.ticks:
        bottom.axvline(t, color="0.85", linewidth=0.6, zorder=0)
    bottom.set_ylabel("power (W)")
    bottom.set_xlabel("time (s); grey lines: sampler ticks every 0.1 s")
    bottom.set_xlim(0, FIGURE_END)
    bottom.set_title("Process power P(t), each request's share P(t)/n(t), and idle")
    bottom.legend(loc="upper right", fontsize=8, ncol=4)
    bottom.set_ylim(0, max(power) * 1.35)

    totals = run.totals
    measured = sum(totals.measured)
    attributed = sum(totals.attributed)
    unattributed = sum(totals.unattributed)
    fig.text(
        0.5,
        0.005,
        f"measured {measured:.3f} J = attributed {attributed:.3f} J"
        f" + unattributed (idle) {unattributed:.3f} J",
        ha="center",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=100)
    plt.close(fig)
    return run


# -- the residual error ----------------------------------------------------------

STEP_AT = 1.05  # half-way between the ticks at 1.0 s and 1.1 s
OFFSETS_MS = (20, 45, 80, 120, 180, 250)


def step_table(before: float, after: float) -> None:
    """A request closing `offset` after a power step, beside a long one."""

    def cpu(t: float) -> float:
        return before if t < STEP_AT else after

    print(
        f"\nStep {before:g} W -> {after:g} W at t = {STEP_AT} s "
        f"(ticks every {INTERVAL} s). Request A = [0.95 s, step + offset],"
        " request B = [0.95 s, 1.60 s]."
    )
    print(
        f"{'offset':>8} {'A ledger':>10} {'A exact':>10} {'A error':>10} "
        f"{'A error %':>10} {'B error':>10} {'unattr.':>10} {'sum':>10}"
    )
    for offset in OFFSETS_MS:
        close = round(STEP_AT + offset / 1000, 9)
        requests = [(0.95, close), (0.95, 1.60)]
        run = simulate(requests, {"cpu": cpu}, end=2.0, breakpoints=[STEP_AT])
        errors = [c - e for c, e in zip(run.charged, run.exact, strict=True)]
        idle_error = sum(run.totals.unattributed) - run.exact_idle
        print(
            f"{offset:>6}ms {run.charged[0]:>9.3f}J {run.exact[0]:>9.3f}J "
            f"{errors[0]:>+9.3f}J {100 * errors[0] / run.exact[0]:>+9.1f}% "
            f"{errors[1]:>+9.3f}J {idle_error:>+9.3f}J "
            f"{sum(errors) + idle_error:>+9.1e}J"
        )


def mid_interval() -> None:
    """A request alone, opening between the step and the next tick."""

    def cpu(t: float) -> float:
        return 10.0 if t < STEP_AT else 30.0

    requests = [(1.06, 1.25)]
    run = simulate(requests, {"cpu": cpu}, end=2.0, breakpoints=[STEP_AT])
    idle_error = sum(run.totals.unattributed) - run.exact_idle
    print(
        f"\nStep 10 W -> 30 W at t = {STEP_AT} s; D = [1.06 s, 1.25 s] alone: "
        f"ledger {run.charged[0]:.3f} J, exact {run.exact[0]:.3f} J, "
        f"unattributed error {idle_error:+.3f} J"
    )


def workload_requests(seed: int, seconds: float) -> list[Request]:
    """Poisson arrivals at 20/s, each request lasting 10 to 300 ms."""
    rng = random.Random(seed)
    requests: list[Request] = []
    t = 0.05
    while True:
        t += rng.expovariate(20.0)  # 20 requests/s on average
        if t > seconds - 0.5:
            break
        start = round(t, 4)
        requests.append((start, round(start + rng.uniform(0.01, 0.3), 4)))
    return requests


WORKLOAD_INTERVALS = (0.1, 0.05, 0.02, 0.01)


def workload(seed: int = 1, seconds: float = 10.0) -> None:
    """Random arrivals, power that follows the load; ledger vs exact per request."""
    requests = workload_requests(seed, seconds)
    n = in_flight(requests)
    watts: dict[str, Watts] = {
        "cpu": lambda t: 4.0 + 6.0 * n(t),
        "ram": lambda t: 3.0,
    }
    print(
        f"\nRandom workload (seed {seed}): {len(requests)} requests over "
        f"{seconds:g} s, 20/s Poisson arrivals, 10-300 ms each, "
        "CPU 4 W + 6 W per request in flight, RAM 3 W."
    )
    print(
        f"{'interval':>9} {'median':>8} {'p95':>8} {'max':>8} "
        f"{'weighted':>9} {'books - measured':>17}"
    )
    for interval in WORKLOAD_INTERVALS:
        run = simulate(requests, watts, end=seconds, interval=interval)
        pairs = list(zip(run.charged, run.exact, strict=True))
        rel = sorted(abs(c - e) / e for c, e in pairs if e > 0)
        weighted = sum(abs(c - e) for c, e in pairs) / sum(run.exact)
        totals = run.totals
        books = sum(totals.attributed) + sum(totals.unattributed)
        drift = books - sum(totals.measured)
        print(
            f"{interval:>8g}s {100 * statistics.median(rel):>7.1f}% "
            f"{100 * rel[round(0.95 * (len(rel) - 1))]:>7.1f}% "
            f"{100 * rel[-1]:>7.1f}% {100 * weighted:>8.2f}% {drift:>+15.1e} J"
        )
    print(
        "(per-request |ledger - exact| / exact; weighted = sum of |ledger - exact|"
        " / sum of exact)"
    )


def residual() -> None:
    step_table(10.0, 30.0)
    step_table(30.0, 10.0)
    mid_interval()
    workload()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--residual",
        action="store_true",
        help="print the residual-error tables instead of drawing the picture",
    )
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    if args.residual:
        residual()
        return
    run = draw(args.output)
    print(f"wrote {args.output}")
    for i, (charged, exact) in enumerate(zip(run.charged, run.exact, strict=True)):
        print(f"req {i + 1}: ledger {charged:.4f} J, exact {exact:.4f} J")


if __name__ == "__main__":
    main()
