"""Per-request overhead of carbonspan, against FastAPIInstrumentor alone and against
a CodeCarbon tracker per request.

Run from the repository root:

    .venv/bin/python benchmarks/overhead.py              # both modes, about 4-5 min
    .venv/bin/python benchmarks/overhead.py --quick      # both modes, about 1 min
    .venv/bin/python benchmarks/overhead.py --in-process # in-process mode only
    .venv/bin/python benchmarks/overhead.py --http       # HTTP mode only
    .venv/bin/python benchmarks/overhead.py --json out.json

Two modes, in-process first, then HTTP:

In-process mode, in this one process, two parts:
  - the A/B comparison (`overhead_ab.py`): FastAPI apps with and without
    carbonspan (variants a, b, c, d, e, z) driven straight through ASGI,
    alternating; requests/s and latency side by side;
  - the cost breakdown (`overhead_costs.py`): carbonspan's added CPU per request
    by part, around a trivial ASGI app; each piece alone; the sampler thread.

HTTP mode (`http_overhead.py`): the same app (`bench_app.py`) served by real
uvicorn servers on 127.0.0.1, one per variant, compared the same way over
keep-alive connections.

The script sends nothing over the network: outbound connections and name
lookups for anything but loopback are refused and counted (the count is printed;
it should be 0).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import platform
import signal
import sys
import time
import warnings
from importlib import metadata
from typing import Any

from netguard import NETWORK

# No network: the guard is in place before CodeCarbon and friends are imported.
NETWORK.install()
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=FutureWarning)

import http_overhead  # noqa: E402
import machine  # noqa: E402
import overhead_ab  # noqa: E402
import overhead_costs  # noqa: E402
from bench_app import calibrate_spin  # noqa: E402
from overhead_ab import COUNTRY  # noqa: E402

# -- in process: the A/B comparison, then the cost breakdown --------------------


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    began = time.perf_counter()
    print()
    print("carbonspan overhead in process (direct ASGI calls)")
    loops = calibrate_spin(args.cpu_ms)
    bench = await overhead_ab.build(args, loops)
    await overhead_ab.wait_for_sampler(bench)
    await overhead_ab.warm_up(bench, args.warmup, args.cpu_ms)
    await overhead_ab.sanity(bench)
    ab = await overhead_ab.compare(bench, args)  # freezes the GC's survivors
    results: dict[str, Any] = {"endpoints": ab["endpoints"]}
    results.update(await breakdown(bench, args))
    gc.unfreeze()
    overhead_ab.stop_carbonspan(bench)  # its sampler reads psutil too
    sc = sampler(bench, args, ab["live"], ab["live_wall_s"])
    results["sampler"] = sc
    share = ab["live"] if ab["live"] is not None else sc["core_percent_at_interval"]
    overhead_ab.with_sampler(results["endpoints"], share)
    print()
    print_network()
    elapsed = time.perf_counter() - began
    print(f"in-process mode took {elapsed:.0f} s")
    results.update(
        {
            "versions": versions(),
            "source_revision": source_revision(),
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "settings": {k: v for k, v in vars(args).items() if k != "json"},
            "cpu_loops": loops,
            "first_tracker_s": bench.first_c_s,
            "network_blocked": NETWORK.blocked,
            "elapsed_s": elapsed,
        }
    )
    overhead_ab.shutdown(bench)
    return results


async def breakdown(
    bench: overhead_ab.Bench, args: argparse.Namespace
) -> dict[str, Any]:
    """Where b's time goes, then each piece alone."""
    print()
    print("== where b's time goes: CodeCarbonMiddleware around a trivial ASGI app")
    print("   (inside a recording SDK server span; all rows alternate; medians)")
    mw: dict[str, Any] = await overhead_costs.middleware_breakdown(
        bench.otel, args.middleware_requests
    )
    overhead_costs.print_breakdown(mw)
    split = overhead_costs.print_split(mw)
    if split is not None:
        mw["split"] = split
    print()
    print("== request-path pieces (ns per call, median of batches)")
    comp = overhead_costs.component_costs(
        bench.instrumentation, bench.otel, args.micro_number
    )
    overhead_costs.print_pieces(comp)
    return {"middleware": mw, "components_ns": comp}


