"""The Grafana dashboard's PromQL, and the queries docs/tenants.md gives, only
name metrics and labels carbonspan exposes, and are valid PromQL."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi import BackgroundTasks
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import REGISTRY, generate_latest

from carbonspan import CodeCarbonInstrumentor
from carbonspan.otel.instrumentor import instrumentation_of
from carbonspan.testing import ConstantPowerSource
from support import ROOT
from support.apps import build_app
from support.asgi import fetch
from support.otel import wait_ready

DASHBOARD = ROOT / "dashboards" / "carbonspan.json"
TENANTS_DOC = ROOT / "docs" / "tenants.md"
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$job": ".*"}
PROMQL_WORDS = {"by", "without", "le", "sum", "rate", "increase", "topk"}


def expressions(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [
        v["query"] for v in dashboard["templating"]["list"] if v.get("type") == "query"
    ]
    return exprs


def doc_queries() -> list[str]:
    """The ```promql blocks of docs/tenants.md."""
    found = re.findall(r"```promql\n(.*?)\n```", TENANTS_DOC.read_text(), re.S)
    assert len(found) == 6
    return found


@pytest.fixture(scope="module")
def exposition() -> str:
    """What Prometheus would scrape from an instrumented app, for real."""
    meter_provider = MeterProvider(metric_readers=[PrometheusMetricReader()])
    app = build_app()

    @app.get("/later")
    async def later(tasks: BackgroundTasks) -> dict[str, str]:
        tasks.add_task(time.sleep, 0.01)  # work after the response
        return {"ok": "yes"}

    CodeCarbonInstrumentor().instrument_app(
        app, power_source=ConstantPowerSource(cpu=3.0, ram=1.0),
        meter_provider=meter_provider, sample_interval=0.02,
        embodied_emissions=900.0,
    )  # fmt: skip
    try:
        inst = instrumentation_of(app)
        assert inst is not None
        wait_ready(inst)
        fetch(app, ["/items/1", "/later", "/tenant?name=acme"])
        return generate_latest(REGISTRY).decode()
    finally:
        CodeCarbonInstrumentor.uninstrument_app(app)
        meter_provider.shutdown()


def test_every_metric_in_the_dashboard_is_exposed(exposition: str) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exposed = set(re.findall(r"^(codecarbon_\w+?)(?:\{| )", exposition, re.M))
    labels = set(re.findall(r"(\w+)=\"", exposition)) | {"job", "le"}
    used = set()
    for expr in expressions(dashboard) + doc_queries():
        # Metric names: what is left once label groupings and matchers are out.
        bare = re.sub(r"\b(by|without) \([^)]*\)|\{[^}]*\}", "", expr)
        names = set(re.findall(r"\bcodecarbon_\w+", bare))
        assert names, expr
        used |= names
        assert names <= exposed, (expr, names - exposed)
        grouped = re.findall(r"\bby \(([^)]*)\)", expr)
        for group in grouped:
            for label in (g.strip() for g in group.split(",")):
                assert label in labels, (expr, label)
    # The panels the dashboard promises, each from the metric it should use.
    assert {
        "codecarbon_request_energy_joules_bucket",
        "codecarbon_emissions_grams_total",
        "codecarbon_power_watts",
        "codecarbon_energy_joules_total",
        "codecarbon_request_emissions_grams_total",
        "codecarbon_request_emissions_embodied_grams_total",
        "codecarbon_request_energy_joules_count",
    } <= used


def test_sci_panel_adds_embodied_to_operational_per_request_by_route() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    (panel,) = [p for p in dashboard["panels"] if p["title"].startswith("SCI")]
    expr = panel["targets"][0]["expr"]
    operational, _, rest = expr.partition(" + ")
    embodied, _, requests = rest.partition(") / ")
    assert "rate(codecarbon_request_emissions_grams_total" in operational
    assert "rate(codecarbon_request_emissions_embodied_grams_total" in embodied
    assert "rate(codecarbon_request_energy_joules_count" in requests
    for part in (operational, embodied, requests):
        assert "sum by (http_route)" in part
    assert panel["fieldConfig"]["defaults"]["unit"] == "massg"


def test_tenant_panel_reads_energy_and_emissions_by_tenant(exposition: str) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    (panel,) = [p for p in dashboard["panels"] if "by tenant" in p["title"]]
    energy, grams = (t["expr"] for t in panel["targets"])
    assert "increase(codecarbon_request_energy_joules_sum{" in energy
    assert "increase(codecarbon_request_emissions_grams_total{" in grams
    for expr in (energy, grams):
        assert expr.startswith("sum by (codecarbon_tenant) (")
        assert 'codecarbon_tenant!=""' in expr  # requests with no tenant left out
    # The exposition carries the label on both series, for the tenant named.
    for metric in (
        "codecarbon_request_energy_joules_sum",
        "codecarbon_request_emissions_grams_total",
    ):
        line = rf'^{metric}{{[^}}]*codecarbon_tenant="(\w+)"'
        assert re.findall(line, exposition, re.M) == ["acme"], metric
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_every_expression_is_valid_promql(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is needed for this test"
    dashboard = json.loads(DASHBOARD.read_text())
    rules = []
    for i, expr in enumerate(expressions(dashboard) + doc_queries()):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        if expr.startswith("label_values("):
            expr = re.match(r"label_values\((\w+)", expr).group(1)  # type: ignore[union-attr]
        rules.append({"record": f"carbonspan:panel{i}", "expr": expr})
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(rules)} rules found" in result.stdout


def test_dashboard_uses_a_datasource_variable_not_a_fixed_uid() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    assert dashboard["uid"] == "carbonspan"
