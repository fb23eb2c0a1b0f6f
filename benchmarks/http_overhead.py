"""The HTTP mode of `overhead.py`: the same comparison through real uvicorn servers.

Three uvicorn servers run as subprocesses on 127.0.0.1 (free ports, one worker
each), one per variant, all serving `bench_app.create_app` (see there):

  a  FastAPIInstrumentor alone;
  b  a + carbonspan, with the real default CodeCarbonPowerSource;
  c  a + an OfflineEmissionsTracker started/stopped around every request.

This process sends single requests over one persistent keep-alive connection
per server (`http.client`), alternating a b, b a, ... (c first in every k-th
round, as it is slow), on the trivial `/ping` and the CPU-heavy `/cpu`, and
compares MEDIAN latencies: requests/s = 1 / median. Client, loopback and
uvicorn/h11 costs are in every variant's latency alike, so b/a here is the
ratio a user would see on a one-worker service.

Each server also reports its own CPU time (`GET /_bench/stats`, before and
after each endpoint's run), so the CPU each variant spends per request
server-side is known without the client's share or time stolen by the host;
for b, the carbonspan sampler thread's CPU is reported apart.

Last, a short concurrent throughput check: N client threads, each with its own
keep-alive connection, send `/ping` to one server as fast as it answers, for
rounds of half a second, variants interleaved (c a b, b a, a b, b a, c a b,
...); b/a is also given as the median of the per-round ratios.

Servers are stopped at the end, on exceptions and on Ctrl-C; each one also
stops itself if this process disappears.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import machine
from harness import (
    ab_ratios,
    env_with_path,
    free_port,
    latency_stats,
    print_variants,
    rotation,
    terminate,
    uvicorn_command,
    verdict,
    wait_or_kill,
)

HERE = Path(__file__).resolve().parent
KEYS = ("a", "b", "c")
LABELS = {
    "a": "FastAPIInstrumentor",
    "b": "+ carbonspan",
    "c": "+ tracker per request",
    "z": "a again (control)",
}
STATS = "/_bench/stats"


class Connection:
    """One persistent keep-alive HTTP/1.1 connection to 127.0.0.1:port."""

    def __init__(self, port: int, timeout: float = 60.0) -> None:
        self.port = port
        self.timeout = timeout
        self.reconnects = 0
        self._conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def get(self, path: str) -> tuple[int, bytes]:
        for attempt in (0, 1):
            try:
                self._conn.request("GET", path)
                response = self._conn.getresponse()
                return response.status, response.read()
            except (http.client.HTTPException, ConnectionError):
                # The server closed an idle connection: open a new one once.
                self._conn.close()
                if attempt:
                    raise
                self.reconnects += 1
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._conn.close()


@dataclass
class Server:
    """One uvicorn server for one variant."""

    key: str
    loops: int
    country: str
    loop: str = "uvloop"
    http: str = "httptools"
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log: Any = None
    conn: Connection | None = None
    latencies: dict[str, list[int]] = field(default_factory=dict)
    errors: int = 0

    def start(self) -> None:
        self.port = free_port()
        env = {
            **env_with_path(str(HERE)),
            "BENCH_VARIANT": "a" if self.key == "z" else self.key,
            "BENCH_LOOPS": str(self.loops),
            "BENCH_COUNTRY": self.country,
            "BENCH_PARENT_PID": str(os.getpid()),
        }
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop())
        command = uvicorn_command(
            "bench_app:create_app",
            self.port,
            "--factory",
            "--workers",
            "1",
            loop=self.loop,
            http=self.http,
            keep_alive=120,
        )
        self.proc = subprocess.Popen(
            command, cwd=HERE, env=env, stdout=self.log, stderr=subprocess.STDOUT
        )

    def output(self) -> str:
        if self.log is None:
            return ""
        self.log.seek(0)
        text: str = self.log.read().decode(errors="replace")
        return text

    def wait_ready(self, deadline: float) -> dict[str, Any]:
        """Wait until the server answers and (for b) the sampler has readings."""
        assert self.proc is not None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server {self.key} exited with {self.proc.returncode}:\n"
                    + self.output()[-3000:]
                )
            try:
                if self.conn is None:
                    self.conn = Connection(self.port)
                stats = self.stats()
                if stats["ready"]:
                    return stats
            except (OSError, http.client.HTTPException, ValueError):
                if self.conn is not None:
                    self.conn.close()
                    self.conn = None
            time.sleep(0.05)
        raise RuntimeError(
            f"server {self.key} not ready in time:\n" + self.output()[-3000:]
        )

    def stats(self) -> dict[str, Any]:
        assert self.conn is not None
        status, body = self.conn.get(STATS)
        if status != 200:
            raise ValueError(f"{STATS}: status {status}")
        stats: dict[str, Any] = json.loads(body)
        return stats

    def terminate(self) -> None:
        """Close our connection and ask the server to shut down (SIGTERM)."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.proc is not None:
            terminate(self.proc)

    def stop(self) -> None:
        """Terminate, wait for the server to exit (kill it after 15 s)."""
        self.terminate()
        if self.proc is not None:
            wait_or_kill(self.proc, 15)
        if self.log is not None:
            self.log.close()
            self.log = None


