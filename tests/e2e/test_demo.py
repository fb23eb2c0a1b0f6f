"""The README's first command: every request has figures, and the books balance."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from support import ROOT

pytestmark = pytest.mark.e2e

DEMO = ROOT / "examples" / "demo.py"


def test_demo_prints_each_request_and_balanced_totals() -> None:
    result = subprocess.run(
        [sys.executable, str(DEMO), "--requests", "1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    rows = [
        line for line in out.splitlines() if re.match(r"(sequential|concurrent) ", line)
    ]
    assert len(rows) >= 10
    for row in rows:
        cells = row.split()
        total_mj = float(cells[-3])
        assert total_mj > 0, row
    assert {"200", "404", "500"} <= {row.split()[2] for row in rows}
    gap = re.search(r"Attributed \+ unattributed is ([-+]\d+\.\d+)% off", out)
    assert gap is not None, out
    assert abs(float(gap.group(1))) <= 1.0
    shares = re.search(
        r"the metric's attributed total \(codecarbon.energy\) is ([\d.]+) J", out
    )
    rows_sum = re.search(r"had gone \(not on their spans\): ([\d.]+) J", out)
    assert shares and rows_sum and float(shares.group(1)) == float(rows_sum.group(1))
