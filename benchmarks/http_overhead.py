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
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import machine

HERE = Path(__file__).resolve().parent
KEYS = ("a", "b", "c")
LABELS = {
    "a": "FastAPIInstrumentor",
    "b": "+ carbonspan",
    "c": "+ tracker per request",
    "z": "a again (control)",
}
STATS = "/_bench/stats"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


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
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p
            ),
            "BENCH_VARIANT": "a" if self.key == "z" else self.key,
            "BENCH_LOOPS": str(self.loops),
            "BENCH_COUNTRY": self.country,
            "BENCH_PARENT_PID": str(os.getpid()),
        }
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop())
        command = [
            sys.executable, "-m", "uvicorn", "bench_app:create_app", "--factory",
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
            "--loop", self.loop, "--http", self.http,
            "--log-level", "warning", "--no-access-log",
            "--timeout-keep-alive", "120",
        ]  # fmt: skip
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
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        """Terminate, wait for the server to exit (kill it after 15 s)."""
        self.terminate()
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self.log is not None:
            self.log.close()
            self.log = None


# -- statistics ----------------------------------------------------------------


def median_us(values: list[int]) -> float:
    return statistics.median(values) / 1000.0 if values else float("nan")


def pct_us(values: list[int], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000.0


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


# -- the runs ------------------------------------------------------------------


def run_endpoint(
    path: str,
    servers: dict[str, Server],
    rounds: int,
    every: int,
    max_seconds: float,
) -> dict[str, Any]:
    """Alternate single requests between the servers; medians per variant."""
    a, b = servers["a"], servers["b"]
    c = servers.get("c")
    fast = (a, b) + ((servers["z"],) if "z" in servers else ())
    before = {k: s.stats() for k, s in servers.items()}
    for s in servers.values():
        s.latencies[path] = []
    perf = time.perf_counter_ns
    deadline = time.monotonic() + max_seconds
    done = 0
    for r in range(rounds):
        k = r % len(fast)
        order: tuple[Server, ...] = fast[k:] + fast[:k]
        if r % 2:
            order = order[::-1]
        if c is not None and r % every == 0:
            order = (c, *order)
        for s in order:
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
    after = {k: s.stats() for k, s in servers.items()}

    out: dict[str, Any] = {"path": path, "rounds": done, "variants": {}}
    for key, s in servers.items():
        lat = s.latencies[path]
        med = median_us(lat)
        delta = cpu_delta(before[key], after[key])
        n = len(lat)
        request_cpu = delta["cpu_s"] - delta["sampler_cpu_s"]
        out["variants"][key] = {
            "label": LABELS[key],
            "n": n,
            "median_us": med,
            "p10_us": pct_us(lat, 0.10),
            "p90_us": pct_us(lat, 0.90),
            "requests_per_s": 1e6 / med,
            "server_cpu_us": request_cpu / n * 1e6 if n else float("nan"),
            "server_cpu_with_sampler_us": delta["cpu_s"] / n * 1e6 if n else 0.0,
            "sampler_cpu_s": delta["sampler_cpu_s"],
            "wall_s": delta["wall_s"],
        }
    va, vb = out["variants"]["a"], out["variants"]["b"]
    aw, bw = a.latencies[path], b.latencies[path]
    half = len(aw) // 2
    out["b_over_a"] = va["median_us"] / vb["median_us"]
    out["b_over_a_halves"] = [
        statistics.median(aw[:half]) / statistics.median(bw[:half]),
        statistics.median(aw[half:]) / statistics.median(bw[half:]),
    ]
    out["b_over_a_paired_median"] = statistics.median(
        [x / y for x, y in zip(aw, bw, strict=True)]
    )
    out["added_us"] = vb["median_us"] - va["median_us"]
    out["added_us_paired_median"] = (
        statistics.median([y - x for x, y in zip(aw, bw, strict=True)]) / 1000.0
    )
    out["added_server_cpu_us"] = vb["server_cpu_us"] - va["server_cpu_us"]
    out["added_server_cpu_with_sampler_us"] = (
        vb["server_cpu_with_sampler_us"] - va["server_cpu_with_sampler_us"]
    )
    out["b_over_a_server_cpu"] = va["server_cpu_us"] / vb["server_cpu_us"]
    if "z" in servers:
        vz = out["variants"]["z"]
        out["z_over_a"] = va["median_us"] / vz["median_us"]
        out["z_added_server_cpu_us"] = vz["server_cpu_us"] - va["server_cpu_us"]
    if c is not None:
        out["b_over_c"] = out["variants"]["c"]["median_us"] / vb["median_us"]
        out["b_over_c_server_cpu"] = (
            out["variants"]["c"]["server_cpu_us"] / vb["server_cpu_us"]
        )
    return out


def print_endpoint(s: dict[str, Any]) -> None:
    print()
    print(f"== HTTP GET {s['path']}  ({s['rounds']} rounds)")
    print(
        f"  {'variant':<34}{'n':>7}{'median µs':>11}{'p10 µs':>9}{'p90 µs':>9}"
        f"{'req/s':>8}{'server CPU µs/req':>19}"
    )
    for key, v in s["variants"].items():
        print(
            f"  {key + '  ' + v['label']:<34}{v['n']:>7}{v['median_us']:>11.1f}"
            f"{v['p10_us']:>9.1f}{v['p90_us']:>9.1f}{v['requests_per_s']:>8.0f}"
            f"{v['server_cpu_us']:>19.1f}"
        )
    h1, h2 = s["b_over_a_halves"]
    verdict = "meets" if s["b_over_a"] >= 0.97 else "MISSES"
    print(
        f"  b/a req/s: {s['b_over_a']:.4f}  ({verdict} goal >= 0.97; "
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

    def burst(key: str) -> float:
        counts = [0] * clients
        bad = [0] * clients
        start = threading.Barrier(clients + 1)
        stop_at = [0.0]

        def work(i: int) -> None:
            conn = pools[key][i]
            start.wait()
            n = 0
            while time.perf_counter() < stop_at[0]:
                status, _ = conn.get("/ping")
                n += 1
                if status != 200:
                    bad[i] += 1
            counts[i] = n

        threads = [
            threading.Thread(target=work, args=(i,), daemon=True)
            for i in range(clients)
        ]
        for t in threads:
            t.start()
        t0 = time.perf_counter()
        stop_at[0] = t0 + seconds
        start.wait()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        errors[key] += sum(bad)
        return sum(counts) / elapsed

    try:
        for r in range(rounds):
            order = ["a", "b"] if r % 2 == 0 else ["b", "a"]
            if "c" in servers and r % 4 == 0:  # slow, and not the point here
                order.insert(0, "c")
            for key in order:
                rates[key].append(burst(key))
    finally:
        for pool in pools.values():
            for conn in pool:
                conn.close()
    out: dict[str, Any] = {
        "clients": clients,
        "rounds": rounds,
        "seconds": seconds,
        "errors": errors,
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
    return {
        "seconds": delta["wall_s"],
        "sampler_cpu_s": delta["sampler_cpu_s"],
        "core_percent": delta["sampler_cpu_s"] / delta["wall_s"] * 100.0,
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

        # Warm-up; c's first request pays CodeCarbon's cold hardware detection.
        for path in ("/ping", "/cpu"):
            for key, s in servers.items():
                n = args.warmup if key != "c" else max(3, args.warmup // 20)
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

        if args.http_idle_seconds > 0:
            idle = idle_sampler(servers["b"], args.http_idle_seconds)
            results["sampler_idle"] = idle
            print(
                f"  b's sampler thread while idle: {idle['core_percent']:.3f}% of "
                f"one core over {idle['seconds']:.1f} s (budget 0.5%)"
            )
        first = {k: s.stats() for k, s in servers.items()}
        load0 = machine.snapshot()
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

        last = {k: s.stats() for k, s in servers.items()}
        load1 = machine.snapshot()
        servers_cpu = sum(cpu_delta(first[k], last[k])["cpu_s"] for k in servers)
        load = machine.others(load0, load1, servers_cpu)
        results["machine_load"] = load
        whole = cpu_delta(first["b"], last["b"])
        live = whole["sampler_cpu_s"] / whole["wall_s"] * 100.0
        results["sampler_live_core_percent"] = live
        print()
        print(
            f"  b's live sampler thread: {live:.3f}% of one core over "
            f"{whole['wall_s']:.0f} s of traffic (budget 0.5%)"
        )
        print(f"  {machine.describe(load)}")
        sanity = {
            k: (last[k]["spans_with_energy"], last[k]["server_spans"]) for k in servers
        }
        results["spans_with_energy"] = sanity
        print(
            "  sanity: server spans with codecarbon.energy.total: "
            + ", ".join(f"{k} {w}/{n}" for k, (w, n) in sanity.items())
            + f"; b's last value {last['b']['last_energy']!r} J"
        )
        blocked = {k: last[k]["network_blocked"] for k in servers}
        results["server_network_blocked"] = blocked
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
        results["reconnects"] = reconnects
        results["errors"] = errors
    finally:
        for s in servers.values():  # all at once, then wait for each
            s.terminate()
        for s in servers.values():
            s.stop()
    results["elapsed_s"] = time.perf_counter() - began
    print(f"  HTTP mode took {results['elapsed_s']:.0f} s")
    return results