# -- the runs ------------------------------------------------------------------


def cpu_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    # The process's threads and its finished children (c's lscpu runs).
    out = {
        "cpu_s": after["cpu_s"]
        - before["cpu_s"]
        + after.get("children_cpu_s", 0.0)
        - before.get("children_cpu_s", 0.0),
        "wall_s": after["wall_s"] - before["wall_s"],
        "sampler_cpu_s": 0.0,
    }
    if before.get("sampler_cpu_s") is not None and after.get("sampler_cpu_s"):
        out["sampler_cpu_s"] = after["sampler_cpu_s"] - before["sampler_cpu_s"]
    return out


def alternate(
    path: str,
    servers: dict[str, Server],
    rounds: int,
    every: int,
    max_seconds: float,
) -> int:
    """Single requests, alternating between the servers (see `rotation`), for
    `rounds` rounds or `max_seconds`; returns the rounds done."""
    fast = (servers["a"], servers["b"]) + ((servers["z"],) if "z" in servers else ())
    c = servers.get("c")
    for s in servers.values():
        s.latencies[path] = []
    perf = time.perf_counter_ns
    deadline = time.monotonic() + max_seconds
    done = 0
    for r in range(rounds):
        for s in rotation(r, fast, c, every):
            conn = s.conn
            assert conn is not None
            t0 = perf()
            status, _ = conn.get(path)
            t1 = perf()
            if status != 200:
                s.errors += 1
            s.latencies[path].append(t1 - t0)
        done = r + 1
        if time.monotonic() > deadline:
            break
    return done


def variant_row(
    key: str, server: Server, path: str, delta: dict[str, float]
) -> dict[str, Any]:
    """One server's latencies, and its CPU per request from its own clock."""
    n = len(server.latencies[path])
    request_cpu = delta["cpu_s"] - delta["sampler_cpu_s"]
    return {
        "label": LABELS[key],
        **latency_stats(server.latencies[path]),
        "server_cpu_us": request_cpu / n * 1e6 if n else float("nan"),
        "server_cpu_with_sampler_us": delta["cpu_s"] / n * 1e6 if n else 0.0,
        "sampler_cpu_s": delta["sampler_cpu_s"],
        "wall_s": delta["wall_s"],
    }


def run_endpoint(
    path: str,
    servers: dict[str, Server],
    rounds: int,
    every: int,
    max_seconds: float,
) -> dict[str, Any]:
    """Alternate single requests between the servers; medians per variant."""
    before = {k: s.stats() for k, s in servers.items()}
    done = alternate(path, servers, rounds, every, max_seconds)
    after = {k: s.stats() for k, s in servers.items()}
    out: dict[str, Any] = {"path": path, "rounds": done, "variants": {}}
    for key, s in servers.items():
        delta = cpu_delta(before[key], after[key])
        out["variants"][key] = variant_row(key, s, path, delta)
    v = out["variants"]
    va, vb = v["a"], v["b"]
    out.update(ab_ratios(servers["a"].latencies[path], servers["b"].latencies[path]))
    out["added_server_cpu_us"] = vb["server_cpu_us"] - va["server_cpu_us"]
    out["added_server_cpu_with_sampler_us"] = (
        vb["server_cpu_with_sampler_us"] - va["server_cpu_with_sampler_us"]
    )
    out["b_over_a_server_cpu"] = va["server_cpu_us"] / vb["server_cpu_us"]
    if "z" in v:
        out["z_over_a"] = va["median_us"] / v["z"]["median_us"]
        out["z_added_server_cpu_us"] = v["z"]["server_cpu_us"] - va["server_cpu_us"]
    if "c" in v:
        out["b_over_c"] = v["c"]["median_us"] / vb["median_us"]
        out["b_over_c_server_cpu"] = v["c"]["server_cpu_us"] / vb["server_cpu_us"]
    return out


