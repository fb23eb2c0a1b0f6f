"""Draw how the ledger splits power under each policy; measure its residual error.

    python docs/gen_attribution.py             # both pictures in docs/img/
    python docs/gen_attribution.py --residual  # the residual-error tables

The pictures are docs/img/attribution-time_share.png (how time_share splits
power) and docs/img/attribution-policies.png (one timeline charged under
time_share and under cpu_time).

Everything here runs the real `carbonspan.attribution.ledger.Ledger`. A
`carbonspan.testing.ScriptedPowerSource` on a fake clock supplies the readings:
the script calls `ledger.tick(source.read())` at each sampling instant and
`ledger.open(t)` / `ledger.close(window, t)` for each request, exactly as the
sampler thread and the middleware do. The "exact" share of a request is the
integral of P(t)/n(t) over its lifetime, computed segment by segment from the
scripted power, so it owes nothing to the ledger.

Under `cpu_time`, each request also gets a
`carbonspan.attribution.cpu_clock.CpuClock`, the object the middleware hands
the ledger; the script advances its CPU seconds (`add_thread`) by the
request's scripted CPU rate as the fake clock moves, as the timed coroutine
wrapper does for a real request. The exact `cpu_time`
share is the integral of P(t) x r_i / (sum of the r of the requests in flight),
where r is each request's CPU rate.
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
from typing import Any

from carbonspan import Measurement
from carbonspan.attribution.cpu_clock import CpuClock
from carbonspan.attribution.ledger import Ledger
from carbonspan.attribution.policies import CpuTime, TimeShare
from carbonspan.attribution.totals import Totals
from carbonspan.testing import ScriptedPowerSource

Watts = Callable[[float], float]
Request = tuple[float, float]  # (start, end), seconds on the fake clock

INTERVAL = 0.1  # the default sample_interval
RESOLUTION = 1e-5  # ScriptedPowerSource integration step: fine enough for steps
IMG = Path(__file__).parent / "img"
OUTPUT = IMG / "attribution-time_share.png"
POLICIES_OUTPUT = IMG / "attribution-policies.png"


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
    cpu_rates: Sequence[float] | None = None,
) -> Run:
    """Feed one Ledger from a ScriptedPowerSource and compare with exact shares.

    `breakpoints` lists the instants where the scripted power may jump other
    than request boundaries, so that the exact integral is taken piecewise.
    With `cpu_rates` (CPU seconds per second, one per request) the ledger runs
    the `cpu_time` policy, each request's CpuClock advancing at its rate, and
    the exact shares are the CPU-proportional ones.
    """
    clock = FakeClock()
    source = ScriptedPowerSource(**watts, resolution=RESOLUTION, clock=clock)
    ledger = Ledger(TimeShare() if cpu_rates is None else CpuTime())
    cpu_clocks: dict[int, CpuClock] = {}
    last_t = 0.0
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
        if cpu_rates is not None:  # the requests in flight used CPU until t
            for k, cpu_clock in cpu_clocks.items():
                cpu_clock.add_thread(cpu_rates[k] * (t - last_t))
            last_t = t
        if kind == 0:
            reading = source.read()
            ledger.tick(reading)
            joules = sum(j for j in (reading.cpu, reading.gpu, reading.ram) if j)
            ticks.append(t)
            tick_joules.append(joules - previous)
            previous = joules
        elif kind == 2:
            if cpu_rates is None:
                windows[i] = ledger.open(t)
            else:
                cpu_clocks[i] = CpuClock()
                windows[i] = ledger.open(t, cpu_clocks[i])
        else:
            measurements[i] = ledger.close(windows.pop(i), t)
            cpu_clocks.pop(i, None)
    ordered = [measurements[i] for i in range(len(requests))]
    charged = [m.total or 0.0 for m in ordered]
    exact, idle = exact_shares(requests, watts, end, breakpoints, cpu_rates)
    return Run(
        requests, charged, exact, idle, ordered, ledger.totals(), ticks, tick_joules
    )


def exact_shares(
    requests: Sequence[Request],
    watts: dict[str, Watts],
    end: float,
    breakpoints: Sequence[float],
    cpu_rates: Sequence[float] | None = None,
) -> tuple[list[float], float]:
    """Integral of P(t)/n(t) per request, and of P(t) while nothing is open.

    With `cpu_rates`, the CPU component is split in proportion to the rates
    of the requests in flight instead (the other components stay P/n).
    """
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
        open_now = [i for i, (b, e) in enumerate(requests) if b <= mid < e]
        if cpu_rates is None or "cpu" not in watts:
            for i in open_now:
                shares[i] += energy / count
            continue
        cpu = watts["cpu"](mid) * (hi - lo)
        rate = sum(cpu_rates[i] for i in open_now)
        for i in open_now:
            weight = cpu_rates[i] / rate if rate > 0 else 1 / count
            shares[i] += cpu * weight + (energy - cpu) / count
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


def request_bar(
    axes: Any, y: float, start: float, stop: float, color: Any, label: str
) -> None:
    """One request's bar on the timeline, labelled beside it."""
    axes.barh(y, stop - start, left=start, height=0.6, color=color)
    if stop < 1.4:
        axes.text(stop + 0.02, y, label, va="center", fontsize=9)
    else:
        axes.text(start - 0.02, y, label, va="center", ha="right", fontsize=9)


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
        label = f"req {i + 1}: {charged:.2f} J  (exact {exact:.2f} J)"
        request_bar(top, len(FIGURE_REQUESTS) - i, start, stop, colors[i], label)
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


# -- the two policies, one timeline ------------------------------------------------

