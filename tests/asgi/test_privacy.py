"""Privacy and cardinality (hardening item 9).

carbonspan's metric attributes carry route templates, methods and status codes
only: never raw paths, ids, query strings or headers. 10,000 requests with
distinct raw paths, secrets in their queries and headers, unknown routes and
made-up methods leave a handful of label sets. Response headers stay off
unless asked for.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from carbonspan.otel import attributes as a
from carbonspan.testing import ConstantPowerSource
from support.apps import build_app
from support.asgi import call
from support.checks import assert_no_open_window
from support.otel import Instrumented, Otel, attrs, ready_app, wait_ready

ALLOWED_KEYS = {a.HTTP_ROUTE, a.HTTP_METHOD, a.HTTP_STATUS, a.HW_TYPE, a.ATTRIBUTED}
CODECARBON_METRICS = (
    "codecarbon.request.energy",
    "codecarbon.request.emissions",
    "codecarbon.energy",
    "codecarbon.emissions",
    "codecarbon.power",
    "codecarbon.requests.in_flight",
    "codecarbon.carbon_intensity",
)


def requests() -> list[dict[str, Any]]:
    """10,000 requests, every one with its own raw path."""
    out: list[dict[str, Any]] = []
    for n in range(7000):  # a known route, with ids and secrets around it
        out.append({
            "path": f"/items/{n}",
            "query": f"token=SECRET-{n}&email=user{n}@example.com".encode(),
            "headers": [(b"authorization", f"Bearer SECRET-{n}".encode()),
                        (b"cookie", f"session=SECRET-{n}".encode()),
                        (b"x-user-id", f"user{n}".encode())],
        })  # fmt: skip
    for n in range(2000):  # unknown routes, ids in the path
        out.append({"path": f"/users/u{n:05d}-SECRET/orders/{n}", "query": b""})
    for n in range(1000):  # made-up methods on a known route
        out.append({"path": f"/items/{7000 + n}", "method": f"X-METHOD-{n % 100}"})
    return out


def test_10000_raw_paths_leave_a_handful_of_label_sets(
    otel: Otel, instrument: Instrumented
) -> None:
    app, inst = ready_app(
        instrument,
        otel,
        contrib=None,  # carbonspan's own metrics alone, at 10,000 requests
        power_source=ConstantPowerSource(cpu=10.0, ram=2.0),
        sample_interval=0.01,
    )
    reqs = requests()
    assert len({r["path"] for r in reqs}) == 10_000

    async def go() -> list[tuple[int, dict[bytes, bytes]]]:
        out = []
        for r in reqs:
            exchange = await call(app, r.pop("path"), **r)
            out.append((exchange.status, exchange.headers))
        return out

    results = asyncio.run(go())
    statuses = [status for status, _ in results]
    assert statuses.count(200) == 7000 and statuses.count(404) == 2000
    assert statuses.count(405) == 1000
    # No figures in the responses: headers are off unless asked for.
    for _, headers in results:
        assert not [
            h for h in headers if h.startswith((b"x-codecarbon", b"server-timing"))
        ]
    inst.sampler.sample()

    points: dict[str, list[Any]] = {n: otel.points(n) for n in CODECARBON_METRICS}
    label_sets = {
        name: {json.dumps(dict(p.attributes or {}), sort_keys=True) for p in pts}
        for name, pts in points.items()
    }
    everything = json.dumps({k: sorted(v) for k, v in label_sets.items()})
    for leak in ("SECRET", "example.com", "token", "Bearer", "session", "user",
                 "/users", "/items/1", "X-METHOD"):  # fmt: skip
        assert leak not in everything, leak
    for pts in points.values():
        for p in pts:
            assert set(p.attributes or {}) <= ALLOWED_KEYS
    energy = {
        (p.attributes.get(a.HTTP_ROUTE), p.attributes[a.HTTP_METHOD],
         p.attributes[a.HTTP_STATUS]): p.count
        for p in points["codecarbon.request.energy"]
    }  # fmt: skip
    # One label set per template, method and status; the unknown routes
    # collapse into one (no http.route), the made-up methods into _OTHER.
    assert energy == {
        ("/items/{item_id}", "GET", 200): 7000,
        (None, "GET", 404): 2000,
        ("/items/{item_id}", "_OTHER", 405): 1000,
    }
    assert len(label_sets["codecarbon.request.emissions"]) == 3
    assert len(inst.metrics.queue.attributes) == 3  # the label cache is bounded too
    assert_no_open_window(inst, otel)


def test_span_figures_carry_no_request_data_and_headers_only_when_asked(
    otel: Otel, instrument: Instrumented
) -> None:
    secret = [(b"authorization", b"Bearer SECRET-1"), (b"cookie", b"session=SECRET-2")]
    quiet, loud = build_app(), build_app()
    for app, extra in ((quiet, {}), (loud, {"response_headers": True})):
        inst = instrument(
            app,
            otel,
            power_source=ConstantPowerSource(cpu=10.0),
            sample_interval=0.01,
            **extra,
        )
        wait_ready(inst)

    async def go(app: Any) -> dict[bytes, bytes]:
        exchange = await call(
            app, "/items/42?token=SECRET-3", headers=secret, spec_version="2.3"
        )
        assert exchange.status == 200
        return exchange.headers

    quiet_headers, loud_headers = asyncio.run(go(quiet)), asyncio.run(go(loud))
    ours = (b"x-codecarbon-energy", b"x-codecarbon-emissions", b"x-codecarbon-duration")
    assert not set(ours) & set(quiet_headers)
    assert set(ours) <= set(loud_headers)  # the check can see them when on
    for name in ours:
        float(loud_headers[name])  # numbers, nothing else
    spans = otel.server_spans()
    assert len(spans) == 2
    for span in spans:
        ours_on_span = attrs(span)
        assert ours_on_span[a.ENERGY_TOTAL] > 0
        text = json.dumps(ours_on_span)
        for leak in ("SECRET", "Bearer", "token", "/items"):
            assert leak not in text, leak