COLUMNS = (
    ("median µs", "median_us", 11, ".1f"),
    ("p10 µs", "p10_us", 9, ".1f"),
    ("p90 µs", "p90_us", 9, ".1f"),
    ("req/s", "requests_per_s", 8, ".0f"),
    ("server CPU µs/req", "server_cpu_us", 19, ".1f"),
)


def print_endpoint(s: dict[str, Any]) -> None:
    print()
    print(f"== HTTP GET {s['path']}  ({s['rounds']} rounds)")
    print_variants(s["variants"], COLUMNS)
    h1, h2 = s["b_over_a_halves"]
    print(
        f"  b/a req/s: {s['b_over_a']:.4f}  ({verdict(s['b_over_a'])} goal >= 0.97; "
        f"halves {h1:.4f} / {h2:.4f}; paired median "
        f"{s['b_over_a_paired_median']:.4f}; by server CPU "
        f"{s['b_over_a_server_cpu']:.4f})"
    )
    if "z_over_a" in s:
        print(
            f"  control z/a req/s: {s['z_over_a']:.4f}, server CPU "
            f"{s['z_added_server_cpu_us']:+.1f} µs per request (the run's noise)"
        )
    if "b_over_c" in s:
        print(
            f"  b/c req/s: {s['b_over_c']:.1f}x  "
            f"(by server CPU {s['b_over_c_server_cpu']:.1f}x)"
        )
    print(
        f"  added per request (b - a): {s['added_us']:+.1f} µs wall "
        f"(paired median {s['added_us_paired_median']:+.1f} µs), "
        f"{s['added_server_cpu_us']:+.1f} µs server CPU "
        f"({s['added_server_cpu_with_sampler_us']:+.1f} µs with b's sampler thread)"
    )


# -- the throughput check ------------------------------------------------------


def burst(pool: list[Connection], seconds: float) -> tuple[float, int]:
    """Every connection of `pool` in its own thread, sending `/ping` as fast
    as the server answers for `seconds`: (requests/s, non-200 responses)."""
    clients = len(pool)
    counts = [0] * clients
    bad = [0] * clients
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def work(i: int) -> None:
        start.wait()
        n = 0
        while time.perf_counter() < stop_at[0]:
            status, _ = pool[i].get("/ping")
            n += 1
            if status != 200:
                bad[i] += 1
        counts[i] = n

    threads = [
        threading.Thread(target=work, args=(i,), daemon=True) for i in range(clients)
    ]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    stop_at[0] = t0 + seconds
    start.wait()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0), sum(bad)


def throughput(
    servers: dict[str, Server], clients: int, rounds: int, seconds: float
) -> dict[str, Any]:
    """N threads, one keep-alive connection each, as fast as the server answers;
    rounds of `seconds` per variant, a b / b a interleaved (c every 4th round);
    median req/s per variant, and the median of the per-round b/a ratios."""
    pools = {
        key: [Connection(server.port) for _ in range(clients)]
        for key, server in servers.items()
    }
    for pool in pools.values():  # connect and warm every connection
        for conn in pool:
            conn.get("/ping")
    rates: dict[str, list[float]] = {k: [] for k in servers}
    errors = dict.fromkeys(servers, 0)
    try:
        for r in range(rounds):
            order = ["a", "b"] if r % 2 == 0 else ["b", "a"]
            if "c" in servers and r % 4 == 0:  # slow, and not the point here
                order.insert(0, "c")
            for key in order:
                rate, bad = burst(pools[key], seconds)
                rates[key].append(rate)
                errors[key] += bad
    finally:
        for pool in pools.values():
            for conn in pool:
                conn.close()
    out = {"clients": clients, "rounds": rounds, "seconds": seconds, "errors": errors}
    return {**out, **compare_rates(rates)}