#: Fraction of one core each FIGURE_REQUESTS entry uses while in flight:
#: 1, 3 and 5 compute; 2 and 4 mostly wait (on a database, say).
FIGURE_CPU_RATES = (0.8, 0.05, 0.9, 0.1, 0.7)
BASE_CPU_W = 4.0  # the process's CPU power with nothing to do
CORE_W = 12.0  # added CPU power per busy core
RAM_W = 3.0


def policy_watts() -> dict[str, Watts]:
    """CPU power follows the CPU the requests use; RAM is a flat 3 W."""
    requests, rates = FIGURE_REQUESTS, FIGURE_CPU_RATES

    def cpu(t: float) -> float:
        busy = sum(r for (b, e), r in zip(requests, rates, strict=True) if b <= t < e)
        return BASE_CPU_W + CORE_W * busy

    return {"cpu": cpu, "ram": lambda t: RAM_W}


def draw_policies(output: Path) -> tuple[Run, Run]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    watts = policy_watts()
    shared = simulate(FIGURE_REQUESTS, watts, end=FIGURE_END)
    by_cpu = simulate(
        FIGURE_REQUESTS, watts, end=FIGURE_END, cpu_rates=FIGURE_CPU_RATES
    )
    colors = plt.get_cmap("tab10").colors
    count = len(FIGURE_REQUESTS)

    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(9, 7.4), gridspec_kw={"height_ratios": [1, 1.6]}
    )

    for i, ((start, stop), rate) in enumerate(
        zip(FIGURE_REQUESTS, FIGURE_CPU_RATES, strict=True)
    ):
        label = f"req {i + 1}: {rate:.0%} of a core"
        request_bar(top, count - i, start, stop, colors[i], label)
    for t in shared.ticks:
        top.axvline(t, color="0.85", linewidth=0.6, zorder=0)
    top.set_yticks([])
    top.set_ylim(0.3, count + 0.7)
    top.set_xlim(0, FIGURE_END)
    top.set_xlabel("time (s); grey lines: sampler ticks every 0.1 s", fontsize=9)
    top.set_title(
        "The requests of the time_share picture, now with CPU use: "
        f"CPU {BASE_CPU_W:g} W + {CORE_W:g} W per busy core, RAM {RAM_W:g} W",
        fontsize=10,
    )

    height = 0.38
    policies = (("time_share", shared, 0.2), ("cpu_time", by_cpu, -0.2))
    for name, run, offset in policies:
        ys = [count - i + offset for i in range(count)]
        cpu = [m.cpu or 0.0 for m in run.measurements]
        ram = [m.ram or 0.0 for m in run.measurements]
        solid = name == "cpu_time"
        bottom.barh(
            ys,
            cpu,
            height=height,
            color=[colors[i] for i in range(count)],
            alpha=1.0 if solid else 0.45,
            edgecolor="black",
            linewidth=0.5,
        )
        bottom.barh(
            ys, ram, left=cpu, height=height, color="0.85", edgecolor="black",
            linewidth=0.5, hatch="//",
        )  # fmt: skip
        bottom.scatter(
            run.exact, ys, marker="D", s=18, color="black", zorder=3, linewidth=0
        )
        for y, c, r, exact in zip(ys, cpu, ram, run.exact, strict=True):
            bottom.text(
                max(c + r, exact) + 0.3,
                y,
                f"{name}: {c:.2f} J CPU + {r:.2f} J RAM",
                va="center",
                fontsize=8,
            )
    bottom.set_yticks(
        range(count, 0, -1), [f"req {i + 1}" for i in range(count)], fontsize=9
    )
    widest = max(max(r.exact) for _, r, _ in policies)
    bottom.set_xlim(0, widest * 1.9)
    bottom.set_ylim(0.4, count + 0.6)
    bottom.set_xlabel("joules charged")
    bottom.set_title(
        "Joules charged: time_share (upper, pale) and cpu_time (lower, solid)",
        fontsize=10,
    )
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    bottom.legend(
        handles=[
            Patch(facecolor="0.6", alpha=0.45, edgecolor="black", label="CPU J"),
            Patch(facecolor="0.85", hatch="//", edgecolor="black", label="RAM J"),
            Line2D(
                [], [], marker="D", color="black", linestyle="", markersize=5,
                label="exact split under that policy",
            ),
        ],
        loc="lower right",
        fontsize=8,
    )  # fmt: skip

    notes = []
    for name, run, _ in policies:
        totals = run.totals
        notes.append(
            f"{name}: measured {sum(totals.measured):.2f} J = attributed "
            f"{sum(totals.attributed):.2f} J + unattributed "
            f"{sum(totals.unattributed):.2f} J"
        )
    fig.text(0.5, 0.005, "    ".join(notes), ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=100)
    plt.close(fig)
    return shared, by_cpu


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
    parser.add_argument("--policies-output", type=Path, default=POLICIES_OUTPUT)
    args = parser.parse_args()
    if args.residual:
        residual()
        return
    run = draw(args.output)
    print(f"wrote {args.output}")
    for i, (charged, exact) in enumerate(zip(run.charged, run.exact, strict=True)):
        print(f"req {i + 1}: ledger {charged:.4f} J, exact {exact:.4f} J")
    runs = draw_policies(args.policies_output)
    print(f"wrote {args.policies_output}")
    for name, policy_run in zip(("time_share", "cpu_time"), runs, strict=True):
        print(f"{name}:")
        for i, (m, exact) in enumerate(
            zip(policy_run.measurements, policy_run.exact, strict=True)
        ):
            print(
                f"  req {i + 1}: cpu {m.cpu or 0.0:.4f} J + ram {m.ram or 0.0:.4f} J"
                f" = {m.total or 0.0:.4f} J, exact {exact:.4f} J"
            )


if __name__ == "__main__":
    main()
