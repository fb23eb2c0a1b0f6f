"""A small shop API. No tracing or carbonspan code: opentelemetry-instrument does it."""

from __future__ import annotations

import asyncio
import hashlib

from fastapi import FastAPI

app = FastAPI(title="shop")


@app.get("/")
async def index() -> dict[str, str]:
    return {"shop": "open"}


@app.get("/work")
def work(rounds: int = 20000) -> dict[str, str]:
    digest = b"carbonspan"
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return {"digest": digest.hex()}


@app.get("/wait")
async def wait(seconds: float = 0.2) -> dict[str, float]:
    await asyncio.sleep(seconds)
    return {"waited": seconds}