def compare_rates(rates: dict[str, list[float]]) -> dict[str, Any]:
    """Each variant's median, min and max req/s; b/a and b/c."""
    out: dict[str, Any] = {
        "variants": {
            k: {
                "median_rps": statistics.median(v),
                "min_rps": min(v),
                "max_rps": max(v),
            }
            for k, v in rates.items()
        },
        "rates": rates,
    }
    med = {k: v["median_rps"] for k, v in out["variants"].items()}
    out["b_over_a"] = med["b"] / med["a"]
    out["b_over_a_paired_median"] = statistics.median(
        [y / x for x, y in zip(rates["a"], rates["b"], strict=True)]
    )
    if "c" in med:
        out["b_over_c"] = med["b"] / med["c"]
    return out


def print_throughput(t: dict[str, Any]) -> None:
    print()
    print(
        f"== HTTP throughput on /ping: {t['clients']} keep-alive connections, "
        f"{t['rounds']} interleaved rounds of {t['seconds']} s"
        + (" (c every 4th)" if "c" in t["variants"] else "")
    )
    for key, v in t["variants"].items():
        print(
            f"  {key + '  ' + LABELS[key]:<34} median {v['median_rps']:>7.0f} req/s "
            f"(min {v['min_rps']:.0f}, max {v['max_rps']:.0f})"
        )
    line = (
        f"  b/a: {t['b_over_a']:.4f} (paired median {t['b_over_a_paired_median']:.4f})"
    )
    if "b_over_c" in t:
        line += f";  b/c: {t['b_over_c']:.1f}x"
    print(line)
    if any(t["errors"].values()):
        print(f"  non-200 responses: {t['errors']}")


# -- one server stack ----------------------------------------------------------


def server_stack(loop: str, parser: str) -> str:
    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    return (
        f"uvicorn {version('uvicorn')} (loop {loop}, http {parser}; "
        f"uvloop {version('uvloop')}, httptools {version('httptools')}, "
        f"h11 {version('h11')}), 1 worker per server, client http.client"
    )


