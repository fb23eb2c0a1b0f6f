"""Run a real server in a subprocess for end-to-end tests, and talk to it.

The subprocess runs in tests/ with tests/ first on its PYTHONPATH, so it loads
the apps in this package as `support.<module>`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from support import TESTS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    """`command` (argv, `{port}` filled in) serving on 127.0.0.1 until stopped.

    `{port}` is also filled in the values of `env`. It is ready when
    `ready_path` answers with a status below 500. With `quiet`, its output is
    discarded (for chatty servers), else it is kept in `output` at stop.
    """

    def __init__(
        self,
        command: list[str],
        env: dict[str, str],
        ready_path: str = "/fast",
        *,
        quiet: bool = False,
        timeout: float = 60.0,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [c.format(port=self.port) for c in command]
        env = {k: v.replace("{port}", str(self.port)) for k, v in env.items()}
        path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
        self.env = {**os.environ, "PYTHONPATH": path, **env}
        self.ready_path = ready_path
        self.quiet = quiet
        self.timeout = timeout
        self.proc: subprocess.Popen[str] | None = None
        self.output = ""

    def __enter__(self) -> Server:
        out = subprocess.DEVNULL if self.quiet else subprocess.PIPE
        self.proc = subprocess.Popen(
            self.command, env=self.env, cwd=TESTS, stdout=out,
            stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"{self.command[0]} exited early:\n{self.output}")
            try:
                if httpx.get(self.url + self.ready_path, timeout=1).status_code < 500:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.command[0]} did not start:\n{self.output}")

    def stop(self, sig: int = signal.SIGTERM) -> str:
        if self.proc is not None:
            stop_process(self.proc, sig)
        if self.proc is not None and self.proc.stdout and not self.proc.stdout.closed:
            self.output += self.proc.stdout.read()
            self.proc.stdout.close()
        return self.output

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def stop_process(proc: subprocess.Popen[Any], sig: int) -> None:
    """Send `sig` to a process still running; kill it if 30 s later it runs on."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def uvicorn(module: str = "support.e2e_server:app") -> list[str]:
    return [sys.executable, "-m", "uvicorn", module, "--host", "127.0.0.1",
            "--port", "{port}", "--log-level", "warning"]  # fmt: skip


async def send_all(url: str, paths: list[str]) -> list[int]:
    """A GET to each path of the server at `url`, all at once: the statuses."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        responses = await asyncio.gather(*(c.get(p) for p in paths))
    return [r.status_code for r in responses]


def spans_in(path: Path) -> list[dict[str, Any]]:
    """The spans a ConsoleSpanExporter wrote to `path`, a JSON line each (a
    line still being written, after the last newline, is left out)."""
    lines = path.read_text().split("\n")[:-1] if path.exists() else []
    return [json.loads(line) for line in lines if line]


def server_spans_in(path: Path) -> list[dict[str, Any]]:
    """The server spans of `spans_in(path)`."""
    return [s for s in spans_in(path) if s["kind"] == "SpanKind.SERVER"]
