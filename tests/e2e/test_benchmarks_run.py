"""The overhead benchmark runs to its end, every part of it, on a few
requests (its figures are not judged here: tests assert no timings)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from support import ROOT

pytestmark = pytest.mark.e2e

TINY = [
    "--in-process", "--requests", "40", "--cpu-requests", "10",
    "--middleware-requests", "40", "--micro-number", "200",
    "--sampler-samples", "5", "--total-blocks", "2", "--warmup", "10",
    "--obvious-every", "0",
]  # fmt: skip


def test_the_overhead_benchmark_runs_every_part(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "overhead.py"), *TINY,
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr
    results = json.loads(out.read_text())["in_process"]
    rows = set(results["middleware"])
    assert {
        "+ carbonspan (all)",
        "+ carbonspan (all), tenant set",
        "+ carbonspan (all), downstream_energy on",
        "+ synchronous floor (d)",
    } <= rows
    pieces = set(results["components_ns"])
    assert "PointQueue.record() (queue only)" in pieces
    assert "PointQueue.drain(), per point (batches of 200)" in pieces
    ping = results["endpoints"][0]
    assert set(ping["total_cpu_us"]) >= {"a", "b", "d"}
    assert results["network_blocked"] == []