def available_stacks(wanted: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (loop, http) pairs whose packages are installed."""
    out = []
    for loop, parser in wanted:
        missing = [
            name
            for name in (loop, parser)
            if name in ("uvloop", "httptools") and not importlib.util.find_spec(name)
        ]
        if missing:
            print(
                f"  skipping loop {loop} / http {parser}: {', '.join(missing)} missing"
            )
        else:
            out.append((loop, parser))
    return out


def idle_sampler(server: Server, seconds: float) -> dict[str, float]:
    """b's sampler thread over `seconds` with no request at all."""
    before = server.stats()
    time.sleep(seconds)
    after = server.stats()
    delta = cpu_delta(before, after)
    idle = {
        "seconds": delta["wall_s"],
        "sampler_cpu_s": delta["sampler_cpu_s"],
        "core_percent": delta["sampler_cpu_s"] / delta["wall_s"] * 100.0,
    }
    print(
        f"  b's sampler thread while idle: {idle['core_percent']:.3f}% of "
        f"one core over {idle['seconds']:.1f} s (budget 0.5%)"
    )
    return idle


def start_servers(servers: dict[str, Server], began: float) -> None:
    """Start every server; return once each answers (b with readings)."""
    for s in servers.values():
        s.start()
    deadline = time.monotonic() + 120
    ready = {k: s.wait_ready(deadline) for k, s in servers.items()}
    info = ready["b"]["sampler"]
    print(
        f"  servers up after {time.perf_counter() - began:.1f} s on ports "
        + ", ".join(f"{k} {s.port}" for k, s in servers.items())
        + f"; b's sampler: measurement {info.get('measurement')}, "
        f"interval {info.get('interval')} s"
    )


def warm_up(servers: dict[str, Server], warmup: int) -> None:
    """`warmup` requests per server and path; c's first pays CodeCarbon's cold
    hardware detection."""
    for path in ("/ping", "/cpu"):
        for key, s in servers.items():
            n = warmup if key != "c" else max(3, warmup // 20)
            assert s.conn is not None
            t0 = time.perf_counter()
            for _ in range(n):
                status, _ = s.conn.get(path)
                if status != 200:
                    raise RuntimeError(f"{key} {path}: status {status}")
            if key == "c" and path == "/ping":
                print(
                    f"  c: warm-up of {n} requests took "
                    f"{time.perf_counter() - t0:.2f} s (first tracker included)"
                )


def measure(
    args: Any, servers: dict[str, Server], throughput_check: bool
) -> dict[str, Any]:
    """Both endpoints in alternation, then the throughput check."""
    results: dict[str, Any] = {}
    endpoints = []
    for path, rounds in (
        ("/ping", args.http_requests),
        ("/cpu", args.http_cpu_requests),
    ):
        t = time.perf_counter()
        summary = run_endpoint(
            path, servers, rounds, args.obvious_every, args.http_max_seconds
        )
        summary["seconds"] = time.perf_counter() - t
        endpoints.append(summary)
    for summary in endpoints:
        print_endpoint(summary)
    results["endpoints"] = endpoints
    if args.http_throughput_rounds > 0 and throughput_check:
        tp = throughput(
            {k: v for k, v in servers.items() if k != "z"},
            args.http_clients,
            args.http_throughput_rounds,
            args.http_throughput_seconds,
        )
        print_throughput(tp)
        results["throughput"] = tp
    return results


def sampler_and_load(
    servers: dict[str, Server],
    first: dict[str, dict[str, Any]],
    last: dict[str, dict[str, Any]],
    load0: machine.Snapshot | None,
) -> dict[str, Any]:
    """b's sampler thread under traffic, and the rest of the machine's load."""
    servers_cpu = sum(cpu_delta(first[k], last[k])["cpu_s"] for k in servers)
    load = machine.others(load0, machine.snapshot(), servers_cpu)
    whole = cpu_delta(first["b"], last["b"])
    live = whole["sampler_cpu_s"] / whole["wall_s"] * 100.0
    print()
    print(
        f"  b's live sampler thread: {live:.3f}% of one core over "
        f"{whole['wall_s']:.0f} s of traffic (budget 0.5%)"
    )
    print(f"  {machine.describe(load)}")
    return {"machine_load": load, "sampler_live_core_percent": live}


def checks(
    servers: dict[str, Server], last: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Spans with energy, outbound attempts, reconnects and errors."""
    sanity = {
        k: (last[k]["spans_with_energy"], last[k]["server_spans"]) for k in servers
    }
    print(
        "  sanity: server spans with codecarbon.energy.total: "
        + ", ".join(f"{k} {w}/{n}" for k, (w, n) in sanity.items())
        + f"; b's last value {last['b']['last_energy']!r} J"
    )
    blocked = {k: last[k]["network_blocked"] for k in servers}
    if any(blocked.values()):
        print(f"  servers' outbound attempts BLOCKED: {blocked}")
    else:
        print("  servers: no outbound connection or lookup attempted")
    reconnects = {
        k: s.conn.reconnects for k, s in servers.items() if s.conn is not None
    }
    errors = {k: s.errors for k, s in servers.items()}
    if any(reconnects.values()) or any(errors.values()):
        print(f"  reconnects {reconnects}, non-200 responses {errors}")
    return {
        "spans_with_energy": sanity,
        "server_network_blocked": blocked,
        "reconnects": reconnects,
        "errors": errors,
    }


def run(
    args: Any,
    loops: int,
    country: str,
    loop: str = "uvloop",
    parser: str = "httptools",
    obvious: bool = True,
    throughput_check: bool = True,
) -> dict[str, Any]:
    """One server stack's HTTP mode; prints as it goes and returns the figures."""
    began = time.perf_counter()
    keys = KEYS if args.obvious_every > 0 and obvious else KEYS[:2]
    if args.control:
        keys = (*keys, "z")
    servers = {k: Server(k, loops, country, loop, parser) for k in keys}
    stack = server_stack(loop, parser)
    print()
    print("carbonspan overhead over HTTP (real uvicorn servers, 127.0.0.1)")
    print(f"  {stack}")
    results: dict[str, Any] = {"server_stack": stack, "loop": loop, "http": parser}
    try:
        start_servers(servers, began)
        warm_up(servers, args.warmup)
        if args.http_idle_seconds > 0:
            results["sampler_idle"] = idle_sampler(servers["b"], args.http_idle_seconds)
        first = {k: s.stats() for k, s in servers.items()}
        load0 = machine.snapshot()
        results.update(measure(args, servers, throughput_check))
        last = {k: s.stats() for k, s in servers.items()}
        results.update(sampler_and_load(servers, first, last, load0))
        results.update(checks(servers, last))
    finally:
        for s in servers.values():  # all at once, then wait for each
            s.terminate()
        for s in servers.values():
            s.stop()
    results["elapsed_s"] = time.perf_counter() - began
    print(f"  HTTP mode took {results['elapsed_s']:.0f} s")
    return results
