"""Local stand-ins for the HTTP APIs carbonspan can ask, served on 127.0.0.1.

`ElectricityMaps` speaks Electricity Maps' documented v3 endpoint
`GET /v3/carbon-intensity/latest?zone=...` (header `auth-token`), answering
with the next of a list of intensities at each call. `Canned` answers every
GET with one fixed status and JSON body, and records the requests.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.server.owner.seen.append((url.path, query, dict(self.headers)))
        status, body = self.server.owner.answer(url.path, query, dict(self.headers))
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    owner: FakeApi


class FakeApi:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str], dict[str, str]]] = []
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        self.httpd.owner = self
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def answer(
        self, path: str, query: dict[str, str], headers: dict[str, str]
    ) -> tuple[int, Any]:
        raise NotImplementedError

    def __enter__(self) -> FakeApi:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class ElectricityMaps(FakeApi):
    """The carbon-intensity/latest endpoint of Electricity Maps' API v3."""

    def __init__(self, values: list[Any], token: str = "secret-token") -> None:
        super().__init__()
        self.values = values
        self.token = token
        self.calls = 0
        self.base_url = self.url + "/v3"

    def answer(
        self, path: str, query: dict[str, str], headers: dict[str, str]
    ) -> tuple[int, Any]:
        if path != "/v3/carbon-intensity/latest":
            return 404, {"error": "Not found"}
        lowered = {k.lower(): v for k, v in headers.items()}
        if lowered.get("auth-token") != self.token:
            return 401, {"message": "Invalid or missing auth-token"}
        zone = query.get("zone")
        if not zone:
            return 400, {"error": "Missing zone"}
        value = self.values[min(self.calls, len(self.values) - 1)]
        self.calls += 1
        return 200, {
            "zone": zone,
            "carbonIntensity": value,
            "datetime": "2025-05-21T10:00:00.000Z",
            "updatedAt": "2025-05-21T09:48:07.123Z",
            "createdAt": "2025-05-18T10:51:27.713Z",
            "emissionFactorType": "lifecycle",
            "isEstimated": True,
            "estimationMethod": "TIME_SLICER_AVERAGE",
            "temporalGranularity": "hourly",
        }


class Canned(FakeApi):
    """Every GET gets `status` and `body`."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__()
        self.status = status
        self.body = body

    def answer(
        self, path: str, query: dict[str, str], headers: dict[str, str]
    ) -> tuple[int, Any]:
        return self.status, self.body


#: BoaviztAPI 2.5.0's answer to GET /v1/cloud/instance?provider=aws
#: &instance_type=m5.large&criteria=gwp&verbose=true, cut to what is read.
BOAVIZTA_M5_LARGE = {
    "impacts": {
        "gwp": {
            "unit": "kgCO2eq",
            "description": "Total climate change",
            "embedded": {
                "value": 24.0,
                "min": 13.92,
                "max": 40.05,
                "warnings": ["End of life is not included in the calculation"],
            },
        }
    },
    "verbose": {
        "vcpu": {"value": 2.0, "status": "ARCHETYPE"},
        "duration": {"value": 52560.0, "unit": "hours"},
        "hours_life_time": {
            "value": 52560.0,
            "status": "COMPLETED",
            "unit": "hours",
            "source": "from device",
            "min": 52560.0,
            "max": 52560.0,
        },
    },
}
