"""The docker-compose observability stack, validated with real tools.

Docker cannot run here, so nothing in it is started: each file is checked by
the tool that owns its format (compose-spec schema, promtool) or, for the
Collector, Tempo and Grafana files, parsed and cross-checked.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from carbonspan import CodeCarbonInstrumentor
from carbonspan.otel.instrumentor import instrumentation_of
from carbonspan.testing import ConstantPowerSource
from support import ROOT
from support.asgi import get

STACK = ROOT / "examples" / "observability-stack"
BIN = Path(sys.executable).parent


def load(name: str) -> Any:
    return yaml.safe_load((STACK / name).read_text())


def check_compose(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
         str(path)],
        capture_output=True, text=True,
    )  # fmt: skip


def test_compose_file_follows_the_compose_spec(tmp_path: Path) -> None:
    good = check_compose(STACK / "docker-compose.yml")
    assert good.returncode == 0, good.stdout + good.stderr
    # The validator does reject a broken file, so the pass above means something.
    broken = load("docker-compose.yml")
    broken["services"]["app"]["ports"] = "8000:8000"
    broken["services"]["app"]["restart_policy"] = "always"
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    assert check_compose(path).returncode != 0


def test_compose_mounts_and_builds_files_that_exist() -> None:
    compose = load("docker-compose.yml")
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert (STACK / source).exists(), (name, source)
    build = compose["services"]["app"]["build"]
    context = (STACK / build["context"]).resolve()
    dockerfile = context / build["dockerfile"]
    for line in dockerfile.read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (context / source).exists(), source
    assert (STACK / "../../dashboards/carbonspan.json").exists()


def test_prometheus_config_passes_promtool() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is needed for this test"
    result = subprocess.run(
        [promtool, "check", "config", str(STACK / "prometheus.yml")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_collector_pipelines_reference_what_is_defined() -> None:
    config = load("otel-collector.yaml")
    for pipeline in config["service"]["pipelines"].values():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in config[kind], (kind, component)
    traces = config["service"]["pipelines"]["traces"]["exporters"]
    assert {config["exporters"][e]["endpoint"] for e in traces} == {
        "jaeger:4317", "tempo:4317",
    }  # fmt: skip
    # Prometheus scrapes the collector where its exporter listens.
    port = config["exporters"]["prometheus"]["endpoint"].rsplit(":", 1)[1]
    targets = load("prometheus.yml")["scrape_configs"][0]["static_configs"][0]
    assert targets["targets"] == [f"otel-collector:{port}"]
    # The app sends OTLP where the collector receives it.
    app_env = load("docker-compose.yml")["services"]["app"]["environment"]
    grpc = config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    assert app_env["OTEL_EXPORTER_OTLP_ENDPOINT"].endswith(grpc.rsplit(":", 1)[1])


def test_tempo_receives_otlp_and_grafana_knows_every_backend() -> None:
    tempo = load("tempo.yaml")
    grpc = tempo["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]
    assert grpc["endpoint"].endswith(":4317")
    sources = load("grafana/provisioning/datasources/datasources.yaml")["datasources"]
    assert {s["type"] for s in sources} == {"prometheus", "tempo", "jaeger"}
    assert any(
        s["url"].endswith(f":{tempo['server']['http_listen_port']}") for s in sources
    )
    providers = load("grafana/provisioning/dashboards/dashboards.yaml")["providers"]
    assert providers[0]["options"]["path"] == "/var/lib/grafana/dashboards"


@pytest.mark.parametrize("path", ["/", "/work?rounds=10", "/wait?seconds=0"])
def test_the_stack_app_serves_and_is_measured(path: str) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "stack_app", STACK / "app" / "main.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    app = module.app
    CodeCarbonInstrumentor().instrument_app(
        app, power_source=ConstantPowerSource(cpu=1)
    )
    try:
        assert get(app, path).status_code == 200
        inst = instrumentation_of(app)
        assert inst is not None and inst.ledger.in_flight == 0
    finally:
        CodeCarbonInstrumentor.uninstrument_app(app)
