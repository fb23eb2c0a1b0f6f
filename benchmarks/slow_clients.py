"""The slow-client attack: clients that trickle their bodies, beside an honest request.

Serves a FastAPI app with a real uvicorn on 127.0.0.1, measured with a constant
10 W CPU source, and times one honest 0.3 s request alone, then beside N
clients that send a POST body one byte every 2 s. A fair measure charges the
honest request 10 W x 0.3 s = 3 J both times. Everything stops by itself.

    python benchmarks/slow_clients.py [--clients 50] [--seconds 12]

Run it against another checkout with PYTHONPATH=<checkout>/src.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

import harness
import netguard  # noqa: F401  (installs the loopback-only guard on import)

APP = """
import asyncio
from fastapi import FastAPI, Request
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from carbonspan import CodeCarbonInstrumentor
from carbonspan.testing import ConstantPowerSource

app = FastAPI()
spans = InMemorySpanExporter()

@app.get("/work")
async def work(seconds: float = 0.3):
    await asyncio.sleep(seconds)
    return {"ok": 1}

@app.post("/echo")
async def echo(request: Request):
    return {"length": len(await request.body())}

@app.get("/energy")
async def energy():
    work = [s for s in spans.get_finished_spans()
            if (s.attributes or {}).get("http.route") == "/work"]
    return {"cpu": work[-1].attributes["codecarbon.energy.cpu"]}

provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(spans))
FastAPIInstrumentor.instrument_app(app, tracer_provider=provider)
CodeCarbonInstrumentor().instrument_app(
    app, power_source=ConstantPowerSource(cpu=10.0), sample_interval=0.05
)
"""


async def trickle(port: int, seconds: float) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    length = int(seconds / 2) + 1
    writer.write(
        f"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode()
    )
    for _ in range(length):
        await writer.drain()
        await asyncio.sleep(2.0)
        writer.write(b"x")
    await writer.drain()
    await reader.read(200)
    writer.close()


async def honest(url: str) -> float:
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        assert (await c.get("/work?seconds=0.3")).status_code == 200
        return float((await c.get("/energy")).json()["cpu"])


async def attack(url: str, port: int, clients: int, seconds: float) -> float:
    slow = [asyncio.create_task(trickle(port, seconds)) for _ in range(clients)]
    await asyncio.sleep(1.0)  # every slow request is open
    beside = await honest(url)
    await asyncio.gather(*slow)
    return beside


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=12.0)
    args = parser.parse_args()
    app_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"slow-clients-{os.getpid()}"
    app_dir.mkdir(exist_ok=True)
    (app_dir / "slow_app.py").write_text(APP)
    port = harness.free_port()
    server = subprocess.Popen(
        harness.uvicorn_command("slow_app:app", port),
        env=harness.env_with_path(str(app_dir)),
        cwd=app_dir,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        harness.wait_accepting(server, port, 30)
        time.sleep(0.5)  # the sampler's first readings
        alone = asyncio.run(honest(url))
        beside = asyncio.run(attack(url, port, args.clients, args.seconds))
    finally:
        harness.terminate(server)
        harness.wait_or_kill(server, 10)
    ratio = alone / beside
    print(
        f"honest 0.3 s request, 10 W source: alone {alone:.3f} J; beside "
        f"{args.clients} slow clients {beside:.3f} J (ratio {ratio:.2f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
