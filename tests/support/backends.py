"""Real backends the end-to-end tests start: Prometheus, Phoenix, BoaviztAPI."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from support import ROOT
from support.server import Server


class Prometheus(Server):
    """The Debian `prometheus` binary, scraping `targets` every second."""

    def __init__(self, tmp: Path, targets: list[str]) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError(
                "the prometheus binary is missing: apt-get install prometheus "
                "(scripts/test installs it when run as root)"
            )
        config = tmp / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: app\n    static_configs:\n"
            f"      - targets: [{', '.join(repr(t) for t in targets)}]\n"
        )
        command = [
            binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
            "--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
        ]  # fmt: skip
        super().__init__(command, {}, "/-/ready", quiet=True)

    def query(self, promql: str) -> list[dict[str, Any]]:
        reply = httpx.get(self.url + "/api/v1/query", params={"query": promql}).json()
        assert reply["status"] == "success", reply
        result: list[dict[str, Any]] = reply["data"]["result"]
        return result

    def wait_for(self, promql: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(promql)
            if result or time.monotonic() > deadline:
                return result
            time.sleep(0.5)


class Phoenix(Server):
    """arize-phoenix serving OTLP/HTTP traces and its REST API on 127.0.0.1."""

    def __init__(self, tmp: Path) -> None:
        env = {
            "PHOENIX_HOST": "127.0.0.1",
            "PHOENIX_PORT": "{port}",
            "PHOENIX_GRPC_PORT": "0",
            "PHOENIX_WORKING_DIR": str(tmp / "phoenix"),
            "PHOENIX_TELEMETRY_ENABLED": "false",
        }
        binary = Path(sys.executable).parent / "phoenix"
        super().__init__(
            [str(binary), "serve"], env, "/healthz", quiet=True, timeout=120
        )
        self.otlp = f"{self.url}/v1/traces"

    def spans(self, project: str) -> list[dict[str, Any]]:
        reply = httpx.get(
            f"{self.url}/v1/projects/{project}/spans",
            params={"limit": 1000},
            timeout=10,
        )
        if reply.status_code == 404:
            return []
        reply.raise_for_status()
        data: list[dict[str, Any]] = reply.json()["data"]
        return data


#: BoaviztAPI pins an older FastAPI than ours: it gets its own virtualenv.
BOAVIZTA_VERSION = "2.5.0"
BOAVIZTA_VENV = ROOT / ".venv-boavizta"


def boavizta_venv() -> Path:
    """`.venv-boavizta` with boaviztapi installed (once; pip's cache after)."""
    python = BOAVIZTA_VENV / "bin" / "python"
    stamp = BOAVIZTA_VENV / f".installed-{BOAVIZTA_VERSION}"
    if not stamp.exists():
        if not python.exists():
            venv = [sys.executable, "-m", "venv", str(BOAVIZTA_VENV)]
            subprocess.run(venv, check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet",
             f"boaviztapi=={BOAVIZTA_VERSION}"],
            check=True, timeout=900,
        )  # fmt: skip
        stamp.touch()
    return python


class BoaviztAPI(Server):
    """A BoaviztAPI server (`uvicorn boaviztapi.main:app`) from its own venv."""

    def __init__(self) -> None:
        python = boavizta_venv()
        command = [
            str(python), "-m", "uvicorn", "boaviztapi.main:app",
            "--host", "127.0.0.1", "--port", "{port}", "--log-level", "warning",
        ]  # fmt: skip
        # Its own venv only: not the tests' PYTHONPATH.
        super().__init__(
            command, {"PYTHONPATH": ""}, "/v1/utils/version", quiet=True, timeout=120
        )

    def get_json(self, path: str, **params: Any) -> Any:
        reply = httpx.get(self.url + path, params=params, timeout=30)
        reply.raise_for_status()
        return reply.json()
