"""docs/quickstart.md, followed as a newcomer would: every code block, read from
the page itself, is run (or, for installs, checked against this environment).

The only change made to the blocks is the port numbers: 8000 and 9464 become
free ports, so that runs on one machine do not collide. The sample outputs on
the page are checked against what the run prints: the same span attributes,
the same Prometheus series, the same metric.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import pytest
from packaging.requirements import Requirement

from support import ROOT
from support.server import free_port, stop_process

pytestmark = pytest.mark.e2e

QUICKSTART = ROOT / "docs" / "quickstart.md"
BIN = Path(sys.executable).parent
PORTS = {"8000": free_port(), "9464": free_port()}
while PORTS["9464"] == PORTS["8000"]:
    PORTS["9464"] = free_port()


@dataclass(frozen=True)
class Block:
    lang: str
    text: str
    line: int  # where it starts in the page, for messages

    def lines(self) -> list[str]:
        return [line for line in self.text.splitlines() if line.strip()]


def read_blocks() -> list[Block]:
    page = QUICKSTART.read_text()
    out = []
    for match in re.finditer(r"^```(\w*)\n(.*?)^```$", page, re.M | re.S):
        text = match.group(2)
        for default, free in PORTS.items():
            text = text.replace(default, str(free))
        out.append(Block(match.group(1), text, page.count("\n", 0, match.start()) + 1))
    return out


BLOCKS = read_blocks()
# What each block of the page is, in order. A block added to the page fails
# this until the test knows how to run it.
LAYOUT = [
    ("bash", "install from a checkout"),
    ("bash", "install a built wheel"),
    ("python", "main.py"),
    ("bash", "serve main.py"),
    ("text", "start-up log"),
    ("bash", "request"),
    ("text", "span"),
    ("bash", "Prometheus scrape"),
    ("text", "Prometheus series"),
    ("text", "console metric"),
    ("python", "native telemetry"),
    ("python", "instrument()"),
    ("python", "plain.py"),
    ("bash", "opentelemetry-instrument"),
    ("python", "Starlette"),
    ("python", "fake power source"),
]


def block(name: str) -> Block:
    names = [n for _, n in LAYOUT]
    return BLOCKS[names.index(name)]


def test_the_page_has_the_blocks_this_test_runs() -> None:
    assert [(b.lang, b.line) for b in BLOCKS] == [
        (lang, b.line) for (lang, _), b in zip(LAYOUT, BLOCKS, strict=False)
    ] and len(BLOCKS) == len(LAYOUT), [(b.lang, b.line) for b in BLOCKS]


# -- Install ----------------------------------------------------------------


def extra_requirements(extra: str) -> list[Requirement]:
    """What `carbonspan[extra]` requires, from the installed metadata."""
    dist = metadata.distribution("carbonspan")
    assert extra in (dist.metadata.get_all("Provides-Extra") or []), extra
    reqs = [Requirement(r) for r in dist.requires or []]
    return [r for r in reqs if r.marker and r.marker.evaluate({"extra": extra})]


def assert_extra_installed(spec: str) -> None:
    """`spec` (such as `.[quickstart]`) names this project and an extra of it,
    and everything the extra requires is installed here, at a matching version."""
    match = re.fullmatch(r"(\.|carbonspan)\[(\w+)\]", spec)
    assert match, spec
    reqs = extra_requirements(match.group(2))
    assert reqs, spec
    for req in reqs:
        version = metadata.version(req.name)
        assert req.specifier.contains(version, prereleases=True), (req, version)


def test_install_from_a_checkout(tmp_path: Path) -> None:
    lines = block("install from a checkout").lines()
    assert lines == [
        "python3 -m venv .venv",
        ". .venv/bin/activate",
        'pip install ".[quickstart]"',
    ]
    # The venv is made for real (offline); the install is checked against this
    # environment, which was made the same way with more extras.
    made = subprocess.run(
        shlex.split(lines[0]), cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert made.returncode == 0, made.stderr
    assert (tmp_path / ".venv" / "bin" / "activate").is_file()
    assert_extra_installed(shlex.split(lines[2])[-1])
    extra = {r.name for r in extra_requirements("quickstart")}
    # One line brings the SDK, the span creator, a server, the exporter.
    assert {
        "opentelemetry-sdk", "opentelemetry-instrumentation-fastapi", "uvicorn",
        "opentelemetry-exporter-prometheus", "fastapi", "opentelemetry-distro",
    } <= extra  # fmt: skip


def test_install_a_built_wheel() -> None:
    lines = block("install a built wheel").lines()
    assert lines[:2] == ["pip install build", "python -m build"]
    pyproject = (ROOT / "pyproject.toml").read_text()
    # `python -m build` needs only a build backend it can fetch from PyPI.
    assert 'build-backend = "hatchling.build"' in pyproject
    assert re.search(r'^name = "carbonspan"$', pyproject, re.M)
    args = shlex.split(lines[2])
    assert args[:4] == ["pip", "install", "--find-links", "dist"]  # build's output
    assert_extra_installed(args[4])


# -- The first service ------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without settings that would change what the page shows."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CARBONSPAN_", "OTEL_")) and k != "PYTHONPATH"
    }
    return {**env, "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", **extra}


def json_objects(text: str) -> Iterator[dict[str, Any]]:
    """The JSON documents the console exporters printed among the log lines."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"^\{$", text, re.M):
        try:
            obj, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        yield obj


class Served:
    """A command from the page, run in `cwd`, its output kept in a file."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.log = cwd / "console.txt"
        self.out = self.log.open("w")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=self.out, stderr=subprocess.STDOUT
        )

    def output(self) -> str:
        return self.log.read_text()

    def wait_for(self, what: Callable[[str], bool], timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if what(self.output()):
                return time.monotonic() - self.started
            assert self.proc.poll() is None, self.output()[-3000:]
            time.sleep(0.05)
        raise AssertionError(f"timed out; console:\n{self.output()[-3000:]}")

    def stop(self, sig: int = signal.SIGINT) -> int:  # Ctrl+C
        stop_process(self.proc, sig)
        self.out.close()
        return self.proc.returncode


def server_spans(text: str) -> list[dict[str, Any]]:
    return [o for o in json_objects(text) if o.get("kind") == "SpanKind.SERVER"]


def spans_with_energy(text: str) -> list[dict[str, Any]]:
    return [
        s for s in server_spans(text) if "codecarbon.energy.total" in s["attributes"]
    ]


def request_until_measured(
    served: Served, url: str, timeout: float = 20.0
) -> tuple[dict[str, Any], int]:
    """What the page says to do: send the request (again, while the hardware
    is being detected) until its span carries the figures."""
    deadline = time.monotonic() + timeout
    tries = 0
    while time.monotonic() < deadline:
        tries += 1
        printed = len(server_spans(served.output()))
        reply = httpx.get(url, timeout=10)
        assert reply.status_code == 200, reply.text

        def printed_its_span(out: str, before: int = printed) -> bool:
            return len(server_spans(out)) > before  # as the span ends

        served.wait_for(printed_its_span, 10)
        found = spans_with_energy(served.output())
        if found:
            return found[-1], tries
    raise AssertionError(f"no span with energy figures:\n{served.output()[-3000:]}")


def curl_url(line: str) -> str:
    args = shlex.split(line)
    assert args[0] == "curl", line
    urls = [a for a in args if a.startswith("http://127.0.0.1:")]
    assert len(urls) == 1, line
    return urls[0]


SERIES = re.compile(r"^(\w+)\{(.*)\} (\S+)$")


def series(line: str) -> tuple[str, dict[str, str], str]:
    match = SERIES.match(line)
    assert match, line
    labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
    return match.group(1), labels, match.group(3)


def test_first_service_span_and_metrics(tmp_path: Path) -> None:
    timings: dict[str, float] = {}
    (tmp_path / "main.py").write_text(block("main.py").text)
    argv = shlex.split(block("serve main.py").text)
    assert argv[:2] == ["uvicorn", "main:app"], argv
    served = Served([str(BIN / argv[0]), *argv[1:]], tmp_path, clean_env())
    try:
        timings["server up"] = served.wait_for(
            lambda out: "Uvicorn running on" in out, 60
        )
        # The start-up lines, as the page shows them (the process id aside).
        out = served.output()
        for line in block("start-up log").lines():
            expected = re.escape(line).replace(r"\[12750\]", r"\[\d+\]")
            assert re.search(expected, out), (line, out[-2000:])

        (request,) = block("request").lines()
        url = curl_url(request)
        assert httpx.get(url, timeout=10).json() == {"item_id": 42}
        span, tries = request_until_measured(served, url)
        timings["first span with energy"] = time.monotonic() - served.started
        timings["requests sent"] = tries + 1

        got = span["attributes"]
        shown = json.loads(block("span").text)
        assert span["name"] == shown["name"] and span["kind"] == shown["kind"]
        # Every attribute the page shows is there (the CPU model is detected,
        # so it is allowed to be missing on another machine).
        missing = set(shown["attributes"]) - set(got) - {"codecarbon.cpu.model"}
        assert not missing, (missing, got)
        for key in (
            "http.route", "http.status_code", "codecarbon.carbon_intensity",
            "codecarbon.location.source", "codecarbon.scope",
            "codecarbon.attribution", "codecarbon.country.iso_code",
        ):  # fmt: skip
            assert got[key] == shown["attributes"][key], key
        parts = [got.get(f"codecarbon.energy.{c}", 0.0) for c in ("cpu", "gpu", "ram")]
        assert got["codecarbon.energy.total"] == pytest.approx(sum(parts))
        assert all(p >= 0 for p in parts)
        assert got["codecarbon.emissions"] == pytest.approx(
            got["codecarbon.energy.total"] / 3.6e6 * got["codecarbon.carbon_intensity"]
        )

        (scrape,) = block("Prometheus scrape").lines()
        assert scrape.endswith("| grep '^codecarbon_'"), scrape
        text = httpx.get(curl_url(scrape), timeout=10).text
        real = [
            series(line) for line in text.splitlines() if line.startswith("codecarbon_")
        ]
        assert real
        for line in block("Prometheus series").lines():
            name, labels, _ = series(line)
            assert any(
                n == name and labels.items() <= got_labels.items()
                for n, got_labels, _ in real
            ), line
        counts = [
            float(v) for n, labels, v in real
            if n == "codecarbon_request_energy_joules_count"
            and labels.get("http_route") == "/items/{item_id}"
        ]  # fmt: skip
        assert counts and counts[0] >= timings["requests sent"]
        timings["metric series seen"] = time.monotonic() - served.started
    finally:
        code = served.stop(signal.SIGINT)
    # Ctrl+C: the metrics are flushed to the console at shutdown.
    shown_metric = json.loads(block("console metric").text)
    (point,) = shown_metric["data"]["data_points"]
    printed = [
        m
        for o in json_objects(served.output())
        for rm in o.get("resource_metrics", [])
        for sm in rm["scope_metrics"]
        for m in sm["metrics"]
        if m["name"] == shown_metric["name"]
    ]
    assert printed, served.output()[-3000:]
    assert printed[0]["unit"] == shown_metric["unit"]
    assert printed[0]["description"] == shown_metric["description"]
    assert any(
        p["attributes"] == point["attributes"] and p["value"] > 0
        for p in printed[0]["data"]["data_points"]
    )
    assert code in (0, -signal.SIGINT, 128 + signal.SIGINT), code
    print("quickstart timings (s):", {k: round(v, 2) for k, v in timings.items()})


# -- The other blocks, each in a fresh interpreter --------------------------

# Runs after the block (imported as `snippet`): collects the spans of whichever
# tracer provider is global (the block's, or a new one), sends requests until
# one server span has the figures, and prints what the test checks.
DRIVER = """
import asyncio, json, sys, time
import httpx
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import snippet  # the block from the page

memory = InMemorySpanExporter()
provider = trace.get_tracer_provider()
if not isinstance(provider, TracerProvider):
    provider = TracerProvider()
    trace.set_tracer_provider(provider)
provider.add_span_processor(SimpleSpanProcessor(memory))
{setup}

async def main():
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            reply = await c.get(PATH)
            assert reply.status_code == 200, reply.text
            spans = [
                s for s in memory.get_finished_spans()
                if s.kind == trace.SpanKind.SERVER
                and "codecarbon.energy.total" in (s.attributes or {{}})
            ]
            if spans:
                s = spans[-1]
                return {{
                    "scope": s.instrumentation_scope.name,
                    "duration": (s.end_time - s.start_time) / 1e9,
                    "attributes": dict(s.attributes),
                    "stack": [type(m).__name__ for m in stack(app)],
                }}
            await asyncio.sleep(0.1)
    raise SystemExit("no span with energy figures")

def stack(app):
    node = app.middleware_stack
    while node is not None:
        yield node
        node = getattr(node, "app", None)

print("RESULT " + json.dumps(asyncio.run(main())))
"""


def run_block(tmp_path: Path, name: str, setup: str) -> tuple[dict[str, Any], str]:
    (tmp_path / "snippet.py").write_text(block(name).text)
    driver = DRIVER.format(setup=setup)
    done = subprocess.run(
        [sys.executable, "-c", driver], cwd=tmp_path, capture_output=True,
        text=True, timeout=120, env=clean_env(PYTHONPATH=str(tmp_path)),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    (result,) = [
        line for line in done.stdout.splitlines() if line.startswith("RESULT ")
    ]
    return json.loads(result.removeprefix("RESULT ")), done.stdout


def test_native_telemetry_block(tmp_path: Path) -> None:
    result, stdout = run_block(
        tmp_path, "native telemetry", "app = snippet.app\nPATH = '/items/7'"
    )
    assert result["scope"] == "fastapi"  # FastAPI's own span, no contrib
    assert result["attributes"]["codecarbon.country.iso_code"] == "FRA"
    assert "CodeCarbonMiddleware" in result["stack"]
    # The block's own console exporter printed the span with the figures.
    assert spans_with_energy(stdout)


def test_instrument_block_measures_apps_built_afterwards(tmp_path: Path) -> None:
    setup = """
import fastapi
app = fastapi.FastAPI()

@app.get("/later")
async def later():
    return {}

PATH = "/later"
"""
    result, _ = run_block(tmp_path, "instrument()", setup)
    assert result["attributes"]["codecarbon.country.iso_code"] == "FRA"
    assert "CodeCarbonMiddleware" in result["stack"]


def test_starlette_block(tmp_path: Path) -> None:
    result, _ = run_block(tmp_path, "Starlette", "app = snippet.app\nPATH = '/items/7'")
    assert result["scope"] == "starlette"  # Starlette's OpenTelemetryMiddleware
    assert result["attributes"]["codecarbon.country.iso_code"] == "FRA"
    stack = result["stack"]
    assert stack.index("OpenTelemetryMiddleware") < stack.index("CodeCarbonMiddleware")


def test_fake_power_source_block_gives_the_arithmetic_the_page_states(
    tmp_path: Path,
) -> None:
    setup = """
app = snippet.app

@app.get("/sleep")
async def sleep():
    await asyncio.sleep(0.2)
    return {}

PATH = "/sleep"
"""
    result, _ = run_block(tmp_path, "fake power source", setup)
    got = result["attributes"]
    # Alone in flight for 0.2 s or a little more: 10 W CPU, 5 W RAM, 100 g/kWh.
    assert got["codecarbon.power.cpu"] == pytest.approx(10.0, rel=0.02)
    assert got["codecarbon.power.ram"] == pytest.approx(5.0, rel=0.02)
    assert got["codecarbon.energy.cpu"] >= 0.2 * 10.0 * 0.99
    assert got["codecarbon.energy.cpu"] <= result["duration"] * 10.0 * 1.01
    assert got["codecarbon.energy.ram"] == pytest.approx(
        got["codecarbon.energy.cpu"] / 2
    )
    assert got["codecarbon.carbon_intensity"] == 100.0
    assert got["codecarbon.emissions"] == pytest.approx(
        got["codecarbon.energy.total"] / 3.6e6 * 100.0
    )


def test_opentelemetry_instrument_block(tmp_path: Path) -> None:
    (tmp_path / "plain.py").write_text(block("plain.py").text)
    (line,) = block("opentelemetry-instrument").lines()
    words = shlex.split(line)
    env = dict(w.split("=", 1) for w in words if re.match(r"^[A-Z_]+=", w))
    argv = [w for w in words if not re.match(r"^[A-Z_]+=", w)]
    assert argv[0] == "opentelemetry-instrument" and "plain:app" in argv, argv
    port = argv[argv.index("--port") + 1]
    served = Served([str(BIN / argv[0]), *argv[1:]], tmp_path, clean_env(**env))
    try:
        served.wait_for(lambda out: "Uvicorn running on" in out, 60)
        span, _ = request_until_measured(served, f"http://127.0.0.1:{port}/items/7")
    finally:
        served.stop()
    assert span["attributes"]["codecarbon.country.iso_code"] == "FRA"
    assert span["attributes"]["http.route"] == "/items/{item_id}"
