"""Test applications: one route per case the span contract covers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import fastapi
from fastapi import FastAPI, HTTPException
from fastapi.responses import StreamingResponse

from carbonspan import set_tenant


def burn(seconds: float) -> int:
    """Busy-loop on the CPU for about `seconds`."""
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n


def build_app(**fastapi_kwargs: object) -> FastAPI:
    # Looked up at call time: the contrib instrumentor's instrument() swaps it.
    app = fastapi.FastAPI(**fastapi_kwargs)  # type: ignore[arg-type]

    @app.get("/fast")
    async def fast() -> dict[str, str]:
        return {"ok": "yes"}

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item": item_id}

    @app.get("/sleep")
    async def sleep(seconds: float = 0.1) -> dict[str, float]:
        await asyncio.sleep(seconds)
        return {"slept": seconds}

    @app.get("/sync-sleep")
    def sync_sleep(seconds: float = 0.1) -> dict[str, float]:
        time.sleep(seconds)
        return {"slept": seconds}

    @app.get("/cpu")
    def cpu(seconds: float = 0.05) -> dict[str, int]:
        return {"loops": burn(seconds)}

    @app.get("/stream")
    async def stream(chunks: int = 5, pause: float = 0.02) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            for i in range(chunks):
                await asyncio.sleep(pause)
                yield f"chunk {i}\n".encode()

        return StreamingResponse(body(), media_type="text/plain")

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("handler failed")

    @app.get("/teapot")
    async def teapot() -> None:
        raise HTTPException(status_code=418, detail="short and stout")

    @app.get("/tenant")
    async def tenant(name: str = "") -> dict[str, str]:
        if name:
            set_tenant(name)  # as an authenticating dependency would
        return {"tenant": name}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app
