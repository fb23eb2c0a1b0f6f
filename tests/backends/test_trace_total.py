"""A trace's total energy, out of band: summed from its spans in a real
Phoenix with the query docs/traces.md gives, it equals what the caller
learnt in band (`codecarbon.energy.inclusive`)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.backends import Phoenix
from support.checks import wait_for
from support.server import Server, uvicorn

pytestmark = pytest.mark.backends
PROJECT = "carbonspan-chain"


def per_trace(spans: list[dict[str, Any]]) -> dict[str, float]:
    """docs/traces.md's Phoenix query: codecarbon.energy.total by trace."""
    totals: dict[str, float] = defaultdict(float)
    for span in spans:
        joules = span["attributes"].get("codecarbon.energy.total")
        if joules is not None:
            totals[span["context"]["trace_id"]] += joules
    return dict(totals)


def test_phoenix_sums_a_trace_to_the_callers_inclusive_energy(tmp_path: Path) -> None:
    with Phoenix(tmp_path) as phoenix:
        common = {
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": phoenix.otlp,
            "PHOENIX_PROJECT": PROJECT,
        }
        callee_env = {
            **common,
            "CHAIN_SPANS": str(tmp_path / "b.jsonl"),
            "CARBONSPAN_RESPONSE_HEADERS": "energy",
        }
        with Server(uvicorn("support.chain_app:app"), callee_env, "/health") as b:
            caller_env = {
                **common,
                "CHAIN_SPANS": str(tmp_path / "a.jsonl"),
                "CHAIN_NEXT": b.url + "/work",
                "CHAIN_CALLS": "2",
                "CARBONSPAN_DOWNSTREAM_ENERGY": "true",
            }
            with Server(uvicorn("support.chain_app:app"), caller_env, "/health") as a:
                for _ in range(2):
                    r = httpx.get(a.url + "/work", params={"ms": 300}, timeout=30)
                    assert r.status_code == 200
                a.stop()  # SIGTERM: what is queued is flushed at shutdown
            b.stop()

        def callers() -> list[dict[str, Any]]:
            spans = phoenix.spans(PROJECT)
            return [
                s for s in spans if "codecarbon.energy.inclusive" in s["attributes"]
            ]

        wait_for(lambda: len(callers()) == 2, timeout=60, interval=0.5)
        traces = {s["context"]["trace_id"] for s in callers()}

        def measured_in_traces() -> int:
            return sum(
                s["context"]["trace_id"] in traces
                and "codecarbon.energy.total" in s["attributes"]
                for s in phoenix.spans(PROJECT)
            )

        # A's server span and B's two, in each of the two traces.
        wait_for(lambda: measured_in_traces() == 6, timeout=60, interval=0.5)
        totals = per_trace(phoenix.spans(PROJECT))
        inclusive = {
            s["context"]["trace_id"]: s["attributes"]["codecarbon.energy.inclusive"]
            for s in callers()
        }
    assert set(inclusive) <= set(totals)
    for trace_id, joules in inclusive.items():
        assert totals[trace_id] == pytest.approx(joules, rel=0.02)
