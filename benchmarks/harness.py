"""What the benchmarks share: latency statistics and A/B comparison, thread CPU
clocks, an in-process ASGI request driver, and local servers on 127.0.0.1.

The scripts import it as `harness` (run as `python benchmarks/<name>.py`, the
folder is first on sys.path; the uvicorn servers get it on PYTHONPATH). It
imports nothing but the standard library, so bench_app.py can load it in a
server before CodeCarbon is imported, and it works with any carbonspan on the
path: the ASGI types are imported for annotations only.
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from carbonspan.types import ASGIApp, Message, Scope

T = TypeVar("T")

#: carbonspan's budget: b/a requests per second of at least this.
GOAL = 0.97


# -- statistics ----------------------------------------------------------------


def median_us(values_ns: Sequence[int]) -> float:
    return statistics.median(values_ns) / 1000.0 if values_ns else float("nan")


def pct_us(values_ns: Sequence[int], q: float) -> float:
    """The `q` quantile in µs (nearest rank, rounded down)."""
    if not values_ns:
        return float("nan")
    ordered = sorted(values_ns)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000.0


def latency_stats(values_ns: Sequence[int]) -> dict[str, float]:
    """One variant's per-request latencies (ns): n, median, p10, p90, req/s."""
    median = median_us(values_ns)
    return {
        "n": len(values_ns),
        "median_us": median,
        "p10_us": pct_us(values_ns, 0.10),
        "p90_us": pct_us(values_ns, 0.90),
        "requests_per_s": 1e6 / median,
    }


def ab_ratios(a_ns: Sequence[int], b_ns: Sequence[int]) -> dict[str, Any]:
    """b against a from latencies (ns) taken in alternation, round by round:
    the ratio of the medians (requests/s), in each half of the run and as the
    median of the per-round ratios, and the time b adds."""
    half = len(a_ns) // 2
    pairs = list(zip(a_ns, b_ns, strict=True))
    added_paired_ns = statistics.median([y - x for x, y in pairs])
    return {
        "b_over_a": median_us(a_ns) / median_us(b_ns),
        "b_over_a_halves": [
            statistics.median(a_ns[:half]) / statistics.median(b_ns[:half]),
            statistics.median(a_ns[half:]) / statistics.median(b_ns[half:]),
        ],
        "b_over_a_paired_median": statistics.median([x / y for x, y in pairs]),
        "added_us": median_us(b_ns) - median_us(a_ns),
        "added_us_paired_median": added_paired_ns / 1000.0,
    }


def verdict(b_over_a: float) -> str:
    return "meets" if b_over_a >= GOAL else "MISSES"


def print_variants(
    variants: dict[str, dict[str, Any]], columns: Sequence[tuple[str, str, int, str]]
) -> None:
    """A table, one row per variant: `key  label`, n, then each column given as
    (title, field, width, format)."""
    titles = "".join(f"{title:>{width}}" for title, _, width, _ in columns)
    print(f"  {'variant':<34}{'n':>7}{titles}")
    for key, v in variants.items():
        cells = "".join(f"{v[name]:>{width}{spec}}" for _, name, width, spec in columns)
        print(f"  {key + '  ' + v['label']:<34}{v['n']:>7}{cells}")


def rotation(
    r: int, fast: tuple[T, ...], slow: T | None = None, every: int = 0
) -> tuple[T, ...]:
    """Round `r`'s order: the `fast` variants rotated (each goes first equally
    often), reversed every other round; `slow` first in every `every`-th."""
    k = r % len(fast)
    order = fast[k:] + fast[:k]
    if r % 2:
        order = order[::-1]
    if slow is not None and r % every == 0:
        order = (slow, *order)
    return order


# -- CPU clocks ----------------------------------------------------------------


def find_thread(name: str) -> threading.Thread | None:
    for thread in threading.enumerate():
        if thread.name == name:
            return thread
    return None


def thread_cpu_s(thread: threading.Thread | None) -> float | None:
    """CPU seconds of a live thread (Linux), or None."""
    if thread is None or thread.ident is None:
        return None
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    except (AttributeError, OSError):
        return None


# -- in-process ASGI requests --------------------------------------------------


def http_scope(path: str) -> Scope:
    """A GET of `path` (with its ?query) from 127.0.0.1, as a server gives it."""
    path, _, query = path.partition("?")
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query.encode(),
        "headers": [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"bench")],
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
    }


async def timed_request(app: ASGIApp, path: str) -> tuple[int, int, int]:
    """One GET straight through ASGI, no sockets: (wall ns, the calling
    thread's CPU ns, status)."""
    scope = http_scope(path)
    received = False
    status = 0

    async def receive() -> Message:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.disconnect"}  # never block: the run must end

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    perf, cpu = time.perf_counter_ns, time.thread_time_ns
    w0, c0 = perf(), cpu()
    await app(scope, receive, send)
    c1, w1 = cpu(), perf()
    return w1 - w0, c1 - c0, status


# -- servers on 127.0.0.1 ------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def env_with_path(*dirs: str) -> dict[str, str]:
    """This process's environment with `dirs` first on PYTHONPATH."""
    path = [*dirs, os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}


def uvicorn_command(
    target: str,
    port: int,
    *options: str,
    loop: str = "asyncio",
    http: str = "h11",
    keep_alive: int = 60,
) -> list[str]:
    """argv for a uvicorn serving `target` on 127.0.0.1:`port`, quietly."""
    return [
        sys.executable, "-m", "uvicorn", target,
        "--host", "127.0.0.1", "--port", str(port),
        "--loop", loop, "--http", http,
        "--log-level", "warning", "--no-access-log",
        "--timeout-keep-alive", str(keep_alive),
        *options,
    ]  # fmt: skip


def wait_accepting(proc: subprocess.Popen[Any], port: int, timeout: float) -> None:
    """Return once 127.0.0.1:`port` accepts connections; raise if `proc`
    exits or `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            time.sleep(0.005)
    raise RuntimeError("server did not start")


def terminate(proc: subprocess.Popen[Any]) -> None:
    """Ask a server to shut down (SIGTERM, once), if it still runs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)


def wait_or_kill(proc: subprocess.Popen[Any], timeout: float) -> None:
    """Wait `timeout` seconds for `proc` to exit, then kill it."""
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def exit_with_parent(
    parent: int,
    stop: Callable[[], None],
    *,
    every: float = 0.5,
    limit: float | None = None,
) -> None:
    """In a server: call `stop` once the benchmark process `parent` is gone
    (checked every `every` s), or after `limit` s whatever."""
    started = time.monotonic()

    def watch() -> None:
        while True:
            time.sleep(every)
            late = limit is not None and time.monotonic() - started > limit
            if os.getppid() != parent or late:
                stop()
                return

    threading.Thread(target=watch, name="bench-parent-watch", daemon=True).start()