def sampler(
    bench: overhead_ab.Bench,
    args: argparse.Namespace,
    live: float | None,
    live_wall_s: float,
) -> dict[str, Any]:
    """A fresh sampler's cost, beside the live one's share during the run."""
    interval = bench.instrumentation.sampler.interval
    print()
    print(f"== sampler (CodeCarbonPowerSource, interval {interval} s)")
    sc: dict[str, Any] = overhead_costs.sampler_cost(args.sampler_samples, interval)
    sc["live_thread_core_percent"] = live
    overhead_costs.print_sampler(sc, live_wall_s)
    return sc


def print_network() -> None:
    if NETWORK.blocked:
        print(f"network: {len(NETWORK.blocked)} outbound attempt(s) BLOCKED:")
        for what in NETWORK.blocked[:10]:
            print(f"  {what}")
    else:
        print("network: no outbound connection or lookup attempted")


# -- what was measured, on what ------------------------------------------------


def source_revision() -> str:
    """The git commit of the carbonspan being measured, `+dirty` if edited."""
    import subprocess

    import carbonspan

    where = os.path.dirname(os.path.abspath(carbonspan.__file__))
    try:
        rev = subprocess.run(
            ["git", "-C", where, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", where, "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"? ({where})"
    return f"{rev}{'+dirty' if dirty else ''} ({where})"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in (
        "carbonspan",
        "codecarbon",
        "fastapi",
        "starlette",
        "opentelemetry-sdk",
        "opentelemetry-instrumentation-fastapi",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "?"
    return out


def print_header() -> None:
    print("carbonspan overhead benchmark")
    print(
        "  "
        + ", ".join(f"{k} {v}" for k, v in versions().items())
        + f"; {os.cpu_count()} CPUs ({platform.machine()}, {cpu_brand()})"
    )
    print(f"  carbonspan source: {source_revision()}")


def cpu_brand() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or "?"


# -- the command line ----------------------------------------------------------


def in_process_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--requests", type=int, default=20_000, help="rounds on /ping")
    p.add_argument("--cpu-requests", type=int, default=5_000, help="rounds on /cpu")
    p.add_argument(
        "--obvious-every",
        type=int,
        default=10,
        help="run variant c (tracker per request) every k-th round; 0 skips it",
    )
    p.add_argument("--cpu-ms", type=float, default=3.0, help="work in /cpu")
    p.add_argument(
        "--no-floor",
        dest="floor",
        action="store_false",
        help="leave out variant d (the synchronous floor)",
    )
    p.add_argument(
        "--no-control",
        dest="control",
        action="store_false",
        help="leave out variant z, a second copy of a: the run's noise floor",
    )
    p.add_argument(
        "--no-plain-resource",
        dest="plain_resource",
        action="store_false",
        help="leave out variant e (carbonspan with a plain Resource)",
    )
    p.add_argument(
        "--total-blocks",
        type=int,
        default=60,
        help="blocks per variant in the total-CPU phase (every thread); 0 skips it",
    )
    p.add_argument("--warmup", type=int, default=300, help="warm-up requests")
    p.add_argument("--middleware-requests", type=int, default=20_000)
    p.add_argument("--micro-number", type=int, default=40_000)
    p.add_argument("--sampler-samples", type=int, default=300)


def http_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--http-requests", type=int, default=12_000, help="HTTP rounds on /ping"
    )
    p.add_argument(
        "--http-cpu-requests", type=int, default=3_000, help="HTTP rounds on /cpu"
    )
    p.add_argument(
        "--http-max-seconds",
        type=float,
        default=240.0,
        help="stop an HTTP endpoint's rounds after this long",
    )
    p.add_argument(
        "--http-clients",
        type=int,
        default=4,
        help="connections in the HTTP throughput check",
    )
    p.add_argument(
        "--http-throughput-rounds",
        type=int,
        default=24,
        help="interleaved rounds of the HTTP throughput check; 0 skips it",
    )
    p.add_argument("--http-throughput-seconds", type=float, default=0.5)
    p.add_argument(
        "--http-stacks",
        default="uvloop/httptools,asyncio/h11",
        help="uvicorn loop/http pairs, comma-separated; the first one also runs "
        "variant c and the throughput check",
    )
    p.add_argument(
        "--http-idle-seconds",
        type=float,
        default=10.0,
        help="measure b's sampler thread with no traffic for this long; 0 skips",
    )


def quick(args: argparse.Namespace) -> None:
    """--quick: every count capped, both modes in about a minute."""
    args.requests = min(args.requests, 2_500)
    args.total_blocks = min(args.total_blocks, 20)
    args.cpu_requests = min(args.cpu_requests, 600)
    args.warmup = min(args.warmup, 100)
    args.middleware_requests = min(args.middleware_requests, 3_000)
    args.micro_number = min(args.micro_number, 8_000)
    args.sampler_samples = min(args.sampler_samples, 50)
    args.http_requests = min(args.http_requests, 800)
    args.http_cpu_requests = min(args.http_cpu_requests, 200)
    args.http_throughput_rounds = min(args.http_throughput_rounds, 4)
    args.http_throughput_seconds = min(args.http_throughput_seconds, 0.25)
    args.http_idle_seconds = min(args.http_idle_seconds, 2.0)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    in_process_flags(p)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--http",
        action="store_true",
        help="only the HTTP mode (real uvicorn servers); default: both modes",
    )
    mode.add_argument(
        "--in-process",
        action="store_true",
        help="only the in-process mode (direct ASGI calls); default: both modes",
    )
    http_flags(p)
    p.add_argument("--quick", action="store_true", help="a ~1 min run (both modes)")
    p.add_argument(
        "--attribution",
        choices=("time_share", "cpu_time"),
        default="time_share",
        help="carbonspan's policy in variant b (set as CARBONSPAN_ATTRIBUTION, so "
        "the HTTP servers use it too)",
    )
    p.add_argument("--json", metavar="PATH", help="also write the figures here")
    args = p.parse_args(argv)
    if args.quick:
        quick(args)
    return args


# -- both modes ----------------------------------------------------------------


def in_process(args: argparse.Namespace) -> dict[str, Any]:
    load0 = machine.snapshot()
    results = asyncio.run(amain(args))
    load = machine.others(load0, machine.snapshot())
    results["machine_load"] = load
    print(machine.describe(load))
    return results


def over_http(args: argparse.Namespace, loops: int) -> list[dict[str, Any]]:
    """Each server stack in turn; the first also runs c and the throughput."""
    wanted = [tuple(x.split("/", 1)) for x in args.http_stacks.split(",") if x]
    stacks = http_overhead.available_stacks(wanted)  # type: ignore[arg-type]
    return [
        http_overhead.run(
            args,
            loops,
            COUNTRY,
            loop,
            http,
            obvious=i == 0,
            throughput_check=i == 0,
        )
        for i, (loop, http) in enumerate(stacks)
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("codecarbon").setLevel(logging.ERROR)
    # SIGTERM unwinds like Ctrl-C, so the HTTP mode's servers are stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    began = time.perf_counter()
    os.environ["CARBONSPAN_ATTRIBUTION"] = args.attribution
    print_header()
    print(f"  variant b's attribution policy: {args.attribution}")
    results: dict[str, Any] = {
        "versions": versions(),
        "source_revision": source_revision(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "cpu": cpu_brand(),
        "attribution": args.attribution,
    }
    loops: int | None = None
    if not args.http:
        results["in_process"] = in_process(args)
        loops = results["in_process"]["cpu_loops"]
    blocked = bool(NETWORK.blocked)
    if not args.in_process:
        results["http_stacks"] = over_http(
            args, loops if loops is not None else calibrate_spin(args.cpu_ms)
        )
        for one in results["http_stacks"]:
            blocked = blocked or any(one["server_network_blocked"].values())
        if results["http_stacks"]:
            results["http"] = results["http_stacks"][0]
    print()
    print(f"total {time.perf_counter() - began:.0f} s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2, default=str)
        print(f"wrote {args.json}")
    return 1 if blocked or NETWORK.blocked else 0


if __name__ == "__main__":
    sys.exit(main())
