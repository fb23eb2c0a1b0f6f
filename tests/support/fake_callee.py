"""A callee without carbonspan, served by a real uvicorn: each path answers
with the `x-codecarbon-energy` header a test needs (or none)."""

from __future__ import annotations

from typing import Any

HEADERS = {
    "/plain": [],  # a service without carbonspan
    "/malformed": [(b"x-codecarbon-energy", b"12 joules")],
    "/absurd": [(b"x-codecarbon-energy", b"1e300")],
    "/negative": [(b"x-codecarbon-energy", b"-4")],
    "/forged": [(b"x-codecarbon-energy", b"7.5")],  # for a call nobody asked for
    "/failing": [(b"x-codecarbon-energy", b"2.5")],  # with a 503
    "/health": [],
}


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    status = 503 if path == "/failing" else 200 if path in HEADERS else 404
    headers = [(b"content-type", b"text/plain"), *HEADERS.get(path, [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})
