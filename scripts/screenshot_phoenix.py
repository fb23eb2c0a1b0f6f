"""Make docs/img/phoenix-span.png: a request span with its codecarbon attributes.

It runs what the Phoenix end-to-end test runs (tests/support/phoenix_app.py under
uvicorn, exporting spans with the standard OTLP/HTTP exporter to a local
arize-phoenix), sends a CPU-heavy request, and takes a headless-Chromium
screenshot of Phoenix's trace view with that request's server span selected.

Run:  .venv/bin/python scripts/screenshot_phoenix.py   (needs Debian's chromium)
Everything listens on 127.0.0.1 and stops at the end.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.backends import Phoenix  # noqa: E402
from support.server import Server, uvicorn  # noqa: E402

PROJECT = "carbonspan"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs/img/phoenix-span.png")
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        print("chromium is missing: apt-get install chromium", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp, Phoenix(Path(tmp)) as phoenix:
        env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": phoenix.otlp}
        env["PHOENIX_PROJECT"] = PROJECT
        with Server(uvicorn("support.phoenix_app:app"), env) as app:
            time.sleep(1.0)  # the sampler's first readings
            with httpx.Client(base_url=app.url, timeout=30) as c:
                c.get("/cpu?seconds=0.2").raise_for_status()
            app.stop()  # flushes the spans at shutdown
        span = wait_for_span(phoenix)
        projects = httpx.get(f"{phoenix.url}/v1/projects").json()["data"]
        project_id = next(p["id"] for p in projects if p["name"] == PROJECT)
        url = (
            f"{phoenix.url}/projects/{project_id}/traces/"
            f"{span['context']['trace_id']}?selectedSpanNodeId={span['id']}"
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={tmp}/chromium",
                "--window-size=1500,1050",
                "--virtual-time-budget=15000",
                f"--screenshot={args.out}",
                url,
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes) from {url}")
    return 0


def wait_for_span(phoenix: Phoenix) -> dict[str, object]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for span in phoenix.spans(PROJECT):
            attributes = span["attributes"]
            if attributes.get("http.route") == "/cpu" and attributes.get(
                "codecarbon.energy.total"
            ):
                return span
        time.sleep(0.5)
    raise RuntimeError("the /cpu span never reached Phoenix")


if __name__ == "__main__":
    raise SystemExit(main())
